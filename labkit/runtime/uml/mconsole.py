"""A client for UML's management console (mconsole): pause, resume, clean shutdown and queries of a running guest.

The wire format is the kernel's (arch/um/drivers/mconsole_user.c, mconsole.h): one host-endian datagram
``u32 magic 0xcafebabe, u32 version 2, u32 len, char data[512]`` per request, answered with one or more datagrams
``u32 err, u32 more, u32 len, data`` sent back to the request's source address. The client therefore binds its own
datagram socket, to a path beside the mconsole socket (removed when the client closes). Not to an abstract address:
those belong to a network namespace, and the guest runs in a private one (netns.py), from which it could not answer.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import RuntimeBackendError

MCONSOLE_MAGIC = 0xCAFEBABE
MCONSOLE_VERSION = 2
#: Size of the data field on the wire; the command must be shorter (the kernel NUL-terminates it).
MCONSOLE_MAX_DATA = 512

_REQUEST = struct.Struct(f"=III{MCONSOLE_MAX_DATA}s")
_REPLY_HEADER = struct.Struct("=III")
#: Largest datagram a reply can be (header plus a full data field).
_REPLY_MAX = _REPLY_HEADER.size + MCONSOLE_MAX_DATA


class MconsoleError(RuntimeBackendError):
    """The mconsole could not be reached, or the guest answered a request with an error."""


@dataclass(frozen=True)
class Reply:
    """One decoded reply datagram."""

    err: int
    more: bool
    data: str


def pack_request(command: str) -> bytes:
    """Encode ``command`` as one request datagram; refuse what the kernel would reject as too large."""
    raw = command.encode()
    if len(raw) >= MCONSOLE_MAX_DATA:
        raise MconsoleError(f"mconsole command {command[:40]!r}... is {len(raw)} bytes; the limit is "
                            f"{MCONSOLE_MAX_DATA - 1}")
    return _REQUEST.pack(MCONSOLE_MAGIC, MCONSOLE_VERSION, len(raw), raw)


def unpack_reply(datagram: bytes) -> Reply:
    """Decode one reply datagram (the kernel may send a trailing NUL, which is dropped)."""
    if len(datagram) < _REPLY_HEADER.size:
        raise MconsoleError(f"mconsole reply is {len(datagram)} bytes, shorter than its "
                            f"{_REPLY_HEADER.size}-byte header")
    err, more, length = _REPLY_HEADER.unpack_from(datagram)
    body = datagram[_REPLY_HEADER.size:_REPLY_HEADER.size + length]
    return Reply(err=err, more=bool(more), data=body.rstrip(b"\0").decode(errors="replace"))


class MconsoleClient:
    """Talks to one guest's mconsole socket (``<uml_dir>/<umid>/mconsole``); a context manager, or call close()."""

    def __init__(self, socket_path: Path | str, timeout: float = 5.0) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._bound: Path | None = None

    def __enter__(self) -> MconsoleClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._bound is not None:
            with contextlib.suppress(OSError):
                self._bound.unlink()
            self._bound = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Beside the mconsole socket, with a name no longer than "mconsole": the path fits wherever that one does.
            bound = self.socket_path.with_name(f"c{secrets.token_hex(3)}")
            try:
                sock.bind(str(bound))
            except OSError as err:
                sock.close()
                raise MconsoleError(f"cannot make a reply socket beside mconsole {self.socket_path} (is the machine "
                                    f"running?): {err}") from err
            self._bound = bound
            sock.settimeout(self.timeout)
            self._sock = sock
        return self._sock

    def request(self, command: str) -> str:
        """Send ``command`` and return the whole (possibly multi-part) answer; raise MconsoleError on err != 0."""
        sock = self._socket()
        try:
            sock.sendto(pack_request(command), str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as err:
            raise MconsoleError(f"mconsole {self.socket_path} is not there: is the machine running?") from err
        except OSError as err:
            raise MconsoleError(f"cannot send {command!r} to mconsole {self.socket_path}: {err}") from err
        parts: list[str] = []
        while True:
            try:
                reply = unpack_reply(sock.recv(_REPLY_MAX))
            except TimeoutError as err:
                raise MconsoleError(f"mconsole {self.socket_path} did not answer {command!r} within "
                                    f"{self.timeout:g} s") from err
            except OSError as err:
                raise MconsoleError(f"reading the answer to {command!r} from {self.socket_path} failed: {err}") from err
            parts.append(reply.data)
            if reply.err:
                raise MconsoleError(f"the guest refused mconsole {command!r}: {''.join(parts).strip() or 'error'}")
            if not reply.more:
                return "".join(parts)

    # The verbs, one per mconsole command.

    def version(self) -> str:
        return self.request("version")

    def halt(self) -> None:
        """End the guest at once, without syncing its disks."""
        self.request("halt")

    def cad(self) -> None:
        """Press Ctrl-Alt-Del in the guest; its init decides what happens (usually a clean poweroff)."""
        self.request("cad")

    def reboot(self) -> None:
        self.request("reboot")

    def stop(self) -> None:
        """Pause the whole guest until go()."""
        self.request("stop")

    def go(self) -> None:
        """Resume a guest paused by stop()."""
        self.request("go")

    def sysrq(self, key: str) -> str:
        if len(key) != 1 or not key.isalnum():
            raise MconsoleError(f"sysrq key must be one letter or digit, not {key!r}")
        return self.request(f"sysrq {key}")

    def config(self, device: str, value: str | None = None) -> str:
        """Query a device's configuration, or with ``value`` add/change it (``config eth1=slirp,...``)."""
        if any(c.isspace() for c in device) or not device:
            raise MconsoleError(f"mconsole device name {device!r} is empty or holds white space")
        return self.request(f"config {device}" if value is None else f"config {device}={value}")

    def proc(self, path: str) -> str:
        """The contents of the guest's /proc/<path>."""
        return self.request(f"proc {path.lstrip('/')}")
