"""The one Guest handle: look inside a machine from outside, whatever state it is in.

A running machine is reached over SSH (labkit's own key), falling back to its console when SSH is unreachable. A
stopped machine is read offline from its disk, never booted: only `read_file`, `exists` and `stat` work then. Every
call takes a timeout, and the transport that answered is recorded in ``last_transport`` (and in `Result.transport`).
"""

from __future__ import annotations

import http.client
import shlex
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import TypeVar

from labkit.errors import GuestError, GuestUnavailableError
from labkit.guest.console import ConsoleTransport
from labkit.guest.files import STAT_FORMAT, FileStat, parse_listening_ports, parse_stat_line, parse_wget_status
from labkit.guest.offline import OfflineTransport
from labkit.guest.result import OUTPUT_LIMIT, Result
from labkit.guest.ssh import SshTransport, SshUnreachable

TRANSPORTS = ("ssh", "console", "offline")
LIVE_TRANSPORTS = ("ssh", "console")

T = TypeVar("T")


class Guest:
    """A machine seen from outside.

    ``forwards`` maps guest ports to the host ports they are forwarded to (127.0.0.1), for `http_get`.
    """

    def __init__(self, name: str, ssh: SshTransport | None, console: ConsoleTransport | None,
                 offline: OfflineTransport | None = None, forwards: Mapping[int, int] | None = None) -> None:
        self.name = name
        self.ssh = ssh
        self.console = console
        self.offline = offline
        self.forwards = dict(forwards or {})
        #: the transport that answered the last call: "ssh", "console", "offline" or "host" (http_get via a forward)
        self.last_transport: str | None = None
        self._on_close: list[Callable[[], None]] = []

    @property
    def running(self) -> bool:
        """Whether commands can run (the machine was running when the handle was opened)."""
        return self.ssh is not None or self.console is not None

    def _check(self, transport: str | None) -> None:
        if transport not in (None, *TRANSPORTS):
            raise GuestError(f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")

    def _use_offline(self, transport: str | None) -> bool:
        """Offline when forced, or when nothing live is there (a stopped machine)."""
        self._check(transport)
        if transport == "offline":
            if self.offline is None:
                raise GuestError(f"machine {self.name} is running; stop it to read its disk offline")
            return True
        if transport is None and not self.running:
            if self.offline is None:
                raise GuestUnavailableError(f"machine {self.name} has no way in: no SSH, console or disk to read")
            return True
        return False

    def _offline(self, call: Callable[[OfflineTransport], T]) -> T:
        assert self.offline is not None
        self.last_transport = self.offline.name
        return call(self.offline)

    # ---- commands --------------------------------------------------------------------------------------------------
    def run(self, command: str, timeout: float = 60.0, transport: str | None = None, stdin: bytes = b"") -> Result:
        """Run ``command`` with ``sh -c`` semantics. ``transport`` forces "ssh" or "console".

        Only an unreachable SSH falls back to the console; a command that times out does not run twice.
        """
        if self._use_offline(transport):
            assert self.offline is not None
            return self.offline.run(command, timeout=timeout, stdin=stdin)
        candidates = {"ssh": self.ssh, "console": self.console}
        unreachable: list[str] = []
        for name in [transport] if transport else LIVE_TRANSPORTS:
            chosen = candidates[name]
            if chosen is None:
                continue
            self.last_transport = name  # also when it fails: the result says which way was tried last
            try:
                result = chosen.run(command, timeout=timeout, stdin=stdin)
            except SshUnreachable as err:
                unreachable.append(str(err))
                continue
            except GuestError as err:
                if unreachable:  # both ways failed: say why for each
                    raise GuestUnavailableError(f"labkit could not reach machine {self.name}: "
                                                f"{'; '.join(unreachable)}; console: {err}") from err
                raise
            return result
        if unreachable:
            raise SshUnreachable(f"labkit could not reach machine {self.name}: {'; '.join(unreachable)}")
        raise GuestUnavailableError(f"machine {self.name} has no {transport or 'SSH forward or console'} to use")

    # ---- files -----------------------------------------------------------------------------------------------------
    def read_file(self, path: str, timeout: float = 60.0, transport: str | None = None) -> bytes:
        """The file's bytes. Over SSH and the console, files larger than the output limit are refused."""
        if self._use_offline(transport):
            return self._offline(lambda off: off.read_file(path, timeout))
        result = self.run(f"cat -- {shlex.quote(path)}", timeout=timeout, transport=transport)
        if not result.ok:
            reason = result.err.strip() or f"exit code {result.exit_code}"
            raise GuestError(f"cannot read {path} in {self.name}: {reason}")
        if result.truncated:
            raise GuestError(f"cannot read {path} in {self.name}: it is larger than {OUTPUT_LIMIT} bytes")
        return result.stdout

    def exists(self, path: str, timeout: float = 30.0, transport: str | None = None) -> bool:
        """Whether ``path`` exists (a dangling symbolic link counts: it is there)."""
        if self._use_offline(transport):
            return self._offline(lambda off: off.exists(path, timeout))
        quoted = shlex.quote(path)
        result = self.run(f"test -e {quoted} || test -L {quoted}", timeout=timeout, transport=transport)
        if result.exit_code not in (0, 1):
            raise GuestError(f"cannot tell whether {path} exists in {self.name}: {result.err.strip()}")
        return result.ok

    def stat(self, path: str, timeout: float = 30.0, transport: str | None = None) -> FileStat:
        """Mode, owner, size, mtime and kind of ``path`` (of a symbolic link itself, not its target)."""
        if self._use_offline(transport):
            return self._offline(lambda off: off.stat(path, timeout))
        result = self.run(f"stat -c {shlex.quote(STAT_FORMAT)} -- {shlex.quote(path)}", timeout=timeout,
                          transport=transport)
        if not result.ok:
            reason = result.err.strip() or f"exit code {result.exit_code}"
            raise GuestError(f"cannot stat {path} in {self.name}: {reason}")
        return parse_stat_line(result.out.strip(), path)

    # ---- network ---------------------------------------------------------------------------------------------------
    def listening_ports(self, timeout: float = 30.0, transport: str | None = None) -> set[int]:
        """TCP ports some program listens on inside the guest (IPv4 and IPv6)."""
        if self._use_offline(transport):
            raise GuestUnavailableError(f"machine {self.name} is stopped: it must run to check its ports")
        result = self.run("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true", timeout=timeout, transport=transport)
        return parse_listening_ports(result.out)

    def port_open(self, port: int, timeout: float = 30.0, transport: str | None = None) -> bool:
        """Whether a program listens on TCP ``port`` inside the guest."""
        return port in self.listening_ports(timeout, transport)

    def http_get(self, port: int, path: str = "/", timeout: float = 10.0,
                 transport: str | None = None) -> tuple[int, bytes]:
        """GET ``path`` from the guest's ``port``: (HTTP status, body).

        A forwarded port is fetched from the host through its forward (what a visitor sees); any other port, or a
        forced transport, is fetched inside the guest with its ``wget`` (whose error pages come without a body).
        """
        if not path.startswith("/"):
            path = "/" + path
        if self._use_offline(transport):
            raise GuestUnavailableError(f"machine {self.name} is stopped: it must run to answer HTTP")
        if transport is None and port in self.forwards:
            return self._http_from_host(self.forwards[port], port, path, timeout)
        return self._http_inside(port, path, timeout, transport)

    def _http_from_host(self, host_port: int, port: int, path: str, timeout: float) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{host_port}{path}"
        self.last_transport = "host"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return response.status, _read_bounded(response)
        except urllib.error.HTTPError as err:
            return err.code, _read_bounded(err)
        except (OSError, ValueError, http.client.HTTPException) as err:
            raise GuestError(f"no HTTP answer from port {port} of {self.name} (forwarded to {url}): {err}") from err

    def _http_inside(self, port: int, path: str, timeout: float, transport: str | None) -> tuple[int, bytes]:
        # busybox's own `wget -T` crashes in the tiny image, so `timeout` bounds it instead.
        url = shlex.quote(f"http://127.0.0.1:{port}{path}")
        seconds = max(1, int(timeout))
        result = self.run(f"timeout {seconds} wget -q -S -O - {url}", timeout=timeout + 10, transport=transport)
        status = parse_wget_status(result.err)
        if status is None:
            raise GuestError(f"no HTTP answer from port {port} inside {self.name}: "
                             f"{result.err.strip()[:200] or f'wget exit code {result.exit_code}'}")
        return status, result.stdout

    # ---- lifetime --------------------------------------------------------------------------------------------------
    def on_close(self, action: Callable[[], None]) -> None:
        """Run ``action`` when the handle closes (the public API closes the database it opened)."""
        self._on_close.append(action)

    def close(self) -> None:
        for transport in (self.ssh, self.console, self.offline):
            if transport is not None:
                transport.close()
        while self._on_close:
            self._on_close.pop()()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        ways = [t.name for t in (self.ssh, self.console, self.offline) if t is not None]
        return f"<Guest {self.name} via {'/'.join(ways) or 'nothing'}>"


def _read_bounded(response: object) -> bytes:
    """At most the output limit of a response body: a page is evidence, not a download."""
    return response.read(OUTPUT_LIMIT)  # type: ignore[attr-defined]
