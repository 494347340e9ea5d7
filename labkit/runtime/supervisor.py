"""The per-machine console supervisor, for every backend: ``python -m labkit.runtime.supervisor RUN_DIR``.

It outlives the CLI that started it (the backend starts it in a new session) and owns one *machine process*, whatever
``argv`` the run folder's ``supervisor.json`` names (UML's ``linux``, ``qemu-system-x86_64``):
- the machine process gets a pty slave as stdin/stdout/stderr (UML: ``con0=fd:0,fd:1``; QEMU: ``-chardev stdio``
  on its serial port); the supervisor holds the master.
- Every byte the guest prints is appended to the console log and sent to every client of ``RUN_DIR/console.sock``
  (a UNIX stream socket, raw bytes both ways; input from any client goes to the guest).
- Every client connection is recorded in asciicast v2 when the spec has a ``recording`` entry
  (`labkit.runtime.recorder`: one file per session, in the machine's recordings folder, the client's hello taken off
  its input).
- When the readiness marker shows up in the output, it writes ``RUN_DIR/ready``; the guest's error marker gives
  ``RUN_DIR/guest-error``.
- It writes pid files (with /proc start times) for itself and for the machine process, which leads its own process
  group, so its helper processes (UML's I/O threads, the guest's process hosts, slirp) can be killed as one group.
- When the machine process exits it kills whatever is left of it (its group, and helpers that left the group), records
  the exit in ``exit.json``, removes the socket, the pid files and the spec's ``remove_after`` paths, and exits.

With an ``isolation`` entry in its spec (every machine on SLIRP-style user networking has one), the machine process runs
in a private user + network namespace and the supervisor relays the machine's forwards and allowed host ports across
its edge (`netns`): a guest reaches nothing on the host's loopback but what its lab allows.

If the supervisor itself is SIGKILLed, the machine process receives SIGTERM (PR_SET_PDEATHSIG), on which UML tears
itself and its helpers down and QEMU exits; the backend's ``status`` then finds both processes gone, removes what they
left and reports STOPPED. SIGTERM or SIGINT to the supervisor are passed on to the machine process the same way; the
supervisor exits once it is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import termios
import time
import tty
from pathlib import Path

import labkit
from labkit.atomic import write_atomic
from labkit.logtail import tail
from labkit.runtime.netns import Isolation, Namespace, NamespaceError, Relays, start_slirp4netns, stop_process
from labkit.runtime.process import ProcessRecord, end_processes
from labkit.runtime.recorder import SessionRecorder, prune
from labkit.runtime.rundir import RunDir

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see "Memory" above)
if TYPE_CHECKING:
    from typing import Any

#: A console client whose unsent output grows beyond this is too slow and is disconnected (the log keeps everything).
CLIENT_BUFFER_LIMIT = 1 << 20
#: Input waiting for the guest beyond this is dropped (a paused guest reads nothing).
INPUT_BUFFER_LIMIT = 1 << 16
#: The activity mark (``RUN_DIR/activity``) is touched at most this often (seconds): on console input, and while a
#: forwarded connection (SSH) is open. The idle sweep reads its time (labkit.services.sweeper).
ACTIVITY_EVERY = 10.0
_PR_SET_PDEATHSIG = 1
#: personality(2) flag: no address-space randomization (what ``setarch -R`` sets)
_ADDR_NO_RANDOMIZE = 0x0040000


class _Client:
    def __init__(self, sock: socket.socket, recorder: SessionRecorder | None = None) -> None:
        self.sock = sock
        self.pending = bytearray()
        self.recorder = recorder


class Supervisor:
    """Runs one machine process under a pty and serves its console; `run_machine` returns its exit code."""

    def __init__(self, run_dir: Path) -> None:
        self.run = RunDir(run_dir)
        spec = self.run.read_json(self.run.supervisor_spec)
        if not isinstance(spec, dict) or not spec.get("argv"):
            raise SystemExit(f"labkit supervisor: {self.run.supervisor_spec} is missing or has no argv")
        self.argv: list[str] = [str(a) for a in spec["argv"]]
        self.console_log = Path(spec["console_log"])
        #: output marker -> file written when it first appears
        self.markers = {str(text).encode(): path for text, path in ((spec.get("ready_marker"), self.run.ready),
                                                                    (spec.get("error_marker"), self.run.guest_error))
                        if text}
        #: files (then folders, when empty) the machine leaves behind after a kill, removed when it has ended
        self.remove_after = [Path(str(path)) for path in spec.get("remove_after") or ()]
        self.isolation = Isolation.from_json(spec["isolation"]) if spec.get("isolation") else None
        #: the host CPU the machine's processes are kept on (`labkit.runtime.cpus`), None for any
        self.cpu: int | None = int(spec["cpu"]) if spec.get("cpu") is not None else None
        #: run the machine process without address-space randomization (`_ADDR_NO_RANDOMIZE`; UML, docs/runtime.md)
        self.fixed_layout = bool(spec.get("fixed_layout"))
        #: where and how console sessions are recorded (folder, machine, max_bytes, keep_days, keep_bytes), or None
        self.recording: dict[str, Any] | None = spec.get("recording") or None
        self.namespace: Namespace | None = None
        self.relays: Relays | None = None
        self.slirp4netns: subprocess.Popen[bytes] | None = None
        self.selector = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}
        self.to_guest = bytearray()
        self.window = b""
        self.terminating = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.active_at = -1.0  # time.monotonic() of the last look at the activity mark

    # ---- start

    def run_machine(self) -> int:
        self.run.clean_runtime_files()
        ProcessRecord.of(os.getpid()).write(self.run.supervisor_pid)
        self.log = open(self.console_log, "ab", buffering=0)  # noqa: SIM115 (held for the life of the machine)
        if self.recording:
            prune(str(self.recording["folder"]), float(self.recording.get("keep_days") or 0),
                  int(self.recording.get("keep_bytes") or 0))
        join: tuple[int, int] | None = None
        if self.isolation is not None:
            # First, while this process has no threads and no other children: the agent is a fork of it.
            try:
                join = self._isolate(self.isolation)
            except (NamespaceError, OSError) as err:
                self.log.write(f"labkit: cannot isolate the machine's network: {err}\n".encode())
                self._finish(126, f"cannot isolate the machine's network: {err}",
                             conflict=getattr(err, "conflict", False))
                return 126
        master, slave = os.openpty()
        tty.setraw(slave)  # UML sets raw mode itself, but not before it has started: no echo of early input
        # No output translation either: a machine that turns output processing back on (QEMU's stdio chardev sets
        # OPOST) would otherwise have every guest line end in CR CR LF, which console clients do not expect.
        mode = termios.tcgetattr(slave)
        mode[1] &= ~(termios.OPOST | termios.ONLCR | termios.OCRNL | termios.ONLRET)
        termios.tcsetattr(slave, termios.TCSANOW, mode)
        os.set_blocking(master, False)
        self.master = master
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.run.console_sock))
        os.chmod(self.run.console_sock, 0o600)
        listener.listen(16)
        listener.setblocking(False)
        self.listener = listener

        signal.signal(signal.SIGTERM, self._on_terminate)
        signal.signal(signal.SIGINT, self._on_terminate)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getpid()
        cpu = self.cpu
        fixed_layout = self.fixed_layout

        def die_with_supervisor() -> None:
            # If the supervisor dies (even by SIGKILL), the machine gets SIGTERM: UML tears down itself and its
            # helpers, QEMU exits.
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)
            if join is not None:
                Namespace.join(*join)
            if fixed_layout:  # personality(0xffffffff) reads the current persona without changing it
                libc.personality((libc.personality(0xFFFFFFFF) & 0xFFFFFFFF) | _ADDR_NO_RANDOMIZE)
            if cpu is not None:
                with contextlib.suppress(OSError):  # a CPU taken away since (cgroup cpuset): run anywhere
                    os.sched_setaffinity(0, {cpu})

        try:
            self.proc = subprocess.Popen(self.argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                         cwd=self.run.path, process_group=0, preexec_fn=die_with_supervisor)
        except (OSError, subprocess.SubprocessError) as err:
            message = f"labkit: cannot start {self.argv[0]}: {err}\n"
            self.log.write(message.encode())
            self._finish(127, f"cannot start {self.argv[0]}: {getattr(err, 'strerror', None) or err}")
            return 127
        finally:
            os.close(slave)
            for fd in join or ():
                os.close(fd)
        ProcessRecord.of(self.proc.pid).write(self.run.machine_pid)
        self._mark_active()  # a machine just started counts as used: the idle time runs from here
        if self.relays is not None:
            self.relays.start()

        self.selector.register(master, selectors.EVENT_READ, "pty")
        self.selector.register(listener, selectors.EVENT_READ, "listen")
        try:
            code = self._loop()
        except BaseException:
            import traceback  # only on this way out: not worth its memory in every supervisor

            traceback.print_exc()
            self._end_machine()
            code = self.proc.wait()
            self._finish(code, "supervisor failed; see supervisor.log")
            raise
        return code

    def _isolate(self, isolation: Isolation) -> tuple[int, int]:
        """Make the machine's namespace, its listeners and its way out; return the handles the machine joins it by."""
        self.namespace = Namespace.create()
        ProcessRecord.of(self.namespace.pid).write(self.run.netns_pid)
        self.relays = Relays(self.namespace)
        for port, inner in isolation.forwards:
            self.relays.listen_on_host(port, inner)
        for port in isolation.host_ports:
            self.relays.listen_in_namespace(port)
        if isolation.outbound:
            self.slirp4netns = start_slirp4netns(isolation.slirp4netns, self.namespace, self.run.slirp4netns_log)
            ProcessRecord.of(self.slirp4netns.pid).write(self.run.slirp4netns_pid)
        return self.namespace.join_fds()

    def _end_isolation(self) -> None:
        if self.relays is not None:
            self.relays.close()
        if self.slirp4netns is not None:
            stop_process(self.slirp4netns)
        if self.namespace is not None:
            self.namespace.close()

    def _on_terminate(self, _signum: int, _frame: Any) -> None:
        self.terminating = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)

    # ---- main loop

    def _loop(self) -> int:
        assert self.proc is not None
        pty_open = True
        while True:
            for key, events in self.selector.select(timeout=0.25):
                if key.data == "pty":
                    if events & selectors.EVENT_READ:
                        pty_open = self._read_guest()
                    if events & selectors.EVENT_WRITE:
                        self._write_guest()
                elif key.data == "listen":
                    self._accept()
                else:
                    client = self.clients.get(key.fd)
                    if client is not None:
                        self._serve_client(client, events)
            if self.recording:
                now = time.time()
                for client in list(self.clients.values()):
                    if client.recorder is not None and client.recorder.pending:
                        client.recorder.tick(now)
            if self.relays is not None and self.relays.open_forwards:
                self._mark_active()
            if not pty_open or self._machine_exited():
                return self._wind_down()

    def _mark_active(self) -> None:
        """A user is there (console input, an open SSH session): touch the activity mark when it is older than
        `ACTIVITY_EVERY` (looked at no more than once a second)."""
        now = time.monotonic()
        if now - self.active_at < 1.0:
            return
        self.active_at = now
        with contextlib.suppress(OSError):
            try:
                age = time.time() - self.run.activity.stat().st_mtime
            except FileNotFoundError:
                age = ACTIVITY_EVERY
            if age >= ACTIVITY_EVERY:
                self.run.mark_activity()

    def _machine_exited(self) -> bool:
        """Look without reaping, so the PID (and group id) stay reserved until the group is killed."""
        assert self.proc is not None
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None and info.si_pid != 0

    def _end_machine(self) -> None:
        """Kill everything left of the machine: its process group, and UML helpers that left the group (see
        `labkit.runtime.process.processes_running`)."""
        assert self.proc is not None
        left = end_processes(self.proc.pid, self.argv)
        if left:
            print(f"labkit supervisor: processes {left} of the machine survived SIGKILL", file=sys.stderr)

    def _wind_down(self) -> int:
        assert self.proc is not None
        # The machine exited, or closed its console. Whatever is left of it (after kill -9 of UML's main process its
        # helpers keep running, one busy-looping, one holding the disk locks) goes now, before the leader is reaped.
        deadline = time.monotonic() + 5
        while not self._machine_exited() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._end_machine()
        code = self.proc.wait()
        self._drain_guest(time.monotonic() + 1.0)
        reason = "exited" if code >= 0 else f"killed by signal {-code}"
        if self.terminating:
            reason += " (supervisor was asked to terminate)"
        self._finish(code, reason)
        return code

    def _drain_guest(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                time.sleep(0.02)
                continue
            except OSError:
                return
            if not data:
                return
            self._output(data)

    def _finish(self, code: int, reason: str, conflict: bool = False) -> None:
        self._end_isolation()
        for client in list(self.clients.values()):
            with contextlib.suppress(OSError):
                client.sock.setblocking(True)
                client.sock.settimeout(0.5)
                client.sock.sendall(bytes(client.pending))
            self._drop(client)
        if hasattr(self, "listener"):
            with contextlib.suppress(OSError):
                self.listener.close()
        self.run.write_json(self.run.exit_record, {"returncode": code, "ended_at": time.time(), "reason": reason,
                                                   "conflict": conflict})
        self.run.clean_runtime_files()
        for path in self.remove_after:
            with contextlib.suppress(OSError):
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()
        with contextlib.suppress(OSError):
            self.log.close()

    # ---- guest side

    def _read_guest(self) -> bool:
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return True
        except OSError as err:
            if err.errno == errno.EIO:  # every slave end closed: the machine and its helpers are gone
                return False
            raise
        if not data:
            return False
        self._output(data)
        return True

    def _output(self, data: bytes) -> None:
        self.log.write(data)
        if self.markers:
            # Look at the new bytes plus the tail of the old ones, so a marker split across two reads is found.
            window = self.window + data
            for marker, path in list(self.markers.items()):
                if marker in window:
                    write_atomic(path, f"{time.time()}\n")
                    del self.markers[marker]
            self.window = window[-max((len(m) for m in self.markers), default=0):] if self.markers else b""
        now = time.time()
        for client in list(self.clients.values()):
            if client.recorder is not None:
                client.recorder.output(data, now)
            client.pending += data
            if len(client.pending) > CLIENT_BUFFER_LIMIT:
                self._drop(client)
            else:
                self._flush(client)

    def _write_guest(self) -> None:
        try:
            sent = os.write(self.master, self.to_guest)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.to_guest.clear()
            sent = 0
        del self.to_guest[:sent]
        self._update_pty_events()

    def _update_pty_events(self) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.to_guest else 0)
        self.selector.modify(self.master, events, "pty")

    # ---- console clients

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        recorder = SessionRecorder(self.recording, time.time()) if self.recording else None
        self.clients[sock.fileno()] = _Client(sock, recorder)
        self.selector.register(sock, selectors.EVENT_READ, "client")

    def _serve_client(self, client: _Client, events: int) -> None:
        if events & selectors.EVENT_READ:
            try:
                data = client.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._drop(client)
                return
            if data and client.recorder is not None:
                data = client.recorder.from_client(data, time.time())
            if data:
                self._mark_active()
                room = INPUT_BUFFER_LIMIT - len(self.to_guest)
                self.to_guest += data[:max(room, 0)]
                self._write_guest()
        if events & selectors.EVENT_WRITE:
            self._flush(client)

    def _flush(self, client: _Client) -> None:
        if client.pending:
            try:
                sent = client.sock.send(client.pending)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(client)
                return
            del client.pending[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.pending else 0)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.modify(client.sock, events, "client")

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(client.sock)
        self.clients.pop(fd, None)
        client.sock.close()
        if client.recorder is not None:
            client.recorder.close(time.time())


