"""The whole life of a machine through the real ``labkit`` command: real UML, real slirp, real SSH, real console.

This module is also run as an ordinary (non-root) user by test_unprivileged.py, so it must not rely on root.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from .backend_helpers import HostWebService
from .labkit_cli import Labkit, fetch, host_port, labkit_home, wait_state

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def lk() -> Iterator[Labkit]:
    with labkit_home("lkl", private_cache=True) as labkit:
        yield labkit


@pytest.fixture()
def machine(lk: Labkit) -> Iterator[str]:
    name = f"m{os.getpid() % 1000}-{int(time.time() * 1000) % 100000}"
    lk("vm", "create", name, "--image", "tiny", "--memory", "64", "--forward", "0:8080")
    yield name
    if lk.status(name)["state"] != "stopped":
        lk("vm", "kill", name, check=False)
    lk("vm", "rm", name, "--yes")


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
    assert fetch(f"http://127.0.0.1:{port}/", seconds=15) == token


def test_guest_reaches_an_allowed_host_service_at_10_0_2_2_and_no_other(lk: Labkit) -> None:
    token = f"host-{os.getpid()}"
    allowed, other = HostWebService(token), HostWebService(token)
    name = f"r{os.getpid() % 1000}-{int(time.time() * 1000) % 100000}"
    lk("vm", "create", name, "--image", "tiny", "--memory", "64", "--host-port", str(allowed.port))
    try:
        lk("vm", "start", name)
        result = lk.sh(name, f"wget -q -O - http://10.0.2.2:{allowed.port}/")
        assert result["exit_code"] == 0, result
        assert result["stdout"] == token
        # a host service the machine was not given is refused, though it answers the same request on the host
        refused = lk.sh(name, f"wget -q -O - http://10.0.2.2:{other.port}/ 2>&1")
        assert refused["exit_code"] != 0 and token not in refused["stdout"], refused
    finally:
        allowed.close()
        other.close()
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
    wait_state(lk, machine, "stopped", seconds=10)  # a machine whose UML died must show as stopped
    lk("vm", "start", machine)
    assert lk.sh(machine, "echo back")["stdout"] == "back\n"


def test_kill_minus_9_of_supervisor_is_noticed_and_recovered(lk: Labkit, machine: str) -> None:
    lk("vm", "start", machine)
    supervisor = int(lk.status(machine)["supervisor_pid"])  # type: ignore[arg-type]
    os.kill(supervisor, signal.SIGKILL)
    wait_state(lk, machine, "stopped", seconds=15)  # a machine whose supervisor died must show as stopped
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
