"""Lab networks with real guests: two students, each with machines ``a`` and ``b`` on their own ``vde_switch``, with
the same addresses and the same MACs. Each pair talks; the pairs never meet; a stopped or dead switch is told truly.

Five boots of the tiny BusyBox image: the four machines are shared by the module's tests, which run in file order
(the second one starts where the first left off). Every ``b`` serves its hostname over HTTP on its lab address (a
startup script from the seed), so an answer says which machine gave it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from guest_console import console_run as run_on_console

from labkit.errors import StateError
from labkit.images.seed import SeedSpec, build_seed
from labkit.images.store import ImageRecord
from labkit.runtime.base import MachineSpec, NetworkAttachment, NetworkSpec, State
from labkit.runtime.console import connect
from labkit.runtime.network import network_mac
from labkit.runtime.process import ProcessRecord, end_processes, processes_running
from labkit.runtime.rundir import RunDir
from labkit.runtime.uml.backend import UmlBackend
from labkit.runtime.uml.vde import NetworkDir

pytestmark = [pytest.mark.guest, pytest.mark.timeout(240)]

ADDRESSES = {"a": "192.168.50.1/24", "b": "192.168.50.2/24"}
SERVE_HOSTNAME = "mkdir -p /srv/www && hostname > /srv/www/index.html && httpd -p 8080 -h /srv/www\n"


@dataclass
class Student:
    """One student's run root, lab network and two machines."""

    root: Path
    lan: NetworkSpec
    machines: dict[str, MachineSpec]


def console_run(backend: UmlBackend, spec: MachineSpec, command: str, timeout: float = 20.0) -> str:
    """Run a shell command on the machine's console; return its output, then ``rc=N`` (marks computed by the shell,
    so the echo of the typed line never matches them)."""
    with connect(backend.console_socket(spec)) as sock:
        return run_on_console(sock, f"{command}; echo rc=$?", timeout)


def fetch(backend: UmlBackend, spec: MachineSpec, address: str) -> str:
    """The page at ``address``:8080 (busybox's ``wget -T`` segfaults in the tiny image, so ``timeout`` bounds it)."""
    return console_run(backend, spec, f"timeout 5 wget -q -O - http://{address}:8080/")


def end_by_pid(backend: UmlBackend, root: Path) -> None:
    """Teardown: every machine's processes by recorded PID, group and command line; every switch by its recorded PID
    (through stop_network, which also collects its exit status), then SIGKILL by PID if that failed."""
    for run_dir in (p for p in root.iterdir() if p.is_dir() and (p / "supervisor.json").exists()):
        run = RunDir(run_dir)
        linux = ProcessRecord.read(run.machine_pid)
        sup = ProcessRecord.read(run.supervisor_pid)
        end_processes(linux.pid if linux else None, run.machine_argv())
        if sup is not None:
            sup.send(signal.SIGKILL)
    for pid_file in root.rglob("switch.pid"):
        with contextlib.suppress(Exception):
            backend.stop_network(NetworkSpec("lan", pid_file.parent))
        record = ProcessRecord.read(pid_file)
        if record is not None:
            record.send(signal.SIGKILL)


@pytest.fixture(scope="module")
def backend() -> UmlBackend:
    backend = UmlBackend()
    if backend.check():
        pytest.skip("; ".join(backend.check()))
    return backend


@pytest.fixture(scope="module")
def students(backend: UmlBackend, tiny_image: ImageRecord) -> Iterator[list[Student]]:
    """Two students, each with a running network ``lan`` and machines ``a`` and ``b`` on it: same names, same
    addresses, same MACs, different switches."""
    roots = [Path(tempfile.mkdtemp(prefix="lk", dir="/tmp")) for _ in range(2)]
    made = []
    try:
        for number, root in enumerate(roots, start=1):
            lan = NetworkSpec("lan", root / ".net" / "lan")
            assert backend.start_network(lan).state == State.RUNNING
            machines = {}
            for name, address in ADDRESSES.items():
                seed = build_seed(SeedSpec(hostname=f"s{number}-{name}",
                                           interfaces={"eth0": "10.0.2.15/24", "eth1": address},
                                           startup_scripts=[("serve", SERVE_HOSTNAME)] if name == "b" else []),
                                  root / f"{name}.seed")
                machines[name] = MachineSpec(name=name, image=tiny_image.path, overlay=root / f"{name}.cow",
                                             run_dir=root / name, console_log=root / f"{name}.log", memory_mb=64,
                                             seed=seed, networks=(NetworkAttachment(lan),))
            made.append(Student(root, lan, machines))
        for student in made:
            for spec in student.machines.values():
                assert backend.start(spec, timeout=60).state == State.RUNNING
        yield made
    finally:
        for root in roots:
            end_by_pid(backend, root)
            shutil.rmtree(root, ignore_errors=True)