# ---- the backend's side: starting a supervisor, reading what it wrote

#: Python's flags for the supervisor: no `site` (it would read every .pth file of the environment and import what
#: they name; the supervisor needs the standard library and labkit only, and labkit is on the PYTHONPATH we give it)
SUPERVISOR_FLAGS = ("-S",)

#: a kernel stack frame (`` [<6069f509>] dump_stack+0x1a/0x1c``): a panic prints dozens after the line that says why
_STACK_FRAME = re.compile(r"^\s*\[<[0-9a-f]+>\]")


def console_tail(path: Path, lines: int = 25, max_bytes: int = 16384) -> str:
    """The last ``lines`` lines of a console log (or a note that there is none), for error messages. Kernel stack
    frames are left out, so that after a panic the lines that say what went wrong are the ones shown."""
    data = tail(path, max_bytes=max_bytes)
    if data is None:
        return f"(no console log at {path})"
    text = data.decode(errors="replace").replace("\r", "")
    said = [line for line in text.splitlines() if not _STACK_FRAME.match(line)]
    return "\n".join(said[-lines:]) or "(console log is empty)"


def supervisor_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The supervisor's environment: ours, bytecode caches allowed, with the folder labkit is imported from first on
    PYTHONPATH. Under `SUPERVISOR_FLAGS` (no `site`) that is how it finds labkit, whether labkit is installed in
    site-packages, as an editable install, or run from a source tree."""
    env = dict(os.environ if environ is None else environ)
    # Let it write the bytecode caches its modules lack (a read-only install just keeps none): compiling labkit's
    # modules from source at every machine's start costs that machine about 1.3 MB for its whole life.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    package_root = str(Path(labkit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def spawn_supervisor(run_dir: Path, name: str, python: str = sys.executable) -> None:
    """Start the supervisor of the machine whose ``supervisor.json`` is in ``run_dir``, detached in a session of its
    own (it outlives the caller); return once it has detached."""
    from labkit.errors import RuntimeBackendError  # the caller's side: the supervisor itself never needs it

    run = RunDir(run_dir)
    with open(run.supervisor_log, "ab") as log:
        launcher = subprocess.Popen(
            [python, *SUPERVISOR_FLAGS, "-m", "labkit.runtime.supervisor", "--detach", str(run_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True, start_new_session=True,
            cwd=run_dir, env=supervisor_env())
    try:
        code = launcher.wait(timeout=30)
    except subprocess.TimeoutExpired as err:
        launcher.kill()
        launcher.wait()
        raise RuntimeBackendError(f"the console supervisor of {name} did not detach; see {run.supervisor_log}") from err
    if code != 0:
        raise RuntimeBackendError(f"the console supervisor of {name} failed to start (exit {code}); see "
                                  f"{run.supervisor_log}")


def main(argv: list[str] | None = None) -> int:
    """Entry point. With ``--detach`` fork once more so the caller can reap its child at once and the supervisor is
    adopted by init (no zombie in a long-lived web process), in a session of its own."""
    args = sys.argv[1:] if argv is None else argv
    detach = bool(args) and args[0] == "--detach"
    if detach:
        args = args[1:]
    if len(args) != 1:
        print("usage: python -m labkit.runtime.supervisor [--detach] RUN_DIR", file=sys.stderr)
        return 2
    if detach:
        if os.fork():
            os._exit(0)
        os.setsid()
    code = Supervisor(Path(args[0])).run_machine()
    return code if 0 <= code < 256 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
