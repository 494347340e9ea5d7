"""An in-memory stand-in for a guest machine, for the grading unit tests only.

It stands in for the *machine* (its files, commands, ports and pages), not for the grading code under test: the checks
and the runner run for real against it. Tests that reach real guests live in tests/guests/.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from labkit.errors import GuestError
from labkit.guest.files import FileStat
from labkit.guest.result import Result

PASSWD = b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
GROUP = b"root:x:0:\nalice:x:1000:\nstaff:x:50:alice\n"


@dataclass
class StandInGuest:
    name: str = "box"
    files: dict[str, tuple[bytes, FileStat]] = field(default_factory=dict)
    commands: dict[str, Result | Exception] = field(default_factory=dict)
    ports: set[int] = field(default_factory=set)
    pages: dict[tuple[int, str], tuple[int, bytes]] = field(default_factory=dict)
    forwards: dict[int, int] = field(default_factory=dict)
    ssh: object | None = "ssh"
    hang: float = 0.0  # a command sleeps this long (bounded by its timeout), like a slow guest
    last_transport: str | None = None
    calls: list[tuple[str, object, float, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.add_file("/etc/passwd", PASSWD)
        self.add_file("/etc/group", GROUP)

    def add_file(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0,
                 kind: str = "file") -> None:
        self.files[path] = (data, FileStat(mode, uid, gid, len(data), 0, kind))

    def _record(self, method: str, arg: object, timeout: float, transport: str | None = None) -> None:
        self.calls.append((method, arg, timeout, transport))
        self.last_transport = transport or "ssh"

    def run(self, command: str, timeout: float = 60.0, transport: str | None = None, stdin: bytes = b"") -> Result:
        self._record("run", command, timeout, transport)
        if self.hang:
            time.sleep(min(self.hang, timeout))
            if self.hang > timeout:
                raise GuestError(f"command timed out after {timeout:g} s over SSH: {command[:80]!r}")
        answer = self.commands.get(command, Result(127, b"", b"sh: not found\n", 0.0, "ssh"))
        if isinstance(answer, Exception):
            raise answer
        return answer

    def read_file(self, path: str, timeout: float = 60.0, transport: str | None = None) -> bytes:
        self._record("read_file", path, timeout, transport)
        if path not in self.files:
            raise GuestError(f"cannot read {path} in {self.name}: no such file")
        return self.files[path][0]

    def exists(self, path: str, timeout: float = 30.0, transport: str | None = None) -> bool:
        self._record("exists", path, timeout, transport)
        return path in self.files

    def stat(self, path: str, timeout: float = 30.0, transport: str | None = None) -> FileStat:
        self._record("stat", path, timeout, transport)
        if path not in self.files:
            raise GuestError(f"cannot stat {path} in {self.name}: no such file")
        return self.files[path][1]

    def listening_ports(self, timeout: float = 30.0, transport: str | None = None) -> set[int]:
        self._record("listening_ports", None, timeout, transport)
        return set(self.ports)

    def port_open(self, port: int, timeout: float = 30.0, transport: str | None = None) -> bool:
        self._record("port_open", port, timeout, transport)
        return port in self.ports

    def http_get(self, port: int, path: str = "/", timeout: float = 10.0,
                 transport: str | None = None) -> tuple[int, bytes]:
        self._record("http_get", (port, path), timeout, transport)
        if transport is None and port in self.forwards:
            self.last_transport = "host"
        if (port, path) not in self.pages:
            if port not in self.ports:
                raise GuestError(f"no HTTP answer from port {port} inside {self.name}")
            return 404, b"not found"
        return self.pages[(port, path)]