def test_pairs_talk_and_never_meet(backend: UmlBackend, students: list[Student]) -> None:
    one, two = students
    a1, b1, a2 = one.machines["a"], one.machines["b"], two.machines["a"]

    # eth1 came up with its fixed MAC and the seed's address.
    out = console_run(backend, a1, "cat /sys/class/net/eth1/address; ip -o -4 addr show dev eth1")
    assert network_mac("a", "lan") in out and "192.168.50.1/24" in out
    assert os.readlink(a1.run_dir / "net-eth1") == str(NetworkDir(one.lan.folder).switch_dir)
    assert backend.network_status(one.lan).attached == 2

    # Each pair talks over its own switch, and each a reaches its own b (same address, different machine).
    assert "0% packet loss" in console_run(backend, a1, "ping -c 2 -W 3 192.168.50.2")
    assert "s1-b" in fetch(backend, a1, "192.168.50.2")
    assert "s2-b" in fetch(backend, a2, "192.168.50.2")
    assert "0% packet loss" in console_run(backend, b1, "ping -c 1 -W 3 192.168.50.1")

    # Isolation: with student 1's b gone, 192.168.50.2 is only student 2's b, and student 1's a cannot reach it.
    assert backend.kill(b1).state == State.STOPPED
    assert backend.network_status(one.lan).attached == 1
    out = console_run(backend, a1, "ping -c 2 -W 2 192.168.50.2")
    assert "0 packets received" in out and "rc=1" in out
    assert "s2-b" not in fetch(backend, a1, "192.168.50.2")
    assert "s2-b" in fetch(backend, a2, "192.168.50.2")


def test_stopped_and_dead_switches(backend: UmlBackend, students: list[Student]) -> None:
    one, two = students

    a1, b1 = one.machines["a"], one.machines["b"]
    if backend.status(b1).state != State.STOPPED:  # the test before ends it, unless it failed early
        backend.kill(b1)

    # Stopping a network ends its switch by PID and leaves no process, socket or pid file.
    net = NetworkDir(one.lan.folder)
    record = ProcessRecord.read(net.pid_file)
    assert record is not None and record.alive()
    stopped = backend.stop_network(one.lan)
    assert stopped.state == State.STOPPED and stopped.pid is None
    assert not record.alive()
    assert processes_running(net.argv() or ["?"]) == []
    assert not net.switch_dir.exists() and not net.pid_file.exists()
    # A machine cannot start on it; nothing of the machine runs afterwards.
    with pytest.raises(StateError, match=r"its network lan \(eth1\) is stopped"):
        backend.start(b1)
    assert backend.status(b1).state == State.STOPPED
    assert not RunDir(b1.run_dir).supervisor_pid.exists()
    # Started again, a (re)started machine joins it and is reached by its own address. Machines that ran on the old
    # switch lost their link for good (UML does not reconnect): a1 stays cut off until it is restarted.
    assert backend.start_network(one.lan).state == State.RUNNING
    assert backend.start(b1, timeout=60).state == State.RUNNING
    assert backend.network_status(one.lan).attached == 1
    assert "192.168.50.2/24" in console_run(backend, b1, "ip -o -4 addr show dev eth1")
    assert "0 packets received" in console_run(backend, a1, "ping -c 1 -W 2 192.168.50.2")

    # A switch killed behind labkit's back is reported as stopped, with what happened, and cleaned up.
    pid = backend.network_status(two.lan).pid
    assert pid is not None
    dead = ProcessRecord.of(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while dead.alive():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    status = backend.network_status(two.lan)
    assert status.state == State.STOPPED
    assert f"(pid {pid}) was gone without a clean stop" in status.detail
    assert not NetworkDir(two.lan.folder).switch_dir.exists()
    assert backend.status(two.machines["a"]).state == State.RUNNING  # the machines live on, without their link
    assert "0 packets received" in console_run(backend, two.machines["a"], "ping -c 1 -W 2 192.168.50.2")
