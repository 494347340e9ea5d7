"""UmlBackend against real `linux` and real classic slirp: boot, console, forwards, pause, stop, crashes.

The guest is the tiny BusyBox + Dropbear image (the session's `tiny_image`) with a seed disk for the slirp network: it
prints the readiness marker once dropbear listens and keeps a root shell on the console.
"""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from guest_console import console_run, read_until

from labkit.errors import ConfigError, ConflictError, RuntimeBackendError, StateError
from labkit.images.guest_contract import READY_MARKER
from labkit.images.seed import SeedSpec, build_seed
from labkit.images.store import ImageRecord
from labkit.overlays import umlcow
from labkit.runtime.base import Forward, MachineSpec, State
from labkit.runtime.console import connect
from labkit.runtime.process import ProcessRecord, end_processes, process_group_members, processes_running
from labkit.runtime.rundir import RunDir
from labkit.runtime.uml.backend import UmlBackend
from labkit.runtime.uml.disk_check import KernelFaultAtBoot

pytestmark = [pytest.mark.guest, pytest.mark.timeout(180)]

@pytest.fixture(scope="session")
def guest_image(tiny_image: ImageRecord) -> Path:
    """The tiny BusyBox + Dropbear image (tests/conftest.py), used read-only as every test machine's backing file."""
    return tiny_image.path


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed disk giving eth0 the classic slirp address and route."""
    return build_seed(SeedSpec(hostname="guest"), tmp_path_factory.mktemp("seed") / "seed.img")


def _end_by_pid(run_dir: Path) -> None:
    """Teardown: end whatever the machine in ``run_dir`` still runs, by its recorded PIDs (linux's process group and
    the processes running its exact command line, then the supervisor)."""
    run = RunDir(run_dir)
    linux = ProcessRecord.read(run.machine_pid)
    sup = ProcessRecord.read(run.supervisor_pid)
    assert end_processes(linux.pid if linux else None, run.machine_argv()) == []
    if sup is not None:
        sup.send(signal.SIGKILL)


@pytest.fixture
def root() -> Iterator[Path]:
    """A short run root (UNIX socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="lk", dir="/tmp"))
    yield path
    for run_dir in path.iterdir():
        if run_dir.is_dir():
            _end_by_pid(run_dir)
    shutil.rmtree(path, ignore_errors=True)


def make_spec(root: Path, image: Path, seed: Path | None = None, name: str = "m1",
              forwards: tuple[Forward, ...] = ()) -> MachineSpec:
    return MachineSpec(name=name, image=image, overlay=root / f"{name}.cow", run_dir=root / name,
                       console_log=root / f"{name}.log", memory_mb=64, seed=seed, forwards=forwards)


@pytest.fixture
def backend() -> UmlBackend:
    backend = UmlBackend()
    if backend.check():
        pytest.skip("; ".join(backend.check()))
    return backend


@pytest.fixture
def running(backend: UmlBackend, root: Path, guest_image: Path, seed: Path) -> MachineSpec:
    spec = make_spec(root, guest_image, seed, forwards=(Forward(0, 22),))
    status = backend.start(spec, timeout=60)
    assert status.state == State.RUNNING and status.ready
    return spec


