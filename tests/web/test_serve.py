"""``labkit serve`` really serving: a gunicorn server started as a subprocess on a free loopback port."""

from __future__ import annotations

import http.client
import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from labkit.config import Settings

LABKIT = [str(Path(sys.executable).parent / "labkit")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stopped(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int | None:
    """SIGTERM to the server's pid; its exit code, or None when it had to be killed after ``timeout`` seconds."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


@pytest.fixture
def env(web_settings: Settings) -> dict[str, str]:
    from conftest import settings_env

    return {**os.environ, **settings_env(web_settings)}


@pytest.fixture
def server(env: dict[str, str], web_settings: Settings) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    process = subprocess.Popen([*LABKIT, "serve", "--port", str(port), "--threads", "4"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    yield process, port
    if process.poll() is None:
        stop(process, 15)


def test_serve_answers_and_stops_by_pid(server: tuple[subprocess.Popen[bytes], int], web_settings: Settings) -> None:
    process, port = server
    assert wait_for(f"http://127.0.0.1:{port}/login") == 200
    pid_file = web_settings.run_dir / "web.pid"
    pid = int(pid_file.read_text())
    assert pid == process.pid  # the arbiter runs in the labkit process itself
    os.kill(pid, signal.SIGTERM)
    assert process.wait(15) == 0
    assert stopped(pid) and not pid_file.exists()
    output = process.stdout.read().decode() if process.stdout else ""
    assert f"serving http://127.0.0.1:{port}/" in output and "GET /login" in output


def test_a_port_in_use_is_one_clear_line(env: dict[str, str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([*LABKIT, "serve", "--port", str(port)], env=env, capture_output=True, text=True,
                                timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"labkit: error: cannot serve on 127.0.0.1:{port}: the port is in use or not allowed (Address already in "
        "use); choose another with --port"]


def test_a_second_server_of_the_same_home_is_refused(server: tuple[subprocess.Popen[bytes], int],
                                                    env: dict[str, str]) -> None:
    process, port = server
    wait_for(f"http://127.0.0.1:{port}/login")
    result = subprocess.run([*LABKIT, "serve", "--port", str(free_port())], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert f"labkit serve already runs as pid {process.pid}" in result.stderr


def worker_pids(arbiter: int) -> set[int]:
    """The live child processes of the gunicorn arbiter."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split() if stat else []
        if fields and int(fields[1]) == arbiter and fields[0] not in ("Z", "X"):
            found.add(int(entry.name))
    return found


def test_serve_with_two_workers_shares_sessions_and_login_limits(env: dict[str, str], web_settings: Settings) -> None:
    password = "correct horse battery"
    subprocess.run([*LABKIT, "user", "create", "teacher", "--role", "instructor", "--password-stdin"], env=env,
                   input=password + "\n", text=True, capture_output=True, check=True, timeout=60)
    with two_workers(env) as served:
        base = f"http://127.0.0.1:{served.port}"
        # a session made by one worker is good on every worker (one key, made before they forked); each request
        # is a new connection, so the two workers share them
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

        def post_login(password: str) -> int:
            page = browser.open(f"{base}/login", timeout=10).read().decode()
            token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]
            form = urllib.parse.urlencode({"username": "teacher", "password": password, "csrf_token": token})
            try:
                with browser.open(f"{base}/login", data=form.encode(), timeout=10) as answer:
                    return answer.status
            except urllib.error.HTTPError as err:
                return err.code

        assert post_login(password) == 200
        for _ in range(20):
            with browser.open(f"{base}/teach/", timeout=10) as answer:
                assert answer.status == 200 and answer.url == f"{base}/teach/"
        # failed logins through whichever worker answers count against one limit (5 per username)
        assert [post_login("wrong password") for _ in range(5)] == [401] * 5
        assert post_login(password) == 429
    assert served.code == 0 and all(stopped(pid) for pid in served.workers)
    assert f"serving http://127.0.0.1:{served.port}/ with 2 workers" in served.output
    served_by = {int(pid) for pid in re.findall(r'"GET /teach/ HTTP/1.1" 200 .* pid=<(\d+)>', served.output)}
    assert served_by and served_by <= served.workers


@dataclass
class TwoWorkers:
    """A ``labkit serve --workers 2`` running (both workers up), and its output once it has stopped."""

    port: int
    workers: set[int]
    output: str = ""
    #: the exit code after SIGTERM; None when it had to be killed
    code: int | None = None


@contextmanager
def two_workers(env: dict[str, str]) -> Iterator[TwoWorkers]:
    """The server, once both workers have answered a page: both main loops run and stamp the shared table."""
    port = free_port()
    process = subprocess.Popen([*LABKIT, "serve", "--port", str(port), "--workers", "2", "--threads", "8"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []

    def read() -> None:  # line by line, so the warm-up below sees the access log as it grows
        for line in process.stdout or ():
            lines.append(line.decode())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    served = TwoWorkers(port, set())
    try:
        assert wait_for(f"http://127.0.0.1:{port}/login") == 200
        deadline = time.monotonic() + 60
        while len(served.workers) < 2 and time.monotonic() < deadline:
            # four kept-alive connections at once: a worker holding two more than the other stops accepting, so
            # the other one answers as soon as its main loop runs (a sleep would only guess when that is)
            connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(4)]
            try:
                get_on_each(connections, "/login?warm=")
            finally:
                for connection in connections:
                    connection.close()
            answered = {int(pid) for pid in re.findall(r'"GET /login\?warm=\d+ HTTP/1.1" 200 .* pid=<(\d+)>',
                                                        "".join(lines))}
            served.workers = answered & worker_pids(process.pid)
        assert len(served.workers) == 2
        yield served
    finally:
        served.code = stop(process)
        reader.join(10)
        served.output = "".join(lines)


def get_on_each(connections: list[http.client.HTTPConnection], path: str) -> None:
    """One request on each connection (``path`` plus its number), each answered 200 and the connection kept open."""
    for number, connection in enumerate(connections):
        connection.request("GET", f"{path}{number}")
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200 and answer.getheader("Connection", "").lower() != "close"


def test_two_workers_take_equal_shares_of_a_burst_of_kept_alive_connections(env: dict[str, str]) -> None:
    """40 browsers connect at once and keep their connections: each worker holds about half (web/sharing_worker.py),
    so neither answers twice the pages of the other under load."""
    with two_workers(env) as served:
        connections = [http.client.HTTPConnection("127.0.0.1", served.port, timeout=10) for _ in range(40)]
        try:
            for connection in connections:  # at once
                connection.connect()
            get_on_each(connections, "/login?burst=")  # all 40 stay open (keep-alive) until the end
        finally:
            for connection in connections:
                connection.close()
    per_worker = Counter(re.findall(r'"GET /login\?burst=\d+ HTTP/1.1" 200 .* pid=<(\d+)>', served.output))
    assert sum(per_worker.values()) == 40
    assert len(per_worker) == 2 and abs(min(per_worker.values()) - max(per_worker.values())) <= 4, per_worker


def test_a_hung_worker_does_not_hold_connections_back(env: dict[str, str]) -> None:
    """A worker that stops (here: SIGSTOP) no longer stamps the shared table; after 2.5 s the other worker takes
    every new connection instead of waiting for its share to be taken."""
    connections: list[http.client.HTTPConnection] = []
    with two_workers(env) as served:
        hung = min(served.workers)
        os.kill(hung, signal.SIGSTOP)
        try:
            time.sleep(3.5)  # past the 2.5 s after which a silent worker is left out
            connections = [http.client.HTTPConnection("127.0.0.1", served.port, timeout=10) for _ in range(12)]
            get_on_each(connections, "/login?hung=")  # all kept open: far more than one above the hung worker
        finally:
            os.kill(hung, signal.SIGCONT)
            for connection in connections:
                connection.close()
    served_by = set(re.findall(r'"GET /login\?hung=\d+ HTTP/1.1" 200 .* pid=<(\d+)>', served.output))
    assert served_by == {str(max(served.workers))}
