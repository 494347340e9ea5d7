"""Grading benchmarks (issue: grading). Writes the "## Grading" section of docs/benchmarks.md.

Run: .venv/bin/python bench/grading.py                    (all three, about two minutes; builds tiny once if not cached)
     .venv/bin/python bench/grading.py ssh offline
     .venv/bin/python bench/grading.py --small            (5 guests: a trial that writes nothing)

One course of 30 students on a one-machine lab with 5 checks (2 commands, 3 file checks), in a private installation
in a short folder under /tmp, removed at the end. Everything goes through `Grading.grade` (real SQLite, real guests,
real SSH). The 30 guests are started once, before any clock:

- ssh: grade the 30 running guests (the service's default 8 students at a time);
- console: the same guests after the grader key was removed inside each, so every command goes to the console (each
  check first has SSH refuse the key, then runs on the console: what grading a student who deleted the key costs);
  beside it, one guest's `run` forced over each transport, to give the ratio per command without the SSH refusal;
- offline: the guests stopped, graded again (the file checks read the disks without booting; the command checks
  fail at once, as they must for a stopped machine).

Every figure is measured here, in this run, on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bench.installation import Installation
from bench.report import Row, measure, refuse_unknown, write_report
from labkit.services.grading import DEFAULT_WORKERS, Grading, RunReport

SECTION = "## Grading"
MEASUREMENTS = ("ssh", "console", "offline")
CHECKS = 5
LAB_TOML = """\
id = "bench-grade"
title = "Grading benchmark"
version = 1

[machines.box]
image = "tiny"
memory = 64
forwards = [22]

[params.user]
kind = "word"
digits = 2

[[checks]]
id = "root-id"
kind = "command"
command = "id -u root"
regex = "^0$"

[[checks]]
id = "hostname"
kind = "command"
command = "hostname"
equals = "box"

[[checks]]
id = "passwd"
kind = "file"
path = "/etc/passwd"
regex = "^root:x:0:0:"

[[checks]]
id = "shadow"
kind = "file"
path = "/etc/shadow"
mode = "0600"
owner = "root:root"