def ssh_banner(port: int, timeout: float = 10.0) -> bytes:
    """The first line the guest's SSH server sends through the forward (raises on timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return read_until(sock, b"\n", timeout).strip()


def wait_state(backend: UmlBackend, spec: MachineSpec, state: State, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while backend.status(spec).state != state:
        assert time.monotonic() < deadline, f"still {backend.status(spec)} after {timeout} s"
        time.sleep(0.1)


def test_the_console_begins_with_what_a_student_needs(running: MachineSpec) -> None:
    """No kernel messages (SELinux's CHECKREQPROT notice, mmapper_init, ...) above the ready marker and the shell."""
    deadline = time.monotonic() + 30
    while True:  # the shell's banner follows the ready marker: wait until it is in the log, not for a guessed time
        log = running.console_log.read_text(errors="replace").replace("\r", "")
        before, marker, after = log.partition(READY_MARKER)
        if after.strip() or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert marker and before.strip() == "", before
    assert after.lstrip("\n").startswith("BusyBox"), after[:200]


def test_start_console_forward_and_clean_stop(backend: UmlBackend, running: MachineSpec) -> None:
    spec = running
    assert READY_MARKER in spec.console_log.read_text(errors="replace")
    status = backend.status(spec)
    assert status.pid and status.supervisor_pid and status.forwards[0].host_port > 0
    group = status.pid

    # Two console clients at once: input from one, output to both.
    first, second = connect(backend.console_socket(spec)), connect(backend.console_socket(spec))
    with first, second:
        assert "labkit-test-42" in console_run(first, "echo labkit-test-$((6*7))")
        read_until(second, b"labkit-test-42")

    # A host port forwarded to the guest's SSH server, as ssh_endpoint reports it.
    endpoint = backend.ssh_endpoint(spec)
    assert endpoint == ("127.0.0.1", status.forwards[0].host_port)
    assert ssh_banner(endpoint[1]).startswith(b"SSH-2.0-dropbear")

    # Clean stop via ctrl-alt-del: the guest's init powers off, the supervisor records exit 0 and cleans up.
    stopped = backend.stop(spec, timeout=30)
    assert stopped.state == State.STOPPED
    assert "code 0" in stopped.detail
    assert "Requesting system poweroff" in spec.console_log.read_text(errors="replace")
    assert process_group_members(group) == []
    assert not backend.console_socket(spec).exists()
    assert not backend.mconsole_path(spec).exists()
    with pytest.raises(StateError, match="stopped"):
        backend.stop(spec)


def test_guest_reaches_an_allowed_host_service(backend: UmlBackend, root: Path, guest_image: Path,
                                              seed: Path) -> None:
    """The guest reaches a host port its spec allows, as 10.0.2.2 (tests/guests/test_host_reach.py: and only that)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"hello-from-host")

        def log_message(self, *_args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        spec = replace(make_spec(root, guest_image, seed), host_ports=(server.server_port,))
        assert backend.start(spec, timeout=60).state == State.RUNNING
        with connect(backend.console_socket(spec)) as sock:
            out = console_run(sock, f"wget -q -O - http://10.0.2.2:{server.server_port}/", timeout=20)
        assert "hello-from-host" in out
        backend.kill(spec)
    finally:
        server.shutdown()
        server.server_close()


def test_pause_resume_and_state_errors(backend: UmlBackend, running: MachineSpec, guest_image: Path) -> None:
    spec = running
    with pytest.raises(StateError, match="already running"):
        backend.start(spec)
    with pytest.raises(StateError, match="running"):
        backend.resume(spec)
    assert backend.pause(spec).state == State.PAUSED
    assert backend.status(spec).state == State.PAUSED
    with pytest.raises(StateError, match="paused"):
        backend.pause(spec)
    port = backend.status(spec).forwards[0].host_port
    # While paused the guest answers nothing: slirp accepts the connection, but no SSH banner comes.
    with pytest.raises(AssertionError, match="did not arrive"):
        ssh_banner(port, timeout=2)
    assert backend.resume(spec).state == State.RUNNING
    assert ssh_banner(port).startswith(b"SSH-2.0-dropbear")
    backend.sync(spec)
    # Stopping a paused machine resumes it first, so ctrl-alt-del still works.
    backend.pause(spec)
    assert backend.stop(spec, timeout=30).state == State.STOPPED
    with pytest.raises(StateError, match="stopped"):
        backend.kill(spec)


def test_busy_forward_port_is_a_conflict(backend: UmlBackend, root: Path, guest_image: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = make_spec(root, guest_image, forwards=(Forward(port, 22),))
        with pytest.raises(ConflictError, match=f"host port {port} of forward {port}:22"):
            backend.start(spec)
    run = RunDir(spec.run_dir)
    assert ProcessRecord.read(run.supervisor_pid) is None
    assert ProcessRecord.read(run.machine_pid) is None
    assert backend.status(spec).state == State.STOPPED


def test_kill_9_of_linux_leaves_nothing(backend: UmlBackend, running: MachineSpec) -> None:
    spec = running
    status = backend.status(spec)
    assert status.pid is not None
    assert len(process_group_members(status.pid)) > 1  # UML's helpers share the group
    os.kill(status.pid, signal.SIGKILL)
    wait_state(backend, spec, State.STOPPED)
    deadline = time.monotonic() + 5
    while process_group_members(status.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process_group_members(status.pid) == []
    # UML's SIGWINCH helper leaves the group (setsid); it is found by the machine's command line.
    assert processes_running(RunDir(spec.run_dir).machine_argv() or ["?"]) == []
    assert not backend.console_socket(spec).exists()
    assert not RunDir(spec.run_dir).machine_pid.exists()
    assert "signal 9" in backend.status(spec).detail
    assert backend.start(spec, timeout=60).state == State.RUNNING
    assert backend.kill(spec).state == State.STOPPED


def test_kill_9_of_supervisor_ends_machine_and_recovers(backend: UmlBackend, running: MachineSpec) -> None:
    spec = running
    status = backend.status(spec)
    assert status.pid is not None and status.supervisor_pid is not None
    os.kill(status.supervisor_pid, signal.SIGKILL)
    # linux gets SIGTERM (parent-death signal) and UML tears itself down; status reports it and cleans up.
    wait_state(backend, spec, State.STOPPED)
    assert process_group_members(status.pid) == []
    assert processes_running(RunDir(spec.run_dir).machine_argv() or ["?"]) == []
    after = backend.status(spec)
    assert not RunDir(spec.run_dir).supervisor_pid.exists()
    assert not backend.console_socket(spec).exists()
    assert not backend.mconsole_path(spec).exists()
    assert after.pid is None
    assert backend.start(spec, timeout=60).state == State.RUNNING
    assert backend.stop(spec, timeout=30).state == State.STOPPED


def test_stop_and_kill_return_only_when_the_supervisor_has_exited(backend: UmlBackend, running: MachineSpec,
                                                                   ) -> None:
    """The supervisor removes its pid file while cleaning up, before it exits: a stop or kill must not take the
    missing file for a supervisor that is gone (it would report a stopped machine whose supervisor still runs)."""
    spec = running
    for verb in (backend.kill, backend.stop):
        sup = ProcessRecord.read(RunDir(spec.run_dir).supervisor_pid)
        assert sup is not None and sup.alive()

        def hold_after_clean_up(sup: ProcessRecord = sup) -> None:
            """Freeze the supervisor for a moment as soon as its pid file is gone (as a busy host would)."""
            deadline = time.monotonic() + 30
            while RunDir(spec.run_dir).supervisor_pid.exists() and time.monotonic() < deadline:
                time.sleep(0.0005)
            if sup.send(signal.SIGSTOP):
                time.sleep(1.0)
                sup.send(signal.SIGCONT)

        watcher = threading.Thread(target=hold_after_clean_up)
        watcher.start()
        try:
            assert verb(spec).state == State.STOPPED
            assert not sup.alive(), f"{verb.__name__} returned while the supervisor (pid {sup.pid}) still ran"
        finally:
            watcher.join()
            sup.send(signal.SIGCONT)
        if verb == backend.kill:
            assert backend.start(spec, timeout=60).state == State.RUNNING


def test_missing_linux_binary_is_a_clear_error(root: Path, guest_image: Path) -> None:
    backend = UmlBackend(linux_binary="/nonexistent/linux")
    assert any("user-mode-linux" in line for line in backend.check())
    spec = make_spec(root, guest_image)
    with pytest.raises(ConfigError, match="user-mode-linux"):
        backend.start(spec)
    assert backend.status(spec).state == State.STOPPED


def test_boot_failure_raises_with_console_tail(backend: UmlBackend, root: Path, guest_image: Path) -> None:
    spec = MachineSpec(name="bad", image=guest_image, overlay=root / "bad.cow", run_dir=root / "bad",
                       console_log=root / "bad.log", memory_mb=64, kernel_args=("init=/nonexistent",))
    with pytest.raises(Exception, match="last console lines") as info:
        backend.start(spec, timeout=30)
    assert "nonexistent" in str(info.value) or "panic" in str(info.value).lower()
    assert backend.status(spec).state == State.STOPPED
    assert ProcessRecord.read(RunDir(spec.run_dir).machine_pid) is None


def test_a_locked_root_disk_names_the_process_that_holds_it(backend: UmlBackend, root: Path, guest_image: Path) -> None:
    """Another process's POSIX lock on the overlay (a second UML on it, a backup tool) stops the boot; the start
    error shows the kernel's own reason and names that process."""
    spec = make_spec(root, guest_image)
    umlcow.write_cow(spec.overlay, guest_image)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(spec.overlay)!r}, os.O_RDWR); fcntl.lockf(fd, fcntl.LOCK_EX)\n"
         "print('locked', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeBackendError) as info:
            backend.start(spec, timeout=30)
        message = str(info.value)
        assert "Failed to lock" in message and "Unable to mount root fs" in message, message
        assert f"{spec.overlay} is locked by process {holder.pid} (" in message, message
    finally:
        holder.kill()
        holder.wait()
    assert backend.status(spec).state == State.STOPPED
    assert backend.start(spec, timeout=60).ready  # the lock gone, the same overlay boots


