"""The console supervisor and the backend's process bookkeeping, around a stand-in for `linux` (a shell script).

Booting the real kernel is tests/guests/test_runtime_uml.py; here the supervisor itself is under test: pty, console
fan-out to several clients, readiness mark, exit record, clean-up, and the backend's state guards around it.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.errors import RuntimeBackendError, StateError
from labkit.images.guest_contract import READY_MARKER
from labkit.runtime.base import MachineSpec, State
from labkit.runtime.console import attach, connect
from labkit.runtime.process import ProcessRecord, end_processes
from labkit.runtime.rundir import RunDir
from labkit.runtime.uml.backend import UmlBackend

STAND_IN = f"""#!/bin/sh
echo "stand-in linux $1"
echo "{READY_MARKER}"
while read -r line; do
    case "$line" in
        exit*) echo bye; exit 3 ;;
        *) echo "got:$line" ;;
    esac
done
"""


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lk", dir="/tmp"))
    yield path
    run = RunDir(path / "run" / "m")
    linux = ProcessRecord.read(run.machine_pid)
    end_processes(linux.pid if linux else None, run.machine_argv())
    sup = ProcessRecord.read(run.supervisor_pid)
    if sup is not None:
        sup.send(signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def stand_in_for(root: Path, script_text: str) -> tuple[UmlBackend, MachineSpec]:
    """A UML backend whose `linux` is the shell script ``script_text``, and a machine spec for it."""
    script = root / "fake-linux"
    script.write_text(script_text)
    script.chmod(0o755)
    image = root / "base.img"
    image.touch()
    spec = MachineSpec(name="m", image=image, overlay=root / "m.cow", run_dir=root / "run" / "m",
                       console_log=root / "m.log")
    return UmlBackend(linux_binary=str(script)), spec


@pytest.fixture
def stand_in(root: Path) -> tuple[UmlBackend, MachineSpec]:
    return stand_in_for(root, STAND_IN)


def read_until(sock: socket.socket, needle: bytes, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    seen = b""
    while needle not in seen:
        chunk = sock.recv(4096)
        assert chunk, f"closed before {needle!r}: {seen!r}"
        seen += chunk
    return seen


def wait_state(backend: UmlBackend, spec: MachineSpec, state: State) -> None:
    deadline = time.monotonic() + 10
    while backend.status(spec).state != state:
        assert time.monotonic() < deadline, backend.status(spec)
        time.sleep(0.05)


def test_console_fan_out_ready_and_exit_record(stand_in: tuple[UmlBackend, MachineSpec]) -> None:
    backend, spec = stand_in
    status = backend.start(spec, timeout=20)
    assert status.state == State.RUNNING and status.ready and status.pid and status.supervisor_pid
    run = RunDir(spec.run_dir)
    assert run.ready.exists() and ProcessRecord.read(run.machine_pid) == ProcessRecord.of(status.pid)
    with pytest.raises(StateError, match="already running"):
        backend.start(spec)

    with connect(backend.console_socket(spec)) as one, connect(backend.console_socket(spec)) as two:
        one.sendall(b"hello\n")
        read_until(one, b"got:hello")
        read_until(two, b"got:hello")
        two.sendall(b"exit\n")
        read_until(one, b"bye")
    wait_state(backend, spec, State.STOPPED)
    final = backend.status(spec)
    assert "exited with code 3" in final.detail
    assert not run.console_sock.exists() and not run.machine_pid.exists() and not run.supervisor_pid.exists()
    log = spec.console_log.read_text()
    assert "stand-in linux mem=128M" in log and READY_MARKER in log and "got:hello" in log and "bye" in log


def test_kill_and_restart(stand_in: tuple[UmlBackend, MachineSpec]) -> None:
    backend, spec = stand_in
    first = backend.start(spec, timeout=20)
    killed = backend.kill(spec)
    assert killed.state == State.STOPPED and "signal 9" in killed.detail
    assert not ProcessRecord.of(first.supervisor_pid).alive() if first.supervisor_pid else True
    second = backend.start(spec, timeout=20)
    assert second.state == State.RUNNING and second.pid != first.pid
    # A SIGKILLed supervisor takes its machine along (parent-death signal) and status tells the truth.
    assert second.supervisor_pid is not None
    ProcessRecord.of(second.supervisor_pid).send(signal.SIGKILL)
    wait_state(backend, spec, State.STOPPED)
    assert not ProcessRecord.of(second.pid).alive() if second.pid else True
    assert not RunDir(spec.run_dir).console_sock.exists()


def test_supervisor_records_a_program_that_cannot_start(root: Path) -> None:
    run = RunDir(root / "run" / "m")
    run.path.mkdir(parents=True)
    run.write_json(run.supervisor_spec, {"argv": ["/nonexistent/linux"], "console_log": str(root / "m.log"),
                                         "ready_marker": READY_MARKER})
    done = subprocess.run([sys.executable, "-m", "labkit.runtime.supervisor", str(run.path)], timeout=20)
    assert done.returncode == 127
    record = run.read_json(run.exit_record)
    assert record["returncode"] == 127 and "cannot start /nonexistent/linux" in record["reason"]
    assert not run.supervisor_pid.exists() and not run.console_sock.exists()


def test_guest_error_marker_fails_the_start_at_once(root: Path) -> None:
    backend, spec = stand_in_for(root, "#!/bin/sh\necho 'labkit-guest: error: dropbear did not start'\n"
                                       "exec sleep 60\n")
    started = time.monotonic()
    with pytest.raises(RuntimeBackendError, match="cannot become ready: dropbear did not start"):
        backend.start(spec, timeout=30)
    assert time.monotonic() - started < 25  # the error line ended the wait, not the 30 s timeout
    assert backend.status(spec).state == State.STOPPED


def test_attach_relays_both_ways_and_detaches_on_ctrl_bracket(stand_in: tuple[UmlBackend, MachineSpec]) -> None:
    backend, spec = stand_in
    backend.start(spec, timeout=20)
    user_in_r, user_in_w = os.pipe()
    master, slave = pty.openpty()  # attach's stdout is a terminal, as for a person
    os.write(user_in_w, b"hello\n")
    done = threading.Event()

    def feed_detach() -> None:
        # Detach only once the guest's answer reached the screen.
        seen = b""
        while b"got:hello" not in seen:
            seen += os.read(master, 4096)
        os.write(user_in_w, b"\x1d")
        while not done.is_set():
            with contextlib.suppress(OSError):
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    os.read(master, 4096)

    feeder = threading.Thread(target=feed_detach, daemon=True)
    feeder.start()
    with os.fdopen(user_in_r, "rb", buffering=0) as stdin, os.fdopen(slave, "wb", buffering=0) as stdout:
        attach(backend.console_socket(spec), spec.console_log, stdin=stdin, stdout=stdout)
    done.set()
    feeder.join(5)
    os.close(master)
    os.close(user_in_w)
    assert backend.status(spec).state == State.RUNNING  # detaching leaves the machine running
    backend.kill(spec)


def test_uml_machine_runs_without_address_randomization(root: Path) -> None:
    """UML's memory map (and so the page descriptors every guest pays for) grows with its randomized heap start; the
    supervisor starts `linux` with ADDR_NO_RANDOMIZE (docs/runtime.md, "Memory"), as the stand-in sees it."""
    backend, spec = stand_in_for(root, f'#!/bin/sh\necho "personality $(cat /proc/self/personality)"\n'
                                       f'echo "{READY_MARKER}"\nsleep 30\n')
    backend.start(spec, timeout=20)
    try:
        assert "personality 00040000" in spec.console_log.read_text()
    finally:
        backend.kill(spec)
