"""QemuBackend against real ``qemu-system-x86_64`` (TCG): boot, console, forwards, pause, stop, crashes, host reach,
a lab network shared with a UML machine, and snapshots that keep the running state.

The guest is the tiny BusyBox + Dropbear image (the session's `tiny_image`) on a qcow2 overlay, booted with labkit's
QEMU kernel and initrd, with the same seed disk as under UML. TCG guests are slow on a loaded host: every wait is
generous and every assertion is about an outcome, never a duration.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
from guest_console import read_until

from labkit.errors import ConfigError, NotFoundError, RuntimeBackendError, StateError
from labkit.runtime import get_backend
from labkit.runtime.base import Forward, MachineSpec, NetworkAttachment, NetworkSpec, State
from labkit.runtime.process import ProcessRecord, process_group_members, processes_running
from labkit.runtime.qemu.backend import BootSet, QemuBackend, default_boot
from labkit.runtime.rundir import RunDir
from labkit.runtime.uml.backend import UmlBackend

from .backend_helpers import (
    BannerServer,
    check_busy_forward_port_is_a_conflict,
    check_console_forward_and_clean_stop,
    check_pause_resume_and_state_errors,
    listening_addresses,
    namespace_links,
    on_console,
    ssh_banner,
    uml_spec,
    usable,
    wait_state,
)
from .backend_helpers import qemu_spec as make_spec

pytestmark = [pytest.mark.guest, pytest.mark.timeout(300)]

TOKEN = secrets.token_hex(4)


@pytest.fixture(scope="session")
def qemu_boot() -> BootSet:
    """labkit's kernel and initrd for QEMU guests (built once into the cache)."""
    return default_boot()


@pytest.fixture
def backend(qemu_boot: BootSet) -> QemuBackend:
    return usable(QemuBackend(boot=lambda: qemu_boot))


@pytest.fixture
def running(backend: QemuBackend, root: Path, guest_image: Path, seed: Path) -> MachineSpec:
    spec = make_spec(root, guest_image, seed, forwards=(Forward(0, 22),))
    status = backend.start(spec, timeout=180)
    assert status.state == State.RUNNING and status.ready
    return spec


def test_qemu_is_a_registered_backend_with_ram_snapshots() -> None:
    backend = get_backend("qemu")
    assert isinstance(backend, QemuBackend)
    assert (backend.kind, backend.overlay_kind, backend.console_kind) == ("qemu", "qcow2", "socket")
    assert backend.capabilities.ram_snapshots and backend.capabilities.pause and backend.capabilities.lab_networks


def test_start_console_forward_and_clean_stop(backend: QemuBackend, running: MachineSpec) -> None:
    spec = running
    argv = RunDir(spec.run_dir).machine_argv() or []
    assert "-accel" in argv and argv[argv.index("-accel") + 1] in ("tcg", "kvm")
    # the guest sees its root on virtio and the SLIRP contract's address on eth0
    out = on_console(backend, spec, "grep ' / ' /proc/mounts; ip -4 addr show eth0")
    assert "/dev/vda / " in out and "10.0.2.15/24" in out
    # the console through the supervisor, the SSH forward, a clean stop: BusyBox init powers off on ctrl-alt-del
    check_console_forward_and_clean_stop(backend, spec, backend.qmp_path(spec), timeout=60)


def test_pause_resume_and_state_errors(backend: QemuBackend, running: MachineSpec) -> None:
    spec = running
    # paused, QEMU itself says so, not only labkit's mark
    assert backend.pause(spec).state == State.PAUSED
    RunDir(spec.run_dir).paused.unlink()
    assert backend.status(spec).state == State.PAUSED
    with pytest.raises(StateError, match="paused"):
        backend.pause(spec)
    assert backend.resume(spec).state == State.RUNNING
    check_pause_resume_and_state_errors(backend, spec, timeout=60, silent=3)


def test_busy_forward_port_is_a_conflict(backend: QemuBackend, root: Path, guest_image: Path) -> None:
    check_busy_forward_port_is_a_conflict(backend, lambda forwards: make_spec(root, guest_image, forwards=forwards))


def test_kill_9_of_qemu_leaves_nothing(backend: QemuBackend, running: MachineSpec) -> None:
    spec = running
    status = backend.status(spec)
    assert status.pid is not None
    os.kill(status.pid, signal.SIGKILL)
    wait_state(backend, spec, State.STOPPED)
    assert process_group_members(status.pid) == []
    assert processes_running(RunDir(spec.run_dir).machine_argv() or ["?"]) == []
    assert not backend.console_socket(spec).exists() and not RunDir(spec.run_dir).machine_pid.exists()
    assert "signal 9" in backend.status(spec).detail
    assert backend.start(spec, timeout=180).state == State.RUNNING
    assert backend.kill(spec).state == State.STOPPED


