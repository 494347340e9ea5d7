"""What running lab networks as hubs costs (so that a packet capture sees the traffic between two machines).

``.venv/bin/python bench/capture.py [--small]`` starts real ``vde_switch`` processes through `VdeNetworks`, as a switch
(``hub=False``) and as a hub, with 2, 4 and 8 ports held by ``vde_plug`` processes standing in for machines' NICs. One
port sends 20000 full-size (1514-byte) frames to another port's MAC, which the switch has learned; the others drain
what they get. Measured: the switch process's CPU time per frame (utime + stime from /proc), the frames the receiver
got, and the time until it had them. Then the same at 4 ports with a capture running (`VdeNetworks.tap` and
`pcap_chunks` into memory). It rewrites the "Packet capture" section of docs/benchmarks.md (``--small`` writes nothing).
Nothing leaves the machine: only UNIX sockets.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from report import Row, load_row, show_rows  # noqa: E402

from labkit.runtime.base import NetworkSpec  # noqa: E402
from labkit.runtime.capture import CaptureStats, FrameStream, pcap_chunks  # noqa: E402
from labkit.runtime.process import ProcessRecord  # noqa: E402
from labkit.runtime.vde import NetworkDir, VdeNetworks  # noqa: E402

SECTION = "## Packet capture"
TICKS = os.sysconf("SC_CLK_TCK")
SENDER, RECEIVER = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def frame(dst: bytes, src: bytes, size: int = 1514) -> bytes:
    return dst + src + b"\x88\xb5" + bytes(size - 14)


def one_run(root: Path, hub: bool, ports: int, frames: int, capture: bool) -> tuple[float, int, float, int]:
    """CPU seconds of the switch per frame, frames received, seconds to receive them, frames captured."""
    networks = VdeNetworks(hub=hub)
    spec = NetworkSpec("lan", root / f"n{int(hub)}{ports}{int(capture)}")
    status = networks.start(spec)
    assert status.pid is not None
    switch_dir = NetworkDir(spec.folder).switch_dir
    send = subprocess.Popen(["vde_plug", str(switch_dir)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    receive = subprocess.Popen(["vde_plug", str(switch_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    idle = [subprocess.Popen(["vde_plug", str(switch_dir)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            for _ in range(ports - 2)]
    stats, captured = CaptureStats(), []
    try:
        time.sleep(0.3)
        tap = networks.tap(spec, owner="bench", seconds=120) if capture else None
        assert send.stdin is not None and receive.stdin is not None and receive.stdout is not None
        # the receiver announces itself (a broadcast), so the switch learns its port; then wait for it to settle
        receive.stdin.write(struct.pack(">H", 60) + frame(b"\xff" * 6, RECEIVER, 60))
        receive.stdin.flush()
        time.sleep(0.3)
        got, last = 0, 0.0
        done = threading.Event()
        out = receive.stdout.fileno()

        def read() -> None:
            nonlocal got, last
            stream = FrameStream()
            while got < frames:
                data = os.read(out, 1 << 16)
                if not data:
                    return
                got += sum(1 for f in stream.feed(data) if f[6:12] == SENDER)
                last = time.perf_counter()
            done.set()

        if tap is not None:
            chunks = pcap_chunks(tap, 120, 1 << 30, stats)
            reader = threading.Thread(target=lambda: captured.extend(chunks), daemon=True)
            reader.start()
        threading.Thread(target=read, daemon=True).start()
        before = cpu_seconds(status.pid)
        started = time.perf_counter()
        payload = struct.pack(">H", 1514) + frame(RECEIVER, SENDER)
        for _ in range(frames):
            send.stdin.write(payload)
        send.stdin.flush()
        seen = -1
        while not done.wait(0.5) and got != seen:  # all arrived, or nothing more for half a second (dropped)
            seen = got
        elapsed = last - started
        cpu = cpu_seconds(status.pid) - before
        if tap is not None:
            tap.close()
            reader.join(5)
        return cpu / frames, got, elapsed, max(stats.packets - 1, 0)  # less the receiver's broadcast
    finally:
        for plug in (send, receive, *idle):
            plug.kill()
            plug.wait()
        networks.stop(spec)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/capture.py", description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer runs; prints the rows, writes no report")
    args = parser.parse_args(argv)
    runs, frames = (1, 5000) if args.small else (5, 20000)
    if shutil.which("vde_plug") is None:
        parser.error("vde_plug (Debian package vdeplug) is not installed")
    root = Path(tempfile.mkdtemp(prefix="lkbc", dir="/tmp"))
    rows: list[Row] = []
    try:
        for ports, capture in ((2, False), (4, False), (8, False), (4, True)):
            for hub in (False, True):
                results = [one_run(root, hub, ports, frames, capture) for _ in range(runs)]
                cpu = statistics.median(r[0] for r in results) * 1e6
                got = min(r[1] for r in results)
                rate = statistics.median(r[1] / r[2] for r in results)
                seen = min(r[3] for r in results)
                what = (f"{ports} ports{' + a capture' if capture else ''}, as a {'hub' if hub else 'switch'}: "
                        f"{frames} frames of 1514 bytes from one port to another")
                measured = (f"switch CPU {cpu:.1f} µs/frame (median of {runs}); receiver got at least {got} of "
                            f"{frames}, at {rate:,.0f} frames/s")
                if capture:
                    measured += f"; the capture got at least {seen}"
                rows.append((what, "report", measured, "measured"))
                print(rows[-1], file=sys.stderr)
    finally:
        for pid_file in root.rglob("switch.pid"):
            record = ProcessRecord.read(pid_file)
            if record is not None:
                record.send(9)
        shutil.rmtree(root, ignore_errors=True)
    rows.append(load_row())
    notes = """\
What it means: a lab network carries a few machines' traffic, so a hub costs little. With 2 ports a hub and a
switch do the same work (every frame goes to the one other port; the difference is noise). With more ports a hub
copies each frame to every port, and the switch's CPU per frame grows with them: here from about 4 to 7 µs at 4
ports and to about 16 µs at 8, against a lab's traffic of a few frames a second (pings, a page, an SSH session)
or a few thousand for a file copy. The capture is one more port. Frames are lost in every mode at these rates:
the sender blasts them without pause and the plugs' sockets overflow (vde_plug's limit, not the hub's). The
machine was busy (load average above), so the figures move between runs. Without a hub, a capture would see
broadcasts and the first frames after it joins only (a VDE switch forgets what it learned when a port joins,
then learns again): that is why lab networks are hubs (docs/runtime.md, "Packet capture")."""
    show_rows(SECTION, "bench/capture.py", rows, not args.small, notes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
