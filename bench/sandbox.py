"""Benchmark: what the bubblewrap sandbox of grader.py costs per script check, and per Guest call through it.

    .venv/bin/python bench/sandbox.py            (about 10 s; rewrites the "Sandbox" section of docs/benchmarks.md)
    .venv/bin/python bench/sandbox.py --small    (a trial that writes nothing)

The guest behind the handles answers at once from memory, so the figures are the sandbox's own cost: starting bwrap
and Debian's Python, importing grader.py, and one JSON round trip per call. The baseline is the way labkit ran
grader.py before the sandbox: imported into labkit's own process and called there.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from bench.report import Row, measure, refuse_unknown, write_report
from labkit.grading.budget import Budget, BudgetedGuest
from labkit.grading.sandbox import run_grader

GRADER = '''
def quick(guests, params):
    return 1, "done"


def calls(guests, params):
    found = sum(guests["box"].exists(f"/etc/file{i}") for i in range(params["calls"]))
    return 1, f"{found} found"
'''


class InstantGuest:
    """A handle whose every answer is ready at once: the bench measures the way to it, not a machine."""

    name = "box"
    forwards: ClassVar[dict[int, int]] = {}
    ssh = "ssh"
    last_transport = "ssh"

    def exists(self, path: str, timeout: float = 30.0, transport: str | None = None) -> bool:
        return path.endswith("0")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/sandbox.py", description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer runs; prints the rows, writes no report")
    parser.add_argument("only", nargs="*", help="measurements to run (default: all)")
    args = parser.parse_args(argv)
    runs = 5 if args.small else 30
    rows: list[Row] = []
    folder = Path(tempfile.mkdtemp(prefix="lk-bench-sandbox-"))
    (folder / "grader.py").write_text(GRADER)
    guests = {"box": BudgetedGuest(InstantGuest(), Budget(60), {})}

    def start_cost() -> None:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            run_grader(folder, "grader.py", "quick", guests, {}, 30)
            times.append(time.perf_counter() - started)
        before = []
        for i in range(runs):  # the old way: import grader.py into labkit's process (once per check here) and call
            started = time.perf_counter()
            spec = importlib.util.spec_from_file_location(f"bench_grader_{i}", folder / "grader.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.quick(guests, {})
            before.append(time.perf_counter() - started)
        rows.append((
            "start cost of one script check in the sandbox (`run_grader`: bwrap, Debian's Python, import grader.py, "
            "call a function that returns at once, process ended)", "report",
            f"{statistics.median(times) * 1000:.1f} ms median of {runs} (min {min(times) * 1000:.1f}, max "
            f"{max(times) * 1000:.1f}); in labkit's own process, as before: {statistics.median(before) * 1000:.2f} ms; "
            f"host load average {os.getloadavg()[0]:.1f} during the run",
            "reported"))

    def per_call() -> None:
        count = 2000
        times = []
        for _ in range(max(3, runs // 5)):
            started = time.perf_counter()
            run_grader(folder, "grader.py", "calls", guests, {"calls": count}, 60)
            times.append(time.perf_counter() - started)
        empty = []
        for _ in range(max(3, runs // 5)):
            started = time.perf_counter()
            run_grader(folder, "grader.py", "calls", guests, {"calls": 0}, 60)
            empty.append(time.perf_counter() - started)
        each = (statistics.median(times) - statistics.median(empty)) / count
        rows.append((f"one Guest call through the sandbox's socket ({count} `exists` calls to a handle that answers "
                     "at once, less the same check with none)", "report", f"{each * 1e6:.0f} µs per call", "reported"))

    measurements = {"start": start_cost, "calls": per_call}
    refuse_unknown(parser, args.only, measurements)
    measure(measurements, args.only or list(measurements), rows)
    if not args.small:
        write_report("## Sandbox", "bench/sandbox.py", rows)
    for row in rows:
        print(" | ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
