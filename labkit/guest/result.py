"""What running a command in a guest returns, with output kept within bounds."""

from __future__ import annotations

from dataclasses import dataclass

#: Each stream keeps at most this many bytes: the first half and the last half, with a note where it cut.
OUTPUT_LIMIT = 256 * 1024


@dataclass(frozen=True)
class Result:
    """The outcome of one command: exit code, both streams, how long it took, and how it ran."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    duration: float
    transport: str
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def out(self) -> str:
        """stdout as text; invalid UTF-8 is replaced, never raised."""
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")


class BoundedBuffer:
    """Keeps the head and the tail of a stream that may be far larger than we want to hold."""

    def __init__(self, limit: int = OUTPUT_LIMIT) -> None:
        self.limit = limit
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit // 2 - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data:
            self._tail += data
            if len(self._tail) > self.limit // 2:
                del self._tail[: len(self._tail) - self.limit // 2]

    @property
    def truncated(self) -> bool:
        return self.total > len(self._head) + len(self._tail)

    def getvalue(self) -> bytes:
        if not self.truncated:
            return bytes(self._head + self._tail)
        cut = self.total - len(self._head) - len(self._tail)
        return bytes(self._head) + f"\n[... labkit cut {cut} bytes ...]\n".encode() + bytes(self._tail)
