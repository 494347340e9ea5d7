"""The process that runs a lab's grader.py inside its sandbox, and the wire format it shares with labkit.

labkit (labkit/grading/sandbox.py) starts this file with Debian's ``/usr/bin/python3 -I`` inside a bubblewrap
sandbox that holds only /usr, labkit's package and the lab folder, all read-only. It talks to labkit over one
inherited socket, one JSON object per line:

- labkit sends ``{"function", "params", "machines"}`` first;
- every Guest call of the grading function goes out as ``{"call", "machine", "args"}`` and labkit answers with
  ``{"value", "transport"}`` or ``{"error": "guest" | "labkit", "message"}``: labkit runs the call on the real handle,
  so the sandbox never holds a key, a password or a socket of the guest;
- the last line is ``{"done": {"points", "feedback"}}``, ``{"done": {"bad": repr}}`` or ``{"failed", "message"}``.

This module imports only the standard library and labkit's plain value types (errors, Result, FileStat), which is
all Debian's Python has: the sandbox has no site-packages of labkit's own environment.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import resource
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run by path in the sandbox, where labkit's package is bound read-only
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from labkit.errors import GuestError, LabkitError
from labkit.guest.files import FileStat
from labkit.guest.result import Result

#: The Guest methods a grader may call, with their leading arguments (then ``timeout`` and ``transport``).
METHODS: dict[str, tuple[str, ...]] = {
    "run": ("command",),
    "read_file": ("path",),
    "exists": ("path",),
    "stat": ("path",),
    "listening_ports": (),
    "port_open": ("port",),
    "http_get": ("port", "path"),
}
#: The longest line either side accepts: a command's two streams of 256 KiB each, in base64, fit well.
MAX_LINE = 4 << 20


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)


def encode_value(method: str, value: Any) -> object:
    """A Guest call's answer as plain JSON (labkit's side)."""
    if method == "run":
        return {"exit_code": value.exit_code, "stdout": encode_bytes(value.stdout),
                "stderr": encode_bytes(value.stderr), "duration": value.duration, "transport": value.transport,
                "truncated": value.truncated}
    if method == "read_file":
        return encode_bytes(value)
    if method == "stat":
        return {"mode": value.mode, "uid": value.uid, "gid": value.gid, "size": value.size, "mtime": value.mtime,
                "kind": value.kind}
    if method == "listening_ports":
        return sorted(int(port) for port in value)
    if method == "http_get":
        status, body = value
        return [int(status), encode_bytes(body)]
    return bool(value)  # exists, port_open


def decode_value(method: str, data: Any) -> Any:
    """The answer as the Guest handle gives it (the sandbox's side)."""
    if method == "run":
        return Result(int(data["exit_code"]), decode_bytes(data["stdout"]), decode_bytes(data["stderr"]),
                      float(data["duration"]), str(data["transport"]), bool(data["truncated"]))
    if method == "read_file":
        return decode_bytes(data)
    if method == "stat":
        return FileStat(int(data["mode"]), int(data["uid"]), int(data["gid"]), int(data["size"]),
                        int(data["mtime"]), str(data["kind"]))
    if method == "listening_ports":
        return {int(port) for port in data}
    if method == "http_get":
        return int(data[0]), decode_bytes(data[1])
    return bool(data)


class Channel:
    """JSON lines over the inherited socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("rb")

    def send(self, message: Mapping[str, object]) -> None:
        self._sock.sendall(json.dumps(message, default=str).encode() + b"\n")

    def receive(self) -> Any:
        line = self._reader.readline(MAX_LINE)
        if not line.endswith(b"\n"):
            raise SystemExit("labkit closed the grading channel")
        return json.loads(line)


class SandboxGuest:
    """What a grading function gets for each machine: the Guest handle's methods, run by labkit outside.

    The same calls and answers as `labkit.guest.handle.Guest` (docs/grading.md); each call is bounded by the check's
    time limit on labkit's side.
    """

    def __init__(self, channel: Channel, name: str, forwards: Mapping[int, int], inside_transport: str) -> None:
        self._channel = channel
        self.name = name
        self.forwards = dict(forwards)
        self.inside_transport = inside_transport
        #: the transport that answered the last call, as on the real handle
        self.last_transport: str | None = None

    def _call(self, method: str, **args: Any) -> Any:
        for key in ("timeout",):
            if args.get(key) is not None and (isinstance(args[key], bool) or not isinstance(args[key], int | float)):
                raise TypeError(f"{method}: timeout must be a number of seconds")
        if args.get("transport") is not None and not isinstance(args["transport"], str):
            raise TypeError(f"{method}: transport must be a string")
        self._channel.send({"call": method, "machine": self.name, "args": args})
        answer = self._channel.receive()
        self.last_transport = answer.get("transport") or self.last_transport
        if "error" in answer:
            error = GuestError if answer["error"] == "guest" else LabkitError
            raise error(str(answer.get("message", "")))
        return decode_value(method, answer["value"])

    @staticmethod
    def _text(value: object, what: str) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{what} must be a string, not {type(value).__name__}")
        return value

    @staticmethod
    def _port(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"port must be an integer, not {type(value).__name__}")
        return value

    def run(self, command: str, timeout: float | None = None, transport: str | None = None,
            stdin: bytes = b"") -> Result:
        if not isinstance(stdin, bytes | bytearray):
            raise TypeError("stdin must be bytes")
        return self._call("run", command=self._text(command, "command"), timeout=timeout, transport=transport,
                          stdin=encode_bytes(bytes(stdin)))

    def read_file(self, path: str, timeout: float | None = None, transport: str | None = None) -> bytes:
        return self._call("read_file", path=self._text(path, "path"), timeout=timeout, transport=transport)

    def exists(self, path: str, timeout: float | None = None, transport: str | None = None) -> bool:
        return self._call("exists", path=self._text(path, "path"), timeout=timeout, transport=transport)

    def stat(self, path: str, timeout: float | None = None, transport: str | None = None) -> FileStat:
        return self._call("stat", path=self._text(path, "path"), timeout=timeout, transport=transport)

    def listening_ports(self, timeout: float | None = None, transport: str | None = None) -> set[int]:
        return self._call("listening_ports", timeout=timeout, transport=transport)

    def port_open(self, port: int, timeout: float | None = None, transport: str | None = None) -> bool:
        return self._call("port_open", port=self._port(port), timeout=timeout, transport=transport)

    def http_get(self, port: int, path: str = "/", timeout: float | None = None,
                 transport: str | None = None) -> tuple[int, bytes]:
        return self._call("http_get", port=self._port(port), path=self._text(path, "path"), timeout=timeout,
                          transport=transport)

    def __repr__(self) -> str:
        return f"<Guest {self.name} (through labkit)>"


def _summary(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:500]


def _outcome(channel: Channel, grader: str) -> dict[str, object]:
    """Import grader.py, call the function, and say how it went (never raises for the grader's own faults)."""
    hello = channel.receive()
    name = str(hello["function"])
    guests = {machine: SandboxGuest(channel, machine, {int(g): int(h) for g, h in info["forwards"]},
                                    str(info["inside_transport"]))
              for machine, info in hello["machines"].items()}
    try:
        spec = importlib.util.spec_from_file_location("grader", grader)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except MemoryError:
        return {"failed": "memory", "message": "importing grader.py"}
    except BaseException as err:  # SystemExit and KeyboardInterrupt too: the grader's fault, said in one line
        return {"failed": "import", "message": _summary(err)}
    function = getattr(module, name, None)
    if not callable(function) or isinstance(function, type):
        return {"failed": "function", "message": name}
    try:
        value = function(guests, dict(hello["params"]))
    except MemoryError:
        return {"failed": "memory", "message": name}
    except GuestError as err:
        return {"failed": "guest", "message": str(err)}
    except LabkitError as err:
        return {"failed": "labkit", "message": str(err)}
    except BaseException as err:
        return {"failed": "raised", "message": _summary(err)}
    if (isinstance(value, tuple | list) and len(value) == 2 and isinstance(value[0], int | float)
            and not isinstance(value[0], bool)):
        return {"done": {"points": float(value[0]), "feedback": "" if value[1] is None else str(value[1])}}
    return {"done": {"bad": repr(value)[:200]}}


def main(argv: list[str]) -> int:
    """``grader_process.py FD MEMORY GRADER``: limit the memory, then grade over the socket on FD."""
    fd, memory, grader = int(argv[1]), int(argv[2]), argv[3]
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))  # not enforced for root's processes; the PID namespace is
    channel = Channel(socket.socket(fileno=fd))
    channel.send({"ready": True})
    channel.send(_outcome(channel, grader))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
