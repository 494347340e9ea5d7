"""Packet capture on a lab network: a ``vde_plug`` on the network's switch, its frames written out as a pcap file.

``vde_plug SWITCH_DIR`` with no command joins the switch as one more port and copies frames between the switch and
its stdin/stdout as a stream in which every frame is a 2-byte big-endian length followed by the frame (checked with
Debian 12's vde2 2.3.2 / vdeplug 4). labkit reads its stdout and never writes to its stdin, a pipe it keeps open
(EOF there ends the plug), so the capture never puts a frame on the lab network.

A switch sends a unicast frame only to the port that learned the destination MAC, so a plug sees the traffic between
two other ports only when the switch is a hub: lab networks run as hubs (`VdeNetworks.hub`, docs/runtime.md
"Packet capture" says why that costs nothing that matters in a lab of a few machines).

The pcap format is small and exact: a 24-byte global header (magic 0xa1b2c3d4, version 2.4, snap length, link type
1 = Ethernet), then per frame a 16-byte record header (seconds, microseconds, captured length, original length) and
the bytes. Written here in little-endian, which every reader (tcpdump, Wireshark) detects from the magic.

Each plug is a process of its own (new session, so a Ctrl-C in the terminal reaches labkit, which ends it), recorded
in ``<network folder>/taps/<pid>.json`` with its start time, its owner and its deadline, and ended by that PID when
the capture ends (duration, size cap, interrupted reader). A reader that dies leaves the plug with EOF on stdin, and
the plug exits; `TapRecords.live` removes the record of a plug that is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from labkit.atomic import write_atomic
from labkit.errors import RuntimeBackendError
from labkit.runtime.process import ProcessRecord

#: pcap's magic (microsecond timestamps), version 2.4, link type Ethernet
PCAP_MAGIC = 0xA1B2C3D4
LINKTYPE_ETHERNET = 1
#: an Ethernet frame on a VDE switch is at most this long (the stream's length field is 16 bits)
SNAPLEN = 65535
PCAP_HEADER_BYTES = 24
RECORD_HEADER_BYTES = 16


def pcap_header(snaplen: int = SNAPLEN) -> bytes:
    """pcap's global header: magic, version 2.4, GMT offset 0, accuracy 0, snap length, link type Ethernet."""
    return struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def pcap_record(stamp: float, frame: bytes, snaplen: int = SNAPLEN) -> bytes:
    """One packet record: its time, the captured and the original length, and the (possibly cut) frame."""
    seconds = int(stamp)
    micros = min(int((stamp - seconds) * 1_000_000), 999_999)
    data = frame[:snaplen]
    return struct.pack("<IIII", seconds, micros, len(data), len(frame)) + data


