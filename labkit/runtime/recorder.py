"""Console recordings in asciicast v2, written by the console supervisor: one ``.cast`` file per client connection.

A client of the console socket may start with one *hello* line (`hello_line`): ``NUL "labkit-console " JSON LF``
naming its source (browser, cli, grader), its user and its terminal size. The supervisor takes it off the stream (the
guest never sees it) and puts it in the recording's header; a client that sends none is recorded as "unknown", 80×24,
after `HELLO_WAIT` seconds. The file (https://docs.asciinema.org/manual/asciicast/v2/) is the header line, then
``[seconds, "o", text]`` for what the guest printed and ``[seconds, "i", text]`` for what this client typed. A
recording stops at its size cap with a ``"m"`` (marker) event labelled `TRUNCATED`.

Files live in the machine's own recordings folder (under LABKIT_HOME, never the run folder, which goes at stop), are
named from the time and the source only (nothing a user typed becomes a path), and are readable by their owner only.
`prune` applies the retention policy (age, total size per machine); the supervisor runs it at every start.

Imported by every machine's supervisor: the standard library's lightest modules only (docs/runtime.md, "Memory").
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import time

#: the hello line's first bytes; a NUL first keeps it from looking like anything a person types
HELLO_PREFIX = b"\x00labkit-console "
#: a hello longer than this is not one
HELLO_LIMIT = 4096
#: how long a new client has to say hello before it is recorded with the defaults
HELLO_WAIT = 2.0
#: guest output kept for a client that has not said hello yet
PENDING_LIMIT = 1 << 18
SOURCES = ("browser", "cli", "grader")
DEFAULT_SIZE = (80, 24)
MAX_COLS, MAX_ROWS = 1000, 500
#: the label of the marker event that ends a recording cut at its size cap
TRUNCATED = "recording truncated (size cap)"
#: room kept under the cap for the truncation events
_RESERVE = 256
#: files changed this recently may still be written by a live session: the size policy leaves them alone
_LIVE_SECONDS = 120


def hello_line(source: str, user: str, cols: int = DEFAULT_SIZE[0], rows: int = DEFAULT_SIZE[1],
               read_only: bool = False) -> bytes:
    """What a console client sends first so that its recording says who and what it is."""
    return HELLO_PREFIX + json.dumps({"source": source, "user": user, "cols": cols, "rows": rows,
                                      "read_only": read_only}).encode() + b"\n"


def _whole(value: object, default: int, limit: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit else default


def header(machine: str, started: float, hello: dict[str, object] | None) -> dict[str, object]:
    """The cast's header for a session of ``machine`` that began at ``started`` (a Unix time), from the hello."""
    hello = hello or {}
    source = hello.get("source") if hello.get("source") in SOURCES else "unknown"
    user = str(hello.get("user") or "")[:64] or "unknown"
    read_only = hello.get("read_only") is True
    return {"version": 2, "width": _whole(hello.get("cols"), DEFAULT_SIZE[0], MAX_COLS),
            "height": _whole(hello.get("rows"), DEFAULT_SIZE[1], MAX_ROWS), "timestamp": int(started),
            "title": f"{machine} · {source} · {user}" + (" (watching)" if read_only else ""),
            "env": {"TERM": "xterm-256color", "LABKIT_MACHINE": machine, "LABKIT_SOURCE": str(source),
                    "LABKIT_USER": user, "LABKIT_READ_ONLY": "1" if read_only else "0"}}


class CastWriter:
    """Appends events to one cast file, unbuffered (a crash loses nothing), and stops at ``max_bytes``."""

    def __init__(self, path: str, head: dict[str, object], started: float, max_bytes: int) -> None:
        self.path = path
        self.started = started
        self.max_bytes = max_bytes
        self.truncated = False
        self.closed = False
        self._decoders = {kind: codecs.getincrementaldecoder("utf-8")("replace") for kind in ("o", "i")}
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.size = 0
        self._write(json.dumps(head, ensure_ascii=False) + "\n")

    def _write(self, line: str) -> None:
        data = line.encode()
        try:
            os.write(self.fd, data)
        except OSError:  # a full disk ends the recording, never the machine's console
            self.close()
            return
        self.size += len(data)

    def event(self, kind: str, data: bytes, now: float) -> None:
        """One output ("o") or input ("i") event; UTF-8 split across reads is joined, invalid bytes are replaced."""
        if self.closed or self.truncated:
            return
        text = self._decoders[kind].decode(data)
        if not text:
            return
        line = json.dumps([round(max(0.0, now - self.started), 6), kind, text], ensure_ascii=False) + "\n"
        if self.size + len(line.encode()) + _RESERVE > self.max_bytes:
            self.truncated = True
            at = round(max(0.0, now - self.started), 6)
            self._write(json.dumps([at, "o", "\r\n[labkit: recording stopped at its size cap]\r\n"]) + "\n")
            self._write(json.dumps([at, "m", TRUNCATED]) + "\n")
            return
        self._write(line)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)