def test_a_changed_base_image_is_named_as_the_reason(backend: UmlBackend, root: Path, guest_image: Path) -> None:
    image = root / "base.img"
    shutil.copyfile(guest_image, image)
    spec = make_spec(root, image)
    umlcow.write_cow(spec.overlay, image)
    os.utime(image, (1_000_000, 1_000_000))
    with pytest.raises(RuntimeBackendError) as info:
        backend.start(spec, timeout=30)
    message = str(info.value)
    assert "mtime mismatch" in message and "its root disk: Backing file" in message, message


def test_a_root_mount_failure_on_a_fine_disk_without_a_kernel_warning_is_not_retried(
        backend: UmlBackend, root: Path, guest_image: Path) -> None:
    """Only the guest kernel's own boot fault is tried again (see `kernel_fault_at_boot`); a command line that cannot
    mount the root fails at once, with one boot on the console."""
    spec = replace(make_spec(root, guest_image), kernel_args=("rootfstype=vfat",))
    with pytest.raises(RuntimeBackendError) as info:
        backend.start(spec, timeout=60)
    assert not isinstance(info.value, KernelFaultAtBoot), str(info.value)
    assert "no problem found with" in str(info.value)
    log = spec.console_log.read_text(errors="replace")
    assert log.count("Unable to mount root fs") == 1 and "once more" not in log, log[-2000:]


