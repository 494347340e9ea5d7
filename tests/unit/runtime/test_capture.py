"""Packet capture without guests: the pcap bytes, the plug's frame stream, and a real ``vde_switch`` with two plugs
standing in for machines (a switch starts in milliseconds; the journey with real guests is
tests/guests/test_capture.py).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from labkit.errors import ConflictError, StateError
from labkit.runtime.base import NetworkSpec
from labkit.runtime.capture import CaptureStats, FrameStream, pcap_chunks, pcap_header, pcap_record
from labkit.runtime.vde import NetworkDir, VdeNetworks

needs_vde = pytest.mark.skipif(shutil.which("vde_plug") is None, reason="vde_plug (Debian package vdeplug) missing")
needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump (Debian package tcpdump) missing")

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")


def test_pcap_header_and_record_bytes() -> None:
    assert pcap_header() == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    assert pcap_record(12.5, b"abcdef") == struct.pack("<IIII", 12, 500000, 6, 6) + b"abcdef"
    assert pcap_record(1.0, b"abcdef", snaplen=4) == struct.pack("<IIII", 1, 0, 4, 6) + b"abcd"


def test_frame_stream_joins_frames_cut_across_reads() -> None:
    stream = FrameStream()
    data = b"\x00\x03abc\x00\x02de\x00\x00"
    assert stream.feed(data[:4]) == []
    assert stream.feed(data[4:8]) == [b"abc"]
    assert stream.feed(data[8:]) == [b"de", b""]


@pytest.fixture
def root(switch_root: Path) -> Path:
    """`switch_root` (conftest.py): its switches are ended by PID afterwards."""
    return switch_root


class Plug:
    """A stand-in for a machine's NIC: a vde_plug on the switch that we write frames into."""

    def __init__(self, switch_dir: Path) -> None:
        self.proc = subprocess.Popen(["vde_plug", str(switch_dir)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)

    def send(self, frame: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(struct.pack(">H", len(frame)) + frame)
        self.proc.stdin.flush()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def frame(dst: bytes, src: bytes, text: bytes) -> bytes:
    return dst + src + b"\x88\xb5" + text.ljust(46, b".")  # the local experimental EtherType


def unicast_seen(networks: VdeNetworks, root: Path, name: str) -> tuple[CaptureStats, bytes]:
    """Two plugs (a and b) on a fresh network learn each other, then a sends b unicast frames while a capture runs:
    the pcap's bytes."""
    spec = NetworkSpec(name, root / name)
    networks.start(spec)
    switch_dir = NetworkDir(spec.folder).switch_dir
    a, b = Plug(switch_dir), Plug(switch_dir)
    try:
        stats = CaptureStats()
        tap = networks.tap(spec, owner="tester", seconds=5)
        chunks = pcap_chunks(tap, 0.5, 1 << 20, stats)
        out = next(chunks)  # the header; the plug has joined (a switch forgets what it learned when a port joins)
        b.send(frame(b"\xff" * 6, MAC_B, b"hello from b"))
        out += next(chunks)  # the broadcast reached the capture: the switch has learned b's port
        for i in range(5):
            a.send(frame(MAC_B, MAC_A, f"unicast {i}".encode()))
        out += b"".join(chunks)
        return stats, out
    finally:
        a.close()
        b.close()
        networks.stop(spec)


@needs_vde
@needs_tcpdump
def test_a_capture_on_a_hub_sees_unicast_between_two_other_ports(root: Path) -> None:
    stats, data = unicast_seen(VdeNetworks(), root, "lan")
    assert stats.stopped_by == "duration" and stats.packets == 6
    assert data.startswith(pcap_header()) and len(data) == stats.bytes
    (root / "c.pcap").write_bytes(data)
    listing = subprocess.run(["tcpdump", "-n", "-e", "-r", str(root / "c.pcap")], capture_output=True, text=True,
                             check=True)
    lines = [line for line in listing.stdout.splitlines() if "02:00:00:00:00:01 > 02:00:00:00:00:02" in line]
    assert len(lines) == 5, listing.stdout
    # ... which a switch would have sent to b's port only: that is why lab networks are hubs
    _, data = unicast_seen(VdeNetworks(hub=False), root, "sw")
    assert b"hello from b" in data and b"unicast" not in data


@needs_vde
def test_the_plug_ends_by_pid_when_the_reader_stops_and_limits_hold(root: Path) -> None:
    networks = VdeNetworks()
    spec = NetworkSpec("lan", root / "lan")
    with pytest.raises(StateError, match="it is stopped"):
        networks.tap(spec, owner="tester", seconds=5)
    networks.start(spec)
    taps = NetworkDir(spec.folder).taps
    first, second = (networks.tap(spec, owner=who, seconds=30) for who in ("alice", "teacher"))
    assert {r.owner for r in taps.live()} == {"alice", "teacher"}
    with pytest.raises(ConflictError, match="already has 2 captures running"):
        networks.tap(spec, owner="alice", seconds=5)
    # A reader that stops early (Ctrl-C, a closed download): the generator's close ends the plug by its PID.
    stats = CaptureStats()
    chunks = pcap_chunks(first, 30, 1 << 20, stats)
    next(chunks)
    plug = first.record.process()
    assert plug.alive()
    chunks.close()
    assert not plug.alive() and stats.stopped_by == "interrupted"
    assert [r.owner for r in taps.live()] == ["teacher"]
    # ... also when nobody read a byte (a download closed before it began)
    unread = networks.tap(spec, owner="bob", seconds=30)
    pcap_chunks(unread, 30, 1 << 20, CaptureStats()).close()
    assert not unread.record.process().alive()
    assert [r.owner for r in taps.live()] == ["teacher"]
    # The size cap: the header alone fits, the first frame does not.
    sender = Plug(NetworkDir(spec.folder).switch_dir)
    try:
        stats = CaptureStats()
        chunks = pcap_chunks(second, 10, 24 + 20, stats)
        next(chunks)
        sender.send(frame(b"\xff" * 6, MAC_A, b"too big"))
        assert b"".join(chunks) == b""
        assert stats.stopped_by == "size" and stats.packets == 0 and stats.bytes == 24
    finally:
        sender.close()
    assert taps.live() == []
    # Stopping the network ends a capture still running on it.
    third = networks.tap(spec, owner="alice", seconds=30)
    networks.stop(spec)
    assert not third.record.process().alive() and taps.live() == []
    third.close()
