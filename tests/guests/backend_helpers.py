"""Helpers of the tests that drive a runtime backend (UML or QEMU) directly, below the services: a short run root
cleaned up by PID, machine specs for each backend, and the host-side probes (SSH banner, console command, host
services, the machine's network namespace) that the UML, QEMU and host-reach tests all use.
"""

from __future__ import annotations

import http.server
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import make_short_dir
from guest_console import console_run, read_until

from labkit.errors import ConflictError, StateError
from labkit.images.guest_contract import READY_MARKER
from labkit.overlays import get_overlay
from labkit.runtime.base import Backend, Forward, MachineSpec, State
from labkit.runtime.console import connect
from labkit.runtime.process import ProcessRecord, end_processes, process_group_members
from labkit.runtime.qemu.backend import QemuBackend
from labkit.runtime.rundir import RunDir

B = TypeVar("B", bound=Backend)


def usable(backend: B) -> B:
    """``backend``, or the test skipped with what this host lacks for it (its `check`)."""
    missing = backend.check()
    if missing:
        pytest.skip("; ".join(missing))
    return backend


def end_by_pid(run_dir: Path) -> list[int]:
    """Teardown: end whatever the machine in ``run_dir`` still runs, by its recorded PIDs (the machine's process
    group and the processes running its exact command line, then the supervisor and its helpers); return the PIDs
    that outlived the machine's SIGKILL (empty when all went)."""
    run = RunDir(run_dir)
    machine = ProcessRecord.read(run.machine_pid)
    left = end_processes(machine.pid if machine else None, run.machine_argv())
    for pid_file in (run.supervisor_pid, *run.helper_pid_files()):
        record = ProcessRecord.read(pid_file)
        if record is not None:
            record.send(signal.SIGKILL)
    return left


@contextmanager
def run_root(prefix: str) -> Iterator[Path]:
    """A short run root (UNIX socket paths must stay under 108 bytes); afterwards every machine left in it is ended
    by PID (AssertionError if one outlives it) and the folder removed."""
    path = make_short_dir(prefix)
    left: list[int] = []
    try:
        yield path
    finally:
        try:
            for run_dir in (p for p in path.iterdir() if p.is_dir()):
                left += end_by_pid(run_dir)
        finally:
            shutil.rmtree(path, ignore_errors=True)
    assert left == [], f"processes outlived their machine's teardown: {left}"


def uml_spec(root: Path, image: Path, seed: Path | None = None, name: str = "m1", forwards: tuple[Forward, ...] = (),
             **fields: object) -> MachineSpec:
    """A UML machine ``name`` in ``root`` (64 MiB, the COW overlay made by the backend at the first start)."""
    return MachineSpec(name=name, image=image, overlay=root / f"{name}.cow", run_dir=root / name,  # type: ignore[arg-type]
                       console_log=root / f"{name}.log", memory_mb=64, seed=seed, forwards=forwards, **fields)


def qemu_spec(root: Path, image: Path, seed: Path | None = None, name: str = "m1", forwards: tuple[Forward, ...] = (),
              **fields: object) -> MachineSpec:
    """A QEMU machine ``name`` in ``root`` (128 MiB, which labkit's QEMU kernel needs) on a new qcow2 overlay."""
    overlay = root / f"{name}.qcow2"
    get_overlay(QemuBackend.overlay_kind).create(image, overlay)
    return MachineSpec(name=name, image=image, overlay=overlay, run_dir=root / name,  # type: ignore[arg-type]
                       console_log=root / f"{name}.log", memory_mb=128, seed=seed, forwards=forwards, **fields)


def ssh_banner(port: int, timeout: float = 20.0) -> bytes:
    """The first line the guest's SSH server sends through the forward on ``port`` (AssertionError on timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return read_until(sock, b"\n", timeout).strip()


def wait_state(backend: Backend, spec: MachineSpec, state: State, timeout: float = 30.0) -> None:
    """Wait until the backend reports ``state`` for ``spec`` (an outcome, not a duration: the wait is generous)."""
    deadline = time.monotonic() + timeout
    while backend.status(spec).state != state:
        assert time.monotonic() < deadline, f"still {backend.status(spec)} after {timeout} s"
        time.sleep(0.1)


def on_console(backend: Backend, spec: MachineSpec, command: str, timeout: float = 60.0) -> str:
    """Run a shell command on the machine's console and return its output."""
    with connect(backend.console_socket(spec)) as sock:
        return console_run(sock, command, timeout)