def test_kill_9_of_supervisor_ends_machine_and_recovers(backend: QemuBackend, running: MachineSpec) -> None:
    spec = running
    status = backend.status(spec)
    assert status.pid is not None and status.supervisor_pid is not None
    helpers = [ProcessRecord.read(path) for path in RunDir(spec.run_dir).helper_pid_files()]
    assert all(helpers)
    os.kill(status.supervisor_pid, signal.SIGKILL)
    # qemu gets SIGTERM (parent-death signal) and exits; status reports it and cleans up.
    wait_state(backend, spec, State.STOPPED)
    assert process_group_members(status.pid) == []
    assert not any(h.alive() for h in helpers if h)
    assert not RunDir(spec.run_dir).supervisor_pid.exists() and not backend.console_socket(spec).exists()
    assert backend.start(spec, timeout=180).state == State.RUNNING
    assert backend.stop(spec, timeout=60).state == State.STOPPED


def test_missing_qemu_binary_is_a_clear_error(qemu_boot: BootSet, root: Path, guest_image: Path) -> None:
    backend = QemuBackend(qemu_binary="/nonexistent/qemu", boot=lambda: qemu_boot)
    assert any("qemu-system-x86" in line for line in backend.check())
    with pytest.raises(ConfigError, match="qemu-system-x86"):
        backend.start(make_spec(root, guest_image))


def test_boot_failure_raises_with_console_tail(backend: QemuBackend, root: Path, guest_image: Path) -> None:
    """A kernel that cannot find its root panics; the start fails at once with the kernel's last words."""
    spec = make_spec(root, guest_image, name="bad", kernel_args=("rdinit=/nonexistent",))
    with pytest.raises(RuntimeBackendError, match="last console lines") as info:
        backend.start(spec, timeout=180)
    message = str(info.value)
    assert "kernel panicked" in message and "Kernel panic - not syncing" in message, message
    assert backend.status(spec).state == State.STOPPED
    assert ProcessRecord.read(RunDir(spec.run_dir).machine_pid) is None


def test_qemu_refusing_to_start_is_a_clear_error(qemu_boot: BootSet, root: Path, guest_image: Path) -> None:
    """QEMU's own complaint (here: a missing initrd) reaches the console log and the start error."""
    missing = replace(qemu_boot, initrd=root / "no-such-initrd")
    backend = QemuBackend(boot=lambda: missing)
    spec = make_spec(root, guest_image, name="bad")
    with pytest.raises(RuntimeBackendError, match="ended while starting") as info:
        backend.start(spec, timeout=180)
    assert "no-such-initrd" in str(info.value)
    assert backend.status(spec).state == State.STOPPED


# ---- snapshots that keep the running state


def test_a_saved_running_state_brings_back_processes_addresses_and_routes(backend: QemuBackend,
                                                                         running: MachineSpec, root: Path) -> None:
    spec = running
    port = backend.status(spec).forwards[0].host_port
    before = on_console(backend, spec, "sleep 100000 & echo pid=$!; ip addr add 192.168.77.7/24 dev eth0;"
                                       " ip route add 198.51.100.0/24 via 10.0.2.2; echo saved-$((40+2))")
    pid = before.split("pid=", 1)[1].split()[0]
    assert "saved-42" in before
    # Used through its forward before the save, as a student's machine is: QEMU's slirp learns the guest's MAC from
    # its first packet, and until then drops the first SYN of a connection (about 1 s more, once, after boot or a
    # restore of a state saved before that).
    assert ssh_banner(port).startswith(b"SSH-2.0-dropbear")
    state = root / "kept" / "lesson 1;$(touch pwned).state"  # a path the shell QEMU uses must not run
    disk = root / "kept" / "lesson1.qcow2"
    started = time.monotonic()
    backend.save_state(spec, state)
    save_seconds = time.monotonic() - started
    # left paused with its disk flushed: the copy taken now is the disk that belongs to the state
    assert backend.status(spec).state == State.PAUSED
    shutil.copyfile(spec.overlay, disk)
    assert state.is_file() and state.stat().st_size > 1 << 20
    assert not list(state.parent.glob(".*partial")) and not (spec.run_dir / "pwned").exists()
    assert backend.resume(spec).state == State.RUNNING

    # the guest changes after the save: the process goes, the address and route too, a file appears
    on_console(backend, spec, f"kill {pid}; ip addr del 192.168.77.7/24 dev eth0; "
                              "ip route del 198.51.100.0/24; touch /root/after-save; sync")
    with pytest.raises(StateError, match="already running"):
        backend.load_state(spec, state)
    assert backend.kill(spec).state == State.STOPPED

    # a stopped machine comes back from the state and the disk kept with it (no boot): all is as it was saved
    shutil.copyfile(disk, spec.overlay)
    started = time.monotonic()
    status = backend.load_state(spec, state, timeout=180)
    assert status.state == State.RUNNING and status.ready
    endpoint = backend.ssh_endpoint(spec)
    assert endpoint is not None and ssh_banner(endpoint[1]).startswith(b"SSH-2.0-dropbear")
    cold_seconds = time.monotonic() - started
    after = on_console(backend, spec, f"kill -0 {pid} && echo alive; ip -4 addr show eth0; ip route; "
                                      "ls /root/after-save 2>&1")
    assert "alive" in after and "192.168.77.7/24" in after and "198.51.100.0/24 via 10.0.2.2" in after
    assert "No such file" in after
    print(f"\nQEMU running state: save {save_seconds:.2f} s, stopped machine to SSH answering {cold_seconds:.2f} s")

    with pytest.raises(NotFoundError):
        backend.load_state(spec, root / "no-such.state")
    assert backend.stop(spec, timeout=60).state == State.STOPPED


