"""Keeping a guest off the host's loopback: a private user + network namespace per machine, and relays across it.

SLIRP turns a guest's connection to 10.0.2.2 into a connection to 127.0.0.1 of whatever network namespace slirp runs
in. In the host's namespace that is every loopback service of the lab host (the web app, other students' forwarded
SSH ports, a database). So the console supervisor runs the machine process (UML's ``linux`` with its slirp helper, or
``qemu-system-x86_64`` with its built-in slirp) in a namespace of its own, made without root (an unprivileged user
namespace owns it):

- A small *agent* process (a fork of the supervisor) creates the namespace and stays in it. It brings ``lo`` up and
  hands out new sockets made inside the namespace on request (over a UNIX socket pair, as file descriptors): a socket
  keeps the namespace it was made in, so the supervisor, in the host's namespace, can listen and connect on both
  sides. The machine process joins the agent's namespaces before it runs (``setns``).
- Host -> guest forwards: the supervisor listens on the host's 127.0.0.1 (never 0.0.0.0) and relays each connection
  to slirp's ``redir`` listener on the same port inside the namespace.
- Allowed host ports (a lab's ``host_ports``): the supervisor listens on the namespace's 127.0.0.1 on that port and
  relays each connection to the host's 127.0.0.1 on the same port. Every other port of 10.0.2.2 is refused.
- Outbound traffic (a lab's ``outbound``): ``slirp4netns --disable-host-loopback`` gives the namespace a way out
  through the host's user-space NAT that cannot reach the host's loopback; with ``outbound = false`` the namespace has
  only ``lo`` and nothing but the allowed host ports is reachable.

Every helper (agent, slirp4netns) is a child of the supervisor, has a pid file in the run folder, dies with the
supervisor (PR_SET_PDEATHSIG) and is ended by its recorded PID. docs/runtime.md ("Host reach") tells the whole story.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: the supervisor imports this module
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
#: struct ifreq: the interface name, then a union of 24 bytes (flags is a short at its start)
_IFREQ = "16sh22x"
LOOPBACK = "127.0.0.1"
#: relay buffer per direction
CHUNK = 1 << 16

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceError(Exception):
    """The namespace or one of its helpers could not be set up (the supervisor records the sentence as the exit).
    ``conflict``: a host port was taken by another program (the backend reports a ConflictError, so a start that
    picked the port itself can pick again)."""

    def __init__(self, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise NamespaceError(f"{what}: {os.strerror(code)}")


def set_parent_death_signal(signum: int = signal.SIGKILL) -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


class Isolation:
    """What one machine's namespace lets through: written by the backend into supervisor.json, read by the
    supervisor. ``forwards`` are (host port, port inside the namespace where slirp's redir listens) pairs.

    This module's classes are plain classes, not dataclasses: the console supervisor imports it, and `dataclasses`
    (with `inspect`) would cost every running machine a megabyte (docs/runtime.md, "Memory")."""

    __slots__ = ("forwards", "host_ports", "outbound", "slirp4netns")

    def __init__(self, forwards: tuple[tuple[int, int], ...] = (), host_ports: tuple[int, ...] = (),
                 outbound: bool = True, slirp4netns: str = "slirp4netns") -> None:
        self.forwards = forwards
        self.host_ports = host_ports
        self.outbound = outbound
        self.slirp4netns = slirp4netns

    def _key(self) -> tuple[object, ...]:
        return (self.forwards, self.host_ports, self.outbound, self.slirp4netns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Isolation) and other._key() == self._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Isolation(forwards={self.forwards!r}, host_ports={self.host_ports!r}, outbound={self.outbound!r}, "
                f"slirp4netns={self.slirp4netns!r})")

    def to_json(self) -> dict[str, Any]:
        return {"forwards": [list(pair) for pair in self.forwards], "host_ports": list(self.host_ports),
                "outbound": self.outbound, "slirp4netns": self.slirp4netns}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Isolation:
        return cls(forwards=tuple((int(host), int(inner)) for host, inner in data.get("forwards", ())),
                   host_ports=tuple(int(p) for p in data.get("host_ports", ())),
                   outbound=bool(data.get("outbound", True)), slirp4netns=str(data.get("slirp4netns", "slirp4netns")))


def _bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0)))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def _enter_new_namespace(uid: int, gid: int) -> None:
    """unshare a user + network namespace in which this process keeps its own uid and gid (no root inside)."""
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "cannot make a user + network namespace (unshare)")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    _bring_up_loopback()


def _agent(channel: socket.socket) -> None:
    """The agent's life inside the namespace: one new TCP socket per request, until the supervisor hangs up."""
    while True:
        try:
            request = channel.recv(16)
        except InterruptedError:
            continue
        if not request:
            return
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            socket.send_fds(channel, [b"s"], [sock.fileno()])


class Namespace:
    """A user + network namespace held by its agent process. Made by `create`; `socket` gives sockets inside it."""

    def __init__(self, pid: int, channel: socket.socket) -> None:
        self.pid = pid
        self.channel = channel
        self.lock = threading.Lock()

    @classmethod
    def create(cls, timeout: float = 10.0) -> Namespace:
        """Fork the agent; it dies with this process. Raises NamespaceError when the kernel refuses the namespace."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        uid, gid = os.getuid(), os.getgid()
        parent = os.getpid()
        # The agent lives as long as the machine, sharing the supervisor's pages until either side writes to one. A
        # garbage collection writes to every object it scans; frozen objects are never scanned, so most pages stay
        # shared (docs/runtime.md, "Memory").
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the agent
            code = 0
            try:
                set_parent_death_signal()
                if os.getppid() != parent:
                    os._exit(1)
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_DFL)
                mine.close()
                try:
                    _enter_new_namespace(uid, gid)
                except (NamespaceError, OSError) as err:
                    theirs.send(f"error {err}".encode())
                    code = 1
                else:
                    theirs.send(b"ok")
                    _agent(theirs)
            except BaseException:  # a forked child must never return into the supervisor's code
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        mine.settimeout(timeout)
        try:
            answer = mine.recv(4096)
        except OSError as err:
            answer = f"error no answer from the namespace agent ({err})".encode()
        if answer != b"ok":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            mine.close()
            text = answer.decode(errors="replace").removeprefix("error ") or "the namespace agent ended at start"
            raise NamespaceError(text)
        mine.settimeout(timeout)
        return cls(pid, mine)

    def socket(self) -> socket.socket:
        """A new TCP socket inside the namespace (binding and connecting it work in the namespace's network)."""
        with self.lock:
            self.channel.send(b"s")
            _msg, fds, _flags, _addr = socket.recv_fds(self.channel, 16, 1)
        if not fds:
            raise NamespaceError("the namespace agent sent no socket")
        return socket.socket(fileno=fds[0])

    def join_fds(self) -> tuple[int, int]:
        """Open the namespace's user and network handles, for `join` in a child before it execs."""
        user = os.open(f"/proc/{self.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        net = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        return user, net

    @staticmethod
    def join(user_fd: int, net_fd: int) -> None:
        """Move the calling (single-threaded, just forked) process into the namespace. The user namespace comes first:
        its owner (this uid) holds every capability in it, which joining its network namespace needs."""
        _check(_libc.setns(user_fd, CLONE_NEWUSER), "cannot join the machine's user namespace")
        _check(_libc.setns(net_fd, CLONE_NEWNET), "cannot join the machine's network namespace")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.channel.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy one direction until EOF, then pass the EOF on (half-close), so protocols that shut down one side work."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    try:
        while True:
            count = source.recv_into(buffer)
            if not count:
                break
            sink.sendall(view[:count])
    except OSError:
        with contextlib.suppress(OSError):
            source.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _splice(one: socket.socket, other: socket.socket) -> None:
    """Relay two connected sockets both ways; closes both when both directions are done."""
    back = threading.Thread(target=_pump, args=(other, one), daemon=True)
    back.start()
    _pump(one, other)
    back.join()
    one.close()
    other.close()


class Relays:
    """The listeners of one machine and the threads that relay their connections across the namespace's edge."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.listeners: list[socket.socket] = []
        #: listeners bound but not served yet (`start`), each with whether its connections are a user's (forwards)
        self.waiting: list[tuple[socket.socket, Callable[[], socket.socket], bool]] = []
        #: forwarded connections (SSH, a student's web port) open now: the supervisor's activity mark reads it
        self.open_forwards = 0
        self._count = threading.Lock()

    def listen_on_host(self, port: int, inner: int) -> None:
        """A host -> guest forward: listen on the host's 127.0.0.1 now (before the machine starts), relay into the
        namespace to slirp's redir on port ``inner``."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((LOOPBACK, port))
        except OSError as err:
            listener.close()
            if err.errno == errno.EADDRINUSE:
                raise NamespaceError(f"host port {port} is already in use on {LOOPBACK}", conflict=True) from err
            raise NamespaceError(f"cannot listen on host port {port}: {err.strerror}") from err
        listener.listen(64)
        self._serve(listener, lambda: self._inside(inner), counted=True)

    def listen_in_namespace(self, port: int) -> None:
        """An allowed host port: listen on the namespace's 127.0.0.1 (the guest's 10.0.2.2) and relay to the host's."""
        listener = self.namespace.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((LOOPBACK, port))
        except OSError as err:
            listener.close()
            raise NamespaceError(f"cannot pass host port {port} into the namespace: {err.strerror}") from err
        listener.listen(64)
        self._serve(listener, lambda: socket.create_connection((LOOPBACK, port), timeout=10))

    def _inside(self, port: int) -> socket.socket:
        sock = self.namespace.socket()
        sock.settimeout(10)
        try:
            sock.connect((LOOPBACK, port))
        except OSError:
            sock.close()
            raise
        return sock

    def _serve(self, listener: socket.socket, connect: Callable[[], socket.socket], counted: bool = False) -> None:
        self.listeners.append(listener)
        self.waiting.append((listener, connect, counted))

    def start(self) -> None:
        """Start relaying. Only after the machine process was forked: its child runs code between fork and exec
        (joining the namespace), which must not meet a lock that one of our threads held at the fork."""
        for listener, connect, counted in self.waiting:
            threading.Thread(target=self._accept_loop, args=(listener, connect, counted), daemon=True).start()
        self.waiting.clear()

    def _accept_loop(self, listener: socket.socket, connect: Callable[[], socket.socket], counted: bool) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError as err:
                if err.errno in (errno.EINTR, errno.ECONNABORTED, errno.EMFILE, errno.ENFILE):
                    time.sleep(0.05)
                    continue
                return  # closed: the machine is going away
            threading.Thread(target=self._relay, args=(client, connect, counted), daemon=True).start()

    def _relay(self, client: socket.socket, connect: Callable[[], socket.socket], counted: bool) -> None:
        if not counted:
            Relays._connect_and_splice(client, connect)
            return
        with self._count:
            self.open_forwards += 1
        try:
            Relays._connect_and_splice(client, connect)
        finally:
            with self._count:
                self.open_forwards -= 1

    @staticmethod
    def _connect_and_splice(client: socket.socket, connect: Callable[[], socket.socket]) -> None:
        try:
            server = connect()
        except OSError:
            client.close()  # nothing listens on the other side (yet): the client sees the connection close
            return
        server.settimeout(None)
        client.settimeout(None)
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _splice(client, server)

    def close(self) -> None:
        for listener in self.listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                listener.close()
        self.listeners.clear()


def start_slirp4netns(binary: str, namespace: Namespace, log: Path, timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Give the namespace a way out (tap0, NAT in user space) that cannot reach the host's loopback. It ends when the
    supervisor does (its exit fd is a pipe the supervisor holds, and PR_SET_PDEATHSIG)."""
    ready_read, ready_write = os.pipe()
    exit_read, exit_write = os.pipe()
    argv = [binary, "--configure", "--mtu=65520", "--disable-host-loopback", f"--ready-fd={ready_write}",
            f"--exit-fd={exit_read}", str(namespace.pid), "tap0"]
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    pass_fds=(ready_write, exit_read), preexec_fn=set_parent_death_signal)
    except OSError as err:
        for fd in (ready_read, ready_write, exit_read, exit_write):
            os.close(fd)
        raise NamespaceError(f"cannot start {binary} (Debian package 'slirp4netns'): {err.strerror}") from err
    os.close(ready_write)
    os.close(exit_read)
    proc.exit_fd = exit_write  # type: ignore[attr-defined]  # held open for its life; closing it ends slirp4netns
    deadline = time.monotonic() + timeout
    try:
        os.set_blocking(ready_read, False)
        while True:
            try:
                if os.read(ready_read, 1):
                    return proc
            except BlockingIOError:
                pass
            code = proc.poll()
            if code is not None:
                raise NamespaceError(f"slirp4netns ended at start with code {code} (is /dev/net/tun open to every "
                                     f"user? see docs/operations.md); its messages are in {log}")
            if time.monotonic() > deadline:
                raise NamespaceError(f"slirp4netns did not configure the namespace in {timeout:g} s; see {log}")
            time.sleep(0.01)
    except BaseException:
        stop_process(proc)
        raise
    finally:
        os.close(ready_read)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """End a helper we started (our child: its PID cannot be reused before we wait for it)."""
    exit_fd = getattr(proc, "exit_fd", None)
    if exit_fd is not None:
        with contextlib.suppress(OSError):
            os.close(exit_fd)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def isolation_problems() -> list[str]:
    """What keeps this host from isolating guests (for ``labkit doctor``): user namespaces, and /dev/net/tun for
    slirp4netns (outbound traffic)."""
    problems = []
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except (OSError, ValueError):
        limit = 1
    if limit < 1:
        problems.append("user namespaces are turned off (sysctl user.max_user_namespaces is 0): machines cannot be "
                        "kept off the host's loopback, so they cannot start")
    if not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        problems.append("/dev/net/tun cannot be opened by this user: machines with outbound traffic cannot start; as "
                        "root run 'chmod 0666 /dev/net/tun' (docs/operations.md)")
    return problems