class HostWebService:
    """A tiny HTTP server on the host's 127.0.0.1 that answers every GET with ``body``."""

    def __init__(self, body: str) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *_args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BannerServer:
    """A TCP listener on the host's 127.0.0.1 that greets every connection with one line, then closes it."""

    def __init__(self, banner: bytes) -> None:
        self.banner = banner
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.banner + b"\n")

    def close(self) -> None:
        self.sock.close()


def namespace_links(pid: int) -> tuple[set[str], bool]:
    """The interfaces of the network namespace ``pid`` lives in, and whether it has a default route (read from
    /proc: nothing is sent anywhere)."""
    interfaces = {line.split(":")[0].strip() for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]}
    routes = Path(f"/proc/{pid}/net/route").read_text().splitlines()[1:]
    return interfaces, any(line.split()[1] == "00000000" for line in routes)


def listening_addresses(port: int) -> set[str]:
    """The local addresses (as /proc/net/tcp* writes them) of the host's sockets listening on ``port``."""
    bound = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] == "0A" and int(hex_port, 16) == port:
                bound.add(address)
    return bound


# ---- checks every backend must pass, called by each backend's own test (which adds what is its own)


def check_console_forward_and_clean_stop(backend: Backend, spec: MachineSpec, control: Path, timeout: float) -> None:
    """A running machine ``spec`` (forward 0:22) reports its PIDs and forward, serves two console clients at once
    (input from one, output to both), answers SSH on the forward ssh_endpoint names, and stops cleanly: the guest's
    init powers off on ctrl-alt-del, the machine exits 0, and its process group, console socket and ``control``
    socket (UML's mconsole, QEMU's QMP) are gone; a second stop is a StateError."""
    assert READY_MARKER in spec.console_log.read_text(errors="replace")
    status = backend.status(spec)
    assert status.pid and status.supervisor_pid and status.forwards[0].host_port > 0
    group = status.pid

    first, second = connect(backend.console_socket(spec)), connect(backend.console_socket(spec))
    with first, second:
        assert "labkit-test-42" in console_run(first, "echo labkit-test-$((6*7))", timeout)
        read_until(second, b"labkit-test-42", timeout)

    endpoint = backend.ssh_endpoint(spec)
    assert endpoint == ("127.0.0.1", status.forwards[0].host_port)
    assert ssh_banner(endpoint[1]).startswith(b"SSH-2.0-dropbear")

    stopped = backend.stop(spec, timeout=timeout)
    assert stopped.state == State.STOPPED
    assert "code 0" in stopped.detail
    assert "Requesting system poweroff" in spec.console_log.read_text(errors="replace")
    assert process_group_members(group) == []
    assert not backend.console_socket(spec).exists()
    assert not control.exists()
    with pytest.raises(StateError, match="stopped"):
        backend.stop(spec)


def check_pause_resume_and_state_errors(backend: Backend, spec: MachineSpec, timeout: float, silent: float) -> None:
    """A running machine ``spec`` (forward 0:22) refuses a second start and a resume; paused, it refuses a second
    pause and its guest answers nothing for ``silent`` seconds (slirp accepts the connection, no SSH banner comes);
    resumed, it answers and syncs; a paused machine still stops cleanly (resumed first, so ctrl-alt-del works); a
    stopped one refuses kill."""
    with pytest.raises(StateError, match="already running"):
        backend.start(spec)
    with pytest.raises(StateError, match="running"):
        backend.resume(spec)
    assert backend.pause(spec).state == State.PAUSED
    assert backend.status(spec).state == State.PAUSED
    with pytest.raises(StateError, match="paused"):
        backend.pause(spec)
    port = backend.status(spec).forwards[0].host_port
    with pytest.raises(AssertionError, match="did not arrive"):
        ssh_banner(port, timeout=silent)
    assert backend.resume(spec).state == State.RUNNING
    assert ssh_banner(port).startswith(b"SSH-2.0-dropbear")
    backend.sync(spec)
    backend.pause(spec)
    assert backend.stop(spec, timeout=timeout).state == State.STOPPED
    with pytest.raises(StateError, match="stopped"):
        backend.kill(spec)


def check_busy_forward_port_is_a_conflict(backend: Backend, spec_with: Callable[[tuple[Forward, ...]], MachineSpec],
                                          ) -> None:
    """A forward from a host port another process holds is a ConflictError naming the port, and nothing is left
    running or recorded (``spec_with(forwards)``: the machine to start)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        spec = spec_with((Forward(port, 22),))
        with pytest.raises(ConflictError, match=f"host port {port} of forward {port}:22"):
            backend.start(spec)
    run = RunDir(spec.run_dir)
    assert ProcessRecord.read(run.supervisor_pid) is None
    assert ProcessRecord.read(run.machine_pid) is None
    assert backend.status(spec).state == State.STOPPED
