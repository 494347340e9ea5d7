"""Course benchmarks (issue: labs and classes). Writes the "## Courses" section of docs/benchmarks.md.

Run: .venv/bin/python bench/courses.py                       (all three, a few minutes; builds tiny once if not cached)
     .venv/bin/python bench/courses.py provision session
     .venv/bin/python bench/courses.py --small                (10 students, 5 machines: a trial that writes nothing)

Everything goes through the services (real SQLite, overlays, seed disks and UML guests) in a private installation in a
short folder under /tmp, removed at the end. Every figure is measured here, in this run, on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.installation import Installation
from bench.report import REPO, Row, measure, refuse_unknown, write_report

SECTION = "## Courses"
TWO_HOSTS = REPO / "labs" / "two-hosts"
INTRO_SHELL = REPO / "labs" / "intro-shell"
#: The services' own defaults, which the CLI uses too; named here so the report can say them.
PROVISION_WORKERS = 8
START_WORKERS = 4
MEASUREMENTS = ("provision", "start30", "session")


class Bench(Installation):
    def __init__(self, students: int, machines: int) -> None:
        self.students = students  # for provision and session
        self.machines = machines  # for start30
        super().__init__("lkc")
        self.rows: list[Row] = []

    def course(self, name: str, lab: Path, students: int, memory_budget_mb: int | None = None) -> None:
        """A course on ``lab`` with a roster of ``students`` (tiny built first): all of it before any clock."""
        self.ensure_tiny()
        self.courses.create(name, [lab], memory_budget_mb=memory_budget_mb)
        self.enroll(name, students)

    # ---- the benchmarks --------------------------------------------------------------------------------------
    def provision(self) -> None:
        n = self.students
        self.course("bprov", TWO_HOSTS, n)
        started = time.perf_counter()
        first = self.courses.provision("bprov", workers=PROVISION_WORKERS)
        elapsed = time.perf_counter() - started
        started = time.perf_counter()
        second = self.courses.provision("bprov", workers=PROVISION_WORKERS)
        again = time.perf_counter() - started
        if (first.created, second.kept) != (2 * n, 2 * n):
            raise RuntimeError(f"provision made {first} then {second}; expected {2 * n} created, then {2 * n} kept")
        self.rows.append((f"provision {n} students × a 2-machine lab (`two-hosts`, images already built)", "≤ 5 s",
                          f"{elapsed:.2f} s for {2 * n} machines ({elapsed / (2 * n) * 1000:.0f} ms each, "
                          f"{PROVISION_WORKERS} workers: overlay, seed disk, parameters, database rows); second "
                          f"run (nothing to do) {again:.2f} s", "pass" if elapsed <= 5 else "FAIL"))

    def start30(self) -> None:
        n = self.machines
        self.course("bstart", INTRO_SHELL, n, memory_budget_mb=64 * n)
        self.courses.provision("bstart", workers=PROVISION_WORKERS)
        started = time.perf_counter()
        views = self.courses.start("bstart", workers=START_WORKERS)
        elapsed = time.perf_counter() - started
        not_running = [str(v["name"]) for v in views if v["state"] != "running"]
        if len(views) != n or not_running:
            raise RuntimeError(f"{len(views)} machines, not running: {', '.join(not_running) or 'none'}")
        started = time.perf_counter()
        self.courses.stop("bstart")
        stopped = time.perf_counter() - started
        self.rows.append((f"start {n} `tiny` machines for a class ({n} students on `intro-shell`, 64 MB each)",
                          "report time until all are ready",
                          f"all {n} ready after {elapsed:.1f} s ({START_WORKERS} starts at a time, the service "
                          f"default); clean stop of all {stopped:.1f} s", "reported"))

    def session(self, runs: int = 3) -> None:
        n = self.students
        self.course("bsess", TWO_HOSTS, n)
        self.courses.provision("bsess", workers=PROVISION_WORKERS)
        times = []
        for _ in range(runs):
            self.courses.session_begin("bsess")
            started = time.perf_counter()
            ended = self.courses.session_end("bsess")
            times.append(time.perf_counter() - started)
            if ended["reset"] != 2 * n:
                raise RuntimeError(f"session end reset {ended['reset']} machines; expected {2 * n}")
        median = statistics.median(times)
        self.rows.append((f"end a session with reset for {n} students whose machines are stopped (`two-hosts`, "
                          f"reset_policy each-session: {2 * n} overlays)", "≤ 10 s",
                          f"{median:.2f} s median of {runs} (max {max(times):.2f} s; "
                          f"{median / (2 * n) * 1000:.1f} ms per machine, through the service and database)",
                          "pass" if median <= 10 else "FAIL"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/courses.py", description=__doc__.splitlines()[0])
    parser.add_argument("measurements", nargs="*", metavar="provision|start30|session",
                        help="which to run (default: all)")
    parser.add_argument("--small", action="store_true",
                        help="10 students and 5 machines: a trial run; prints the rows, writes no report")
    args = parser.parse_args(argv)
    refuse_unknown(parser, args.measurements, MEASUREMENTS)
    bench = Bench(students=10, machines=5) if args.small else Bench(students=100, machines=30)
    chosen: dict[str, Callable[[], None]] = {name: getattr(bench, name) for name in MEASUREMENTS}
    try:
        measure(chosen, args.measurements or list(chosen), bench.rows)
    finally:
        bench.close()
    if not args.small:
        write_report(SECTION, "bench/courses.py", bench.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