# ---- host reach (issue 11, section 5): the same policy as UML machines


def probe(backend: QemuBackend, spec: MachineSpec, port: int) -> str:
    """From inside the guest: connect to the host (10.0.2.2) on ``port`` and show the answer."""
    return on_console(backend, spec, f"timeout 8 nc 10.0.2.2 {port} </dev/null 2>&1 | head -c 300; echo").strip()


@pytest.mark.parametrize("outbound", [True, False], ids=["outbound", "no-outbound"])
def test_a_guest_reaches_only_the_host_ports_its_lab_allows(backend: QemuBackend, root: Path, guest_image: Path,
                                                          seed: Path, outbound: bool) -> None:
    listener = BannerServer(f"listener-{TOKEN}".encode())
    allowed = BannerServer(f"allowed-{TOKEN}".encode())
    try:
        spec = make_spec(root, guest_image, seed, forwards=(Forward(0, 22),), host_ports=(allowed.port,),
                         outbound=outbound)
        status = backend.start(spec, timeout=180)
        assert status.pid is not None
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
            assert f"listener-{TOKEN}".encode() in read_until(sock, b"\n")  # it answers on the host
        assert f"allowed-{TOKEN}" in probe(backend, spec, allowed.port)
        answer = probe(backend, spec, listener.port)
        assert "refused" in answer.lower() and TOKEN not in answer, answer
        # the guest's own forward is served on the host's 127.0.0.1 only
        port = status.forwards[0].host_port
        assert ssh_banner(port).startswith(b"SSH-2.0-dropbear")
        assert listening_addresses(port) == {"0100007F"}
        # QEMU runs in the machine's own namespace: with outbound traffic it has a way out (slirp4netns), without it
        # only loopback
        links, default_route = namespace_links(status.pid)
        if outbound:
            assert "tap0" in links and default_route
            assert RunDir(spec.run_dir).slirp4netns_pid.exists()
        else:
            assert (links, default_route) == ({"lo"}, False)
            assert not RunDir(spec.run_dir).slirp4netns_pid.exists()
        assert backend.kill(spec).state == State.STOPPED
    finally:
        listener.close()
        allowed.close()


# ---- a lab network shared by a UML machine and a QEMU machine


def test_a_uml_and_a_qemu_machine_on_one_lab_network_reach_each_other(backend: QemuBackend, root: Path,
                                                                     guest_image: Path, seed: Path) -> None:
    uml = usable(UmlBackend())
    lan = NetworkSpec("lan", root / "lan")
    try:
        assert backend.start_network(lan).state == State.RUNNING
        assert uml.network_status(lan).state == State.RUNNING  # one switch, whichever backend asks
        q = make_spec(root, guest_image, seed, name="q", networks=(NetworkAttachment(lan),))
        u = uml_spec(root, guest_image, seed, name="u", networks=(NetworkAttachment(lan),))
        assert backend.start(q, timeout=180).state == State.RUNNING
        assert uml.start(u, timeout=90).state == State.RUNNING
        on_console(backend, q, "ip link set eth1 up; ip addr add 192.168.60.2/24 dev eth1")
        on_console(uml, u, "ip link set eth1 up; ip addr add 192.168.60.1/24 dev eth1")
        out = on_console(uml, u, "ping -c 3 -W 5 192.168.60.2; echo rc=$?", timeout=90)
        assert "rc=0" in out, out
        out = on_console(backend, q, "ping -c 3 -W 5 192.168.60.1; echo rc=$?", timeout=90)
        assert "rc=0" in out, out
        assert backend.network_status(lan).attached == 2
        backend.kill(q)
        uml.kill(u)
    finally:
        with contextlib.suppress(Exception):
            backend.stop_network(lan)