class SessionRecorder:
    """The recording of one console client: holds its first bytes until they are (or cannot be) a hello, then
    writes a `CastWriter` in ``folder``. ``config`` is the spec's ``recording`` entry (folder, machine, max_bytes)."""

    def __init__(self, config: dict[str, object], now: float) -> None:
        self.folder = str(config["folder"])
        self.machine = str(config.get("machine") or "machine")
        self.max_bytes = int(config.get("max_bytes") or 0)  # type: ignore[call-overload]
        self.started = now
        self.pending = True
        self.head = bytearray()
        self.early: list[tuple[float, bytes]] = []
        self.early_bytes = 0
        self.writer: CastWriter | None = None

    def from_client(self, data: bytes, now: float) -> bytes:
        """The client's bytes for the guest (a hello taken off), recorded as input."""
        if self.pending:
            self.head += data
            if self.head.startswith(HELLO_PREFIX):
                end = self.head.find(b"\n")
                if end < 0:
                    if len(self.head) <= HELLO_LIMIT:
                        return b""
                    self._begin(None, now)
                    return b""  # a broken hello: dropped, never typed into the guest
                try:
                    hello = json.loads(self.head[len(HELLO_PREFIX):end].decode())
                except (ValueError, UnicodeDecodeError, RecursionError):
                    hello = None
                data = bytes(self.head[end + 1:])
                self._begin(hello if isinstance(hello, dict) else None, now)
            elif HELLO_PREFIX.startswith(bytes(self.head)):
                return b""  # maybe the start of a hello: wait for the rest
            else:
                data = bytes(self.head)
                self._begin(None, now)
        if data and self.writer is not None:
            self.writer.event("i", data, now)
        return data

    def output(self, data: bytes, now: float) -> None:
        """What the guest printed while this client was attached."""
        if self.pending:
            self.early.append((now, data))
            self.early_bytes += len(data)
            if self.early_bytes > PENDING_LIMIT:
                self._begin(None, now)
        elif self.writer is not None:
            self.writer.event("o", data, now)

    def tick(self, now: float) -> None:
        """Called from the supervisor's loop: a client silent for `HELLO_WAIT` is recorded with the defaults."""
        if self.pending and now - self.started >= HELLO_WAIT:
            self._begin(None, now)

    def close(self, now: float) -> None:
        if self.pending:
            self._begin(None, now)
        if self.writer is not None:
            self.writer.close()

    def _begin(self, hello: dict[str, object] | None, now: float) -> None:
        self.pending = False
        self.head.clear()
        early, self.early = self.early, []
        if self.max_bytes <= 0:
            return
        head = header(self.machine, self.started, hello)
        try:
            os.makedirs(self.folder, mode=0o700, exist_ok=True)
            self.writer = self._open(head)
        except OSError:
            self.writer = None
            return
        for at, data in early:
            self.writer.event("o", data, at)

    def _open(self, head: dict[str, object]) -> CastWriter:
        env = head["env"]
        source = env["LABKIT_SOURCE"] if isinstance(env, dict) else "unknown"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.started))
        for n in range(1, 1000):
            path = os.path.join(self.folder, f"{stamp}-{source}-{os.getpid()}-{n}.cast")
            try:
                return CastWriter(path, head, self.started, self.max_bytes)
            except FileExistsError:
                continue
        raise OSError(f"no free recording name in {self.folder}")


def prune(folder: str, keep_days: float, keep_bytes: int, now: float | None = None) -> list[str]:
    """Apply the retention policy to one machine's recordings: remove those older than ``keep_days`` (0: no age
    limit), then the oldest until the rest fit in ``keep_bytes`` (0: no size limit). Returns the removed paths."""
    now = time.time() if now is None else now
    try:
        entries = [(e.stat().st_mtime, e.stat().st_size, e.path) for e in os.scandir(folder)
                   if e.name.endswith(".cast") and e.is_file(follow_symlinks=False)]
    except OSError:
        return []
    entries.sort()
    removed: list[str] = []
    total = sum(size for _, size, _ in entries)
    for mtime, size, path in entries:
        too_old = keep_days > 0 and now - mtime > keep_days * 86400
        too_big = keep_bytes > 0 and total > keep_bytes and now - mtime > _LIVE_SECONDS
        if too_old or too_big:
            try:
                os.unlink(path)
            except OSError:
                continue
            removed.append(path)
            total -= size
    return removed