class FrameStream:
    """Splits ``vde_plug``'s byte stream into frames: a 2-byte big-endian length, then that many bytes."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The frames completed by ``data`` (a frame cut across two reads waits for the rest)."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= 2:
            length = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + length:
                break
            frames.append(bytes(self._buffer[2:2 + length]))
            del self._buffer[:2 + length]
        return frames


@dataclass(frozen=True)
class TapRecord:
    """A running capture plug: its process, who asked for it, and when it must end at the latest."""

    pid: int
    start_time: int
    owner: str
    until: float

    def process(self) -> ProcessRecord:
        return ProcessRecord(self.pid, self.start_time)

    def to_json(self) -> str:
        return json.dumps({"pid": self.pid, "start_time": self.start_time, "owner": self.owner, "until": self.until})

    @classmethod
    def read(cls, path: Path) -> TapRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(int(data["pid"]), int(data["start_time"]), str(data["owner"]), float(data["until"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


class TapRecords:
    """The ``taps/`` folder of a lab network: one JSON record per running capture plug, named by its PID."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, pid: int) -> Path:
        return self.folder / f"{pid}.json"

    def live(self) -> list[TapRecord]:
        """The plugs that still run; records of plugs that are gone (or past their deadline and ended) are removed."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(self.folder.glob("*.json")):
                record = TapRecord.read(entry)
                if record is not None and record.process().alive():
                    if time.time() > record.until + 5:  # its reader died without ending it: end it by its PID
                        end_plug(record.process())
                    else:
                        found.append(record)
                        continue
                entry.unlink(missing_ok=True)
        return found

    def end_all(self) -> None:
        """End every recorded plug by its PID (the network is stopping)."""
        for record in self.live():
            end_plug(record.process())
            self.path(record.pid).unlink(missing_ok=True)


def end_plug(process: ProcessRecord, timeout: float = 2.0) -> None:
    """SIGTERM the plug (it exits at once), SIGKILL it if it does not, and collect it if it was our child."""
    if process.send(signal.SIGTERM) and not process.wait_gone(timeout):
        process.send(signal.SIGKILL)
        process.wait_gone(timeout)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(process.pid, os.WNOHANG)


def _polling(pid: int) -> bool:
    """Whether the plug waits in its main loop (poll on the switch and stdin): it has joined the switch."""
    try:
        return "poll" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


class Tap:
    """One capture plug on a running switch: frames as they pass, until the caller closes it (by PID)."""

    def __init__(self, binary: str, switch_dir: Path, records: TapRecords, owner: str, until: float,
                 log: Path) -> None:
        self.records = records
        records.folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(log, "ab") as errors:
                # stdin: a pipe labkit holds and never writes (EOF would end the plug); a session of its own, so a
                # Ctrl-C in the terminal reaches labkit only, which then ends the plug by its PID.
                self._proc = subprocess.Popen([binary, str(switch_dir)], stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=errors, start_new_session=True)
        except OSError as err:
            raise RuntimeBackendError(f"cannot start the capture plug {binary}: {err}") from err
        try:
            self.record = TapRecord(self._proc.pid, ProcessRecord.of(self._proc.pid).start_time, owner, until)
            write_atomic(records.path(self._proc.pid), self.record.to_json())
        except BaseException:
            self._proc.kill()
            self._proc.wait()
            raise
        self._stream = FrameStream()
        #: whether the switch repeats every frame to this plug (a hub), or only broadcasts and frames for it
        self.sees_all = True

    def wait_joined(self, timeout: float = 5.0) -> None:
        """Return once the plug has joined the switch (so the capture's time counts from there)."""
        deadline = time.monotonic() + timeout
        while not _polling(self._proc.pid):
            if self._proc.poll() is not None:
                self.close()
                raise RuntimeBackendError(f"the capture plug exited at start with code {self._proc.returncode}")
            if time.monotonic() > deadline:
                return  # no wchan on this kernel: the plug joins within milliseconds all the same
            time.sleep(0.005)

    def frames(self, deadline: float, stop: threading.Event | None = None) -> Iterator[tuple[float, bytes]]:
        """(time, frame) for every frame that passes until ``deadline`` (monotonic), ``stop`` is set (within 0.2 s:
        a Ctrl-C handler sets it) or the switch goes away."""
        assert self._proc.stdout is not None
        out = self._proc.stdout.fileno()
        while stop is None or not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([out], [], [], min(left, 0.2))
            if not ready:
                continue
            data = os.read(out, 65536)
            if not data:  # the switch stopped: the plug exited
                return
            stamp = time.time()
            for frame in self._stream.feed(data):
                yield stamp, frame

    def close(self) -> None:
        """End the plug by its PID and remove its record; safe to call twice."""
        end_plug(self.record.process())
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.records.path(self._proc.pid).unlink(missing_ok=True)

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class CaptureStats:
    """What a capture got, filled in as it runs: packets and bytes written, and why it stopped."""

    packets: int = 0
    bytes: int = 0
    #: "duration", "size" (the cap was reached), "network" (the switch stopped) or "interrupted"
    stopped_by: str = ""


class PcapStream:
    """The capture as pcap bytes, a chunk per frame (`pcap_chunks`); `close` ends the plug by its PID even when
    nobody read a byte (a generator's ``finally`` runs only once it has started)."""

    def __init__(self, tap: Tap, chunks: Generator[bytes, None, None]) -> None:
        self._tap = tap
        self._chunks = chunks

    def __iter__(self) -> PcapStream:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()
        self._tap.close()


def pcap_chunks(tap: Tap, seconds: float, max_bytes: int, stats: CaptureStats,
                stop: threading.Event | None = None) -> PcapStream:
    """The capture as pcap bytes: the global header, then a record per frame until ``seconds`` pass, ``stop`` is
    set, or the next record would take the file past ``max_bytes``. The tap is closed (its plug ended by PID)
    however it ends, including when the reader stops early (a closed download) and closes the stream."""
    return PcapStream(tap, _chunks(tap, seconds, max_bytes, stats, stop))


def _chunks(tap: Tap, seconds: float, max_bytes: int, stats: CaptureStats,
            stop: threading.Event | None) -> Generator[bytes, None, None]:
    stats.stopped_by = "interrupted"
    try:
        header = pcap_header()
        stats.bytes = len(header)
        yield header
        # no later than the deadline the tap was recorded with (`TapRecords.live` ends a plug 5 s past it)
        deadline = time.monotonic() + min(seconds, tap.record.until - time.time())
        for stamp, frame in tap.frames(deadline, stop):
            record = pcap_record(stamp, frame)
            if stats.bytes + len(record) > max_bytes:
                stats.stopped_by = "size"
                return
            stats.bytes += len(record)
            stats.packets += 1
            yield record
        if stop is not None and stop.is_set():
            return
        stats.stopped_by = "duration" if time.monotonic() >= deadline else "network"
    finally:
        tap.close()
