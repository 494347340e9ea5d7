"""qcow2 overlay benchmark (issue: backends): how long `Qcow2.create` takes, target <= 25 ms median.

Run: .venv/bin/python bench/qcow2_overlay.py            (prints the rows)
     .venv/bin/python bench/qcow2_overlay.py --write    (also writes its section of docs/benchmarks.md)

The base is a sparse 2 GiB raw file (the size of a real image; qemu-img only reads its length) in a private folder
under /tmp, removed at the end. `create` is the whole call the services make: ``qemu-img create`` to a temporary name,
the rename, then its header and allocation read back in Python (no process); the overlay is deleted
between rounds. Each figure is one process or more: on a loaded machine their start-up dominates.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.report import Row, show_rows
from labkit.overlays.qcow2 import Qcow2

SECTION = "## qcow2 overlays"
ROUNDS = 40


def timed(action: object) -> float:
    start = time.perf_counter()
    action()  # type: ignore[operator]
    return (time.perf_counter() - start) * 1000


def run(rounds: int) -> list[Row]:
    overlay = Qcow2()
    with tempfile.TemporaryDirectory(prefix="lkq") as folder:
        base = Path(folder) / "base.img"
        with open(base, "wb") as f:
            f.truncate(2 << 30)
        ov = Path(folder) / "m.qcow2"
        create, reset, info = [], [], []
        for _ in range(rounds):
            create.append(timed(lambda: overlay.create(base, ov)))
            info.append(timed(lambda: overlay.info(ov)))
            reset.append(timed(lambda: overlay.reset(ov, base)))
            overlay.delete(ov)
    med = statistics.median
    return [
        ("qcow2 overlay creation (`Qcow2.create`, 2 GiB base), median", "<= 25 ms", f"{med(create):.1f} ms",
         "met" if med(create) <= 25 else "missed"),
        ("qcow2 overlay creation, slowest of the rounds", "", f"{max(create):.1f} ms", ""),
        ("qcow2 `info` (header and L1/L2 tables read in Python), median", "", f"{med(info):.1f} ms", ""),
        ("qcow2 `reset` (qemu-io lock probe + `qemu-img create` + rename), median", "", f"{med(reset):.1f} ms", ""),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    rows = run(args.rounds)
    show_rows(SECTION, "bench/qcow2_overlay.py", rows, args.write)


if __name__ == "__main__":
    main()
