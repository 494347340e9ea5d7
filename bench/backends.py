"""UML and QEMU side by side, in one run, through the services (issue: backends). Writes docs/benchmarks.md.

Run: .venv/bin/python bench/backends.py                 (tiny; about 3 minutes)
     .venv/bin/python bench/backends.py --debian        (also debian-bookworm; builds it once if not cached)
     .venv/bin/python bench/backends.py --rounds 3 --write

For each backend and image: overlay creation (the backend's `Overlay.create`, median of 20), start to ready (the
services' `Machines.start`, median of the rounds, each a fresh boot), a snapshot of the running machine and a restore
that starts it again until it answers SSH (QEMU keeps the running state: the restore goes on where it was; UML keeps
the disk: the restore boots), and the host memory of one running guest (resident memory of the machine process and
its supervisor, from /proc). Every figure is measured in this run; the machine and its load are written with it.
The targets are the issue's: qcow2 overlay creation <= 25 ms, tiny under TCG ready <= 6 s, a running state's restore
to a guest answering SSH <= 1 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench.engine import Bench, wait_for_ssh
from bench.report import Row, load_row, show_rows
from labkit.guest.keys import ensure_key
from labkit.overlays import get_overlay
from labkit.runtime import get_backend
from labkit.runtime.base import Forward

SECTION = "## Backends side by side"
#: how the memory row is measured, and what that overstates
MEMORY_HOW = ("VmRSS summed over the machine's process group and its supervisor; pages UML's processes share are "
              "counted once per process, so UML's figure is an upper bound")


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def group_rss_mb(pid: int | None) -> float:
    """The machine process and every process of its group (UML's helpers; QEMU is one process)."""
    if pid is None:
        return 0.0
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pid:
                    total += rss_mb(int(entry.name))
            except (ProcessLookupError, FileNotFoundError, PermissionError):
                continue
    return total


def med(values: list[float]) -> float:
    return statistics.median(values)


def side_by_side(bench: Bench, image: str, rounds: int) -> list[Row]:
    rows: list[Row] = []
    base = bench.image(image)
    key = ensure_key(bench.settings.keys)
    for kind in ("uml", "qemu"):
        backend = get_backend(kind)
        overlay = get_overlay(backend.overlay_kind)
        creates = []
        for i in range(20):
            path = bench.root / f"ov{i}{overlay.suffix}"
            started = time.perf_counter()
            overlay.create(base, path)
            creates.append((time.perf_counter() - started) * 1000)
            path.unlink()
        target = "<= 25 ms" if kind == "qemu" else ""
        rows.append((f"{kind}, {image}: overlay creation (`{overlay.kind}`), median of 20", target,
                     f"{med(creates):.1f} ms", ("met" if med(creates) <= 25 else "missed") if target else ""))

        name = f"s-{kind}-{image[:4]}"
        memory = max(backend.min_memory_mb, 128 if image == "tiny" else 256)
        bench.machines.create(name, image, memory_mb=memory, forwards=[Forward(0, 22)], backend=kind)
        boots, memory_used = [], 0.0
        for _ in range(rounds):
            started = time.perf_counter()
            view = bench.machines.start(name, wait=True, timeout=180)
            boots.append(time.perf_counter() - started)
            memory_used = group_rss_mb(view.pid) + rss_mb(view.supervisor_pid)
            bench.machines.stop(name)
        target = "<= 6 s" if (kind, image) == ("qemu", "tiny") else ""
        rows.append((f"{kind}, {image}: start to ready ({memory} MB guest), median of {rounds}", target,
                     f"{med(boots):.2f} s (min {min(boots):.2f}, max {max(boots):.2f})",
                     ("met" if med(boots) <= 6 else "missed") if target else ""))
        rows.append((f"{kind}, {image}: host memory of one running guest ({MEMORY_HOW})", "",
                     f"{memory_used:.0f} MB", ""))

        view = bench.machines.start(name, wait=True, timeout=180)
        port = int(view.forwards[-1].split(":")[0])
        wait_for_ssh(port, key)
        logins = []
        for _ in range(rounds):
            started = time.perf_counter()
            wait_for_ssh(port, key)
            logins.append(time.perf_counter() - started)
        started = time.perf_counter()
        bench.machines.snapshot(name, "bench")
        taken = time.perf_counter() - started
        kind_of = next(s["kind"] for s in bench.machines.snapshots(name) if s["name"] == "bench")
        backs = []
        for _ in range(rounds):
            bench.machines.stop(name)
            started = time.perf_counter()
            view = bench.machines.restore(name, "bench", discard=True, start=True)
            if view.state == "stopped":  # a disk snapshot: the restore leaves the machine stopped, and it boots
                view = bench.machines.start(name, wait=True, timeout=180)
            port = int(view.forwards[-1].split(":")[0])
            wait_for_ssh(port, key)
            backs.append(time.perf_counter() - started)
        back = med(backs)
        target = "<= 1 s" if kind_of == "running state" else ""
        rows.append((f"{kind}, {image}: one SSH login and `true` into the running guest, median of {rounds}", "",
                     f"{med(logins):.2f} s", ""))
        rows.append((f"{kind}, {image}: snapshot of the running machine ({kind_of})", "", f"{taken:.2f} s", ""))
        rows.append((f"{kind}, {image}: restore of it, started, until SSH answers (a login runs `true`), median of "
                     f"{rounds}", target, f"{back:.2f} s (min {min(backs):.2f}, max {max(backs):.2f})",
                     ("met" if back <= 1 else "missed") if target else ""))
        bench.machines.stop(name)
        bench.machines.remove(name)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--debian", action="store_true", help="also the debian-bookworm image")
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    os.environ["LABKIT_QEMU_WARM"] = "0"  # boots are measured here; starts from a warm state in bench/warm.py
    bench = Bench()
    rows: list[Row] = []
    try:
        for image in ("tiny", "debian-bookworm") if args.debian else ("tiny",):
            rows += side_by_side(bench, image, args.rounds)
    finally:
        bench.close()
    rows.append(load_row())
    show_rows(SECTION, "bench/backends.py", rows, args.write)


if __name__ == "__main__":
    main()
