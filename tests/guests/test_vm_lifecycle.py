"""The whole life of a machine through the real ``labkit`` command: real UML, real slirp, real SSH, real console.

This module is also run as an ordinary (non-root) user by test_unprivileged.py, so it must not rely on root.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.guest

LABKIT = str(Path(sys.executable).with_name("labkit"))


class Labkit:
    """Runs the real CLI against one private LABKIT_HOME."""

    def __init__(self, home: Path, run: Path) -> None:
        self.env = {**os.environ, "LABKIT_HOME": str(home), "LABKIT_RUN": str(run)}
        self.env.pop("LABKIT_DEBUG", None)

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([LABKIT, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"labkit {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)

    def status(self, name: str) -> dict[str, object]:
        return self.json("vm", "status", name)[0]  # type: ignore[index]

    def sh(self, name: str, command: str, *extra: str) -> dict[str, object]:
        done = self("vm", "exec", name, *extra, "--json", "--", command, check=False)
        assert done.stdout, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def lk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Labkit]:
    home = tmp_path_factory.mktemp("home")
    run = Path(tempfile.mkdtemp(prefix="lk", dir="/tmp"))
    labkit = Labkit(home, run)
    labkit.env.setdefault("LABKIT_CACHE", str(home / "cache"))
    labkit("image", "build", "tiny")
    yield labkit
    # Stop by PID whatever a failed test left running, then remove the machine.
    for view in labkit.json("vm", "status"):  # type: ignore[union-attr]
        if view["state"] != "stopped":
            labkit("vm", "kill", view["name"], check=False)
    subprocess.run(["rm", "-rf", str(run)], check=False)


@pytest.fixture()
def machine(lk: Labkit) -> Iterator[str]:
    name = f"m{os.getpid() % 1000}-{int(time.time() * 1000) % 100000}"
    lk("vm", "create", name, "--image", "tiny", "--memory", "64", "--forward", "0:8080")
    yield name
    if lk.status(name)["state"] != "stopped":
        lk("vm", "kill", name, check=False)
    lk("vm", "rm", name, "--yes")


def host_port(view: dict[str, object], guest: int) -> int:
    for forward in view["forwards"]:  # type: ignore[union-attr]
        host, to = str(forward).split(":")
        if int(to) == guest:
            return int(host)
    raise AssertionError(f"no forward to guest port {guest} in {view}")


def test_start_exec_over_ssh_and_console(lk: Labkit, machine: str) -> None:
    lk("vm", "start", machine)
    view = lk.status(machine)
    assert view["state"] == "running"
    assert view["pid"]
    # the machine really runs as the invoking user, root or not
    assert os.stat(f"/proc/{view['pid']}").st_uid == os.getuid()

    result = lk.sh(machine, "echo out; echo err >&2; hostname; exit 3")
    assert result["transport"] == "ssh"
    assert result["exit_code"] == 3
    assert result["stdout"] == f"out\n{machine}\n"
    assert result["stderr"] == "err\n"

    result = lk.sh(machine, "echo via-console; hostname; exit 4", "--transport", "console")
    assert result["transport"] == "console"
    assert result["exit_code"] == 4
    assert result["stdout"] == f"via-console\n{machine}\n"

    # A command's exit code becomes the CLI's exit code.
    assert lk("vm", "exec", machine, "--", "false", check=False).returncode == 1


def test_exec_falls_back_to_console_when_ssh_is_gone(lk: Labkit, machine: str) -> None:
    lk("vm", "start", machine)
    # The student breaks SSH: kill the server. Commands still run, over the console.
    lk.sh(machine, "kill $(pidof dropbear); true")
    result = lk.sh(machine, "echo still-here")
    assert result["transport"] == "console"
    assert result["stdout"] == "still-here\n"


def test_forward_from_host_to_guest_service(lk: Labkit, machine: str) -> None:
    lk("vm", "start", machine)
    token = f"page-{machine}"
    lk.sh(machine, f"mkdir -p /tmp/www && echo {token} > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")
    port = host_port(lk.status(machine), 8080)
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                assert response.read().decode().strip() == token
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_guest_reaches_an_allowed_host_service_at_10_0_2_2_and_no_other(lk: Labkit) -> None:
    token = f"host-{os.getpid()}"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(token.encode())

        def log_message(self, *_args: object) -> None:
            pass

    with socketserver.TCPServer(("127.0.0.1", 0), Handler) as allowed, \
            socketserver.TCPServer(("127.0.0.1", 0), Handler) as other:
        for server in (allowed, other):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        name = f"r{os.getpid() % 1000}-{int(time.time() * 1000) % 100000}"
        port, other_port = allowed.server_address[1], other.server_address[1]
        lk("vm", "create", name, "--image", "tiny", "--memory", "64", "--host-port", str(port))
        try:
            lk("vm", "start", name)
            result = lk.sh(name, f"wget -q -O - http://10.0.2.2:{port}/")
            assert result["exit_code"] == 0, result
            assert result["stdout"] == token
            # a host service the machine was not given is refused, though it answers the same request on the host
            refused = lk.sh(name, f"wget -q -O - http://10.0.2.2:{other_port}/ 2>&1")
            assert refused["exit_code"] != 0 and token not in refused["stdout"], refused
        finally:
            allowed.shutdown()
            other.shutdown()
            lk("vm", "kill", name, check=False)
            lk("vm", "rm", name, "--yes")


def test_stop_reset_snapshot_restore(lk: Labkit, machine: str) -> None:
    lk("vm", "start", machine)
    lk.sh(machine, "echo kept > /root/work.txt && sync")
    lk("vm", "stop", machine)
    assert lk.status(machine)["state"] == "stopped"

    # The work survives a clean stop and a new boot.
    lk("vm", "start", machine)
    assert lk.sh(machine, "cat /root/work.txt")["stdout"] == "kept\n"
    # A snapshot of a running machine (synced and paused for the copy).
    lk("vm", "snapshot", machine, "live")
    assert lk.status(machine)["state"] == "running"
    lk("vm", "stop", machine)
    lk("vm", "snapshot", machine, "before")
    assert lk.json("vm", "snapshots", machine)[-1]["name"] == "before"  # type: ignore[index]

    lk("vm", "start", machine)
    lk.sh(machine, "rm /root/work.txt && echo extra > /root/extra.txt && sync")
    lk("vm", "stop", machine)

    lk("vm", "restore", machine, "before", "--yes")
    lk("vm", "start", machine)
    assert lk.sh(machine, "cat /root/work.txt")["stdout"] == "kept\n"
    assert lk.sh(machine, "test -e /root/extra.txt")["exit_code"] == 1
    lk("vm", "stop", machine)

    lk("vm", "restore", machine, "live", "--yes")
    lk("vm", "start", machine)
    assert lk.sh(machine, "cat /root/work.txt")["stdout"] == "kept\n"
    lk("vm", "stop", machine)

    lk("vm", "reset", machine, "--yes")
    lk("vm", "start", machine)
    assert lk.sh(machine, "test -e /root/work.txt")["exit_code"] == 1
    # the seed is applied again to the fresh overlay: the grader key still works
    assert lk.sh(machine, "true")["transport"] == "ssh"


def test_wrong_transitions_give_one_clear_line(lk: Labkit, machine: str) -> None:
    stopped = lk("vm", "stop", machine, check=False)
    assert stopped.returncode == 1
    assert stopped.stderr.strip() == f"labkit: error: cannot stop machine {machine}: it is stopped"
    lk("vm", "start", machine)
    again = lk("vm", "start", machine, check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == f"labkit: error: machine {machine} is already running"
    for verb in ("reset", "restore"):
        refused = lk("vm", verb, machine, *(["x"] if verb == "restore" else []), "--yes", check=False)
        assert refused.returncode == 1
        assert "stop it first" in refused.stderr
    lk("vm", "pause", machine)
    assert lk.status(machine)["state"] == "paused"
    lk("vm", "resume", machine)
    assert lk.sh(machine, "echo awake")["stdout"] == "awake\n"


def test_kill_minus_9_of_uml_is_noticed_and_recovered(lk: Labkit, machine: str) -> None:
    lk("vm", "start", machine)
    pid = int(lk.status(machine)["pid"])  # type: ignore[arg-type]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while lk.status(machine)["state"] != "stopped":
        assert time.monotonic() < deadline, "a machine whose UML died must show as stopped"
        time.sleep(0.2)
    lk("vm", "start", machine)
    assert lk.sh(machine, "echo back")["stdout"] == "back\n"


def test_kill_minus_9_of_supervisor_is_noticed_and_recovered(lk: Labkit, machine: str) -> None:
    lk("vm", "start", machine)
    supervisor = int(lk.status(machine)["supervisor_pid"])  # type: ignore[arg-type]
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while lk.status(machine)["state"] != "stopped":
        assert time.monotonic() < deadline, "a machine whose supervisor died must end and show as stopped"
        time.sleep(0.2)
    lk("vm", "start", machine)
    assert lk.sh(machine, "echo back")["stdout"] == "back\n"


def test_forward_port_in_use_is_refused_and_nothing_is_left(lk: Labkit) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        name = f"busy{os.getpid() % 10000}"
        lk("vm", "create", name, "--image", "tiny", "--memory", "64", "--forward", f"{port}:80")
        try:
            refused = lk("vm", "start", name, check=False)
            assert refused.returncode == 1
            assert str(port) in refused.stderr and "in use" in refused.stderr
            assert lk.status(name)["state"] == "stopped"
        finally:
            lk("vm", "rm", name, "--yes")
