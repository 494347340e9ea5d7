"""``labkit serve`` really serving: a gunicorn server started as a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
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
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