[[checks]]
id = "no-user"
kind = "file"
path = "/home/{{ user }}"
exists = false
"""


def summary(report: RunReport) -> tuple[int, int, dict[str, int], float]:
    """(checks passed, checks in all, transports used -> count, median check duration)."""
    results = [r for g in report.grades for r in g.results]
    transports: dict[str, int] = {}
    for r in results:
        transports[r.transport or "none"] = transports.get(r.transport or "none", 0) + 1
    return (sum(r.passed for r in results), len(results), transports,
            statistics.median(r.duration for r in results) if results else 0.0)


class Bench(Installation):
    def __init__(self, guests: int) -> None:
        self.guests = guests
        super().__init__("lkg")
        self.grading = Grading(self.settings, self.db, actor="bench")
        self.rows: list[Row] = []
        self.started = False

    def setup(self) -> None:
        """The course, provisioned and started (all before any clock)."""
        self.ensure_tiny()
        lab = self.root / "bench-grade"
        lab.mkdir()
        (lab / "lab.toml").write_text(LAB_TOML)
        (lab / "instructions.md").write_text("# Grading benchmark\n")
        self.courses.create("bgrade", [lab], memory_budget_mb=64 * self.guests)
        self.enroll("bgrade", self.guests)
        self.courses.provision("bgrade")
        self.start()

    def start(self) -> None:
        views = self.courses.start("bgrade")
        down = [str(v["name"]) for v in views if v["state"] != "running"]
        if down:
            raise RuntimeError(f"not running: {', '.join(down)}")
        self.started = True

    def names(self) -> list[str]:
        return [t.name for t in self.courses.targets("bgrade")]

    def grade(self) -> tuple[float, RunReport]:
        started = time.perf_counter()
        report = self.grading.grade("bgrade")
        return time.perf_counter() - started, report

    def grade_runs(self, runs: int = 3) -> tuple[list[float], RunReport]:
        """Grade the course ``runs`` times: the wall time of each, and the last report."""
        times, report = [], None
        for _ in range(runs):
            elapsed, report = self.grade()
            times.append(elapsed)
        assert report is not None
        return times, report

    # ---- the benchmarks --------------------------------------------------------------------------------------
    def ssh(self) -> None:
        if not self.started:
            self.start()
        self.grade()  # warm-up: first SSH connections of a boot make the guests' host keys; not measured
        times, report = self.grade_runs()
        passed, total, transports, median = summary(report)
        if transports != {"ssh": total} or passed != total:
            raise RuntimeError(f"expected {total} passing checks over SSH; got {passed} passed, {transports}")
        wall = statistics.median(times)
        self.ssh_wall = wall
        self.rows.append((f"{self.guests} running `tiny` guests × {CHECKS} checks over SSH (`Grading.grade`, "
                          f"{DEFAULT_WORKERS} students at a time)", "≤ 15 s wall",
                          f"{wall:.2f} s median of {len(times)} runs (min {min(times):.2f}, max {max(times):.2f}); "
                          f"{wall / self.guests * 1000:.0f} ms per guest; median check {median * 1000:.0f} ms; "
                          f"all {total} checks passed over SSH", "pass" if wall <= 15 else "FAIL"))

    def console(self) -> None:
        if not self.started:
            self.start()
        # Per command, one guest, each transport forced: the cost of the transport alone.
        per_call: dict[str, float] = {}
        with self.courses.machines.open_guest(self.names()[0]) as guest:
            for transport in ("ssh", "console"):
                guest.run("true", transport=transport)  # connect / attach once before the clock
                times = []
                for _ in range(20):
                    started = time.perf_counter()
                    result = guest.run("id -u root", transport=transport)
                    times.append(time.perf_counter() - started)
                    if result.out.strip() != "0":
                        raise RuntimeError(f"{transport}: unexpected output {result.out!r}")
                per_call[transport] = statistics.median(times)
        # The whole course with the grader key removed in every guest: SSH refuses, the console answers.
        ssh_wall = getattr(self, "ssh_wall", None)
        if ssh_wall is None:
            ssh_wall, _ = self.grade()

        def unkey(name: str) -> None:
            with self.courses.machines.open_guest(name) as guest:
                if not guest.run("rm -f /root/.ssh/authorized_keys", transport="ssh").ok:
                    raise RuntimeError(f"could not remove the grader key in {name}")

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(unkey, self.names()))
        elapsed, report = self.grade()
        passed, total, transports, median = summary(report)
        if transports != {"console": total} or passed != total:
            raise RuntimeError(f"expected {total} passing checks over the console; got {passed} passed, {transports}")
        self.rows.append((f"grading through the console vs SSH ({self.guests} guests × {CHECKS} checks, grader key "
                          "removed in every guest)", "report the ratio",
                          f"console {elapsed:.2f} s vs SSH {ssh_wall:.2f} s wall: {elapsed / ssh_wall:.1f}× "
                          f"(median check {median * 1000:.0f} ms, each first refused by SSH); one command on one "
                          f"guest: console {per_call['console'] * 1000:.0f} ms vs SSH {per_call['ssh'] * 1000:.0f} "
                          f"ms median of 20, {per_call['console'] / per_call['ssh']:.1f}×", "reported"))

    def offline(self) -> None:
        if self.started:
            self.courses.stop("bgrade")
            self.started = False
        times, report = self.grade_runs()
        passed, total, transports, median = summary(report)
        files = 3 * self.guests
        if passed != files or transports.get("offline") != total:
            raise RuntimeError(f"expected the {files} file checks to pass offline; got {passed} passed, {transports}")
        wall = statistics.median(times)
        self.rows.append((f"offline grading of {self.guests} stopped guests ({CHECKS} checks: 3 file checks read "
                          "from the disk, 2 command checks fail at once as they must)", "report time per guest",
                          f"{wall / self.guests * 1000:.0f} ms per guest ({wall:.2f} s for {self.guests}, median "
                          f"of {len(times)} runs, {DEFAULT_WORKERS} students at a time); median check "
                          f"{median * 1000:.0f} ms; no machine booted", "reported"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/grading.py", description=__doc__.splitlines()[0])
    parser.add_argument("measurements", nargs="*", metavar="ssh|console|offline",
                        help="which to run (default: all, in this order)")
    parser.add_argument("--small", action="store_true", help="5 guests: a trial run; prints the rows, writes no report")
    args = parser.parse_args(argv)
    refuse_unknown(parser, args.measurements, MEASUREMENTS)
    bench = Bench(guests=5 if args.small else 30)
    chosen: dict[str, Callable[[], None]] = {name: getattr(bench, name) for name in MEASUREMENTS}
    try:
        print("starting the guests ...", file=sys.stderr)
        bench.setup()
        measure(chosen, [m for m in MEASUREMENTS if m in (args.measurements or MEASUREMENTS)], bench.rows)
    finally:
        bench.close()
    if not args.small:
        write_report(SECTION, "bench/grading.py", bench.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
