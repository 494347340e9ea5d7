"""UmlBackend against real `linux` and real classic slirp: boot, console, forwards, pause, stop, crashes.

The guest is the tiny BusyBox + Dropbear image (the session's `tiny_image`) with a seed disk for the slirp network: it
prints the readiness marker once dropbear listens and keeps a root shell on the console.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from labkit.errors import ConfigError, RuntimeBackendError
from labkit.images.guest_contract import READY_MARKER
from labkit.overlays import umlcow
from labkit.runtime.base import Forward, MachineSpec, State
from labkit.runtime.process import ProcessRecord, process_group_members, processes_running
from labkit.runtime.rundir import RunDir
from labkit.runtime.uml.backend import UmlBackend
from labkit.runtime.uml.disk_check import KernelFaultAtBoot

from .backend_helpers import (
    check_busy_forward_port_is_a_conflict,
    check_console_forward_and_clean_stop,
    check_pause_resume_and_state_errors,
    usable,
    wait_state,
)
from .backend_helpers import uml_spec as make_spec

pytestmark = [pytest.mark.guest, pytest.mark.timeout(180)]


@pytest.fixture
def backend() -> UmlBackend:
    return usable(UmlBackend())


@pytest.fixture
def running(backend: UmlBackend, root: Path, guest_image: Path, seed: Path) -> MachineSpec:
    spec = make_spec(root, guest_image, seed, forwards=(Forward(0, 22),))
    status = backend.start(spec, timeout=60)
    assert status.state == State.RUNNING and status.ready
    return spec


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
    check_console_forward_and_clean_stop(backend, running, backend.mconsole_path(running), timeout=30)


def test_pause_resume_and_state_errors(backend: UmlBackend, running: MachineSpec) -> None:
    check_pause_resume_and_state_errors(backend, running, timeout=30, silent=2)


def test_busy_forward_port_is_a_conflict(backend: UmlBackend, root: Path, guest_image: Path) -> None:
    check_busy_forward_port_is_a_conflict(backend, lambda forwards: make_spec(root, guest_image, forwards=forwards))


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
    spec = make_spec(root, guest_image, name="bad", kernel_args=("init=/nonexistent",))
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