def test_each_machine_keeps_to_one_cpu_and_the_next_takes_another(backend: UmlBackend, root: Path, guest_image: Path,
                                                                   seed: Path) -> None:
    """UML boots about twice as fast kept on one CPU here (labkit.runtime.cpus): every process of a machine (the
    kernel, its helpers, slirp) has the same one CPU, and two machines have two different ones. LABKIT_PIN_CPU=0 (a
    backend made with ``pin_cpu=False``) leaves a machine on every CPU."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("this process may use only one CPU")
    kept = []
    for name in ("p1", "p2"):
        spec = make_spec(root, guest_image, seed, name=name)
        status = backend.start(spec, timeout=60)
        assert status.pid is not None
        members = process_group_members(status.pid)
        assert len(members) > 1
        cpus = {frozenset(os.sched_getaffinity(pid)) for pid in members}
        assert len(cpus) == 1 and len(next(iter(cpus))) == 1, cpus
        kept.append(next(iter(cpus)))
    assert kept[0] != kept[1] and kept[0] | kept[1] <= allowed
    free = make_spec(root, guest_image, seed, name="p3")
    status = UmlBackend(pin_cpu=False).start(free, timeout=60)
    assert status.pid is not None
    assert {frozenset(os.sched_getaffinity(pid)) for pid in process_group_members(status.pid)} == {frozenset(allowed)}
