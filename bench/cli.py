"""A snappy CLI (issue 13, section 3): the wall time of the ``labkit`` commands that do no heavy work, against
Python's own start. Writes the "## A snappy CLI" section of docs/benchmarks.md with ``--write``.

Run: .venv/bin/python bench/cli.py                 (a Markdown table on stdout, about a minute)
     .venv/bin/python bench/cli.py --runs 30 --write
     .venv/bin/python bench/cli.py --importtime     (also where each command's imports go, from ``-X importtime``)

The commands run against a private installation in a short folder under /tmp (removed at the end): the `tiny` image
(built from the shared cache unless there), a course on `intro-shell` with a roster of students, provisioned (overlays
and seed disks; no guest is booted). Each command runs as a new process, as a user types it, in rounds that take the
commands in turn, so a burst of load from other work on the machine spreads over all of them. Python may write its
bytecode cache (an installed labkit has it; PYTHONDONTWRITEBYTECODE is dropped) and every command runs once before
the clock.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.installation import Installation
from bench.report import REPO, Row, write_report

SECTION = "## A snappy CLI"
TARGET_MS = 250
LAB = REPO / "labs" / "intro-shell"
COURSE = "snappy"
STUDENTS = 10
PYTHON = Path(sys.executable)
LABKIT = PYTHON.parent / "labkit"


@dataclass
class Command:
    """One command line timed; ``target`` False for the baselines."""

    what: str
    argv: list[str]
    target: bool = True
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def commands() -> list[Command]:
    lab = str(LAB.relative_to(REPO))
    return [
        Command("`python -c pass` (baseline: Python's own start)", [str(PYTHON), "-c", "pass"], target=False),
        Command("`python -c 'import sqlalchemy.orm'` (the floor of any command that opens the database)",
                [str(PYTHON), "-c", "import sqlalchemy.orm"], target=False),
        Command("`labkit --help`", [str(LABKIT), "--help"]),
        Command("`labkit vm status` (10 machines, stopped)", [str(LABKIT), "vm", "status"]),
        Command(f"`labkit course status {COURSE} --json` (10 students)", [str(LABKIT), "course", "status", COURSE,
                                                                        "--json"]),
        Command(f"`labkit course status {COURSE}`", [str(LABKIT), "course", "status", COURSE]),
        Command(f"`labkit gradebook {COURSE}`", [str(LABKIT), "gradebook", COURSE]),
        Command(f"`labkit lab validate {lab}`", [str(LABKIT), "lab", "validate", lab]),
    ]


class Bench(Installation):
    def __init__(self) -> None:
        super().__init__("lkcli")
        self.env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
        self.env.update({"LABKIT_HOME": str(self.settings.home), "LABKIT_RUN": str(self.settings.run_dir),
                         "LABKIT_CACHE": str(self.settings.cache), "LABKIT_RECIPES": str(self.settings.recipes),
                         "LABKIT_DB": self.settings.db_url})

    def setup(self) -> None:
        self.ensure_tiny()
        self.courses.create(COURSE, [LAB])
        self.enroll(COURSE, STUDENTS)
        self.courses.provision(COURSE)

    def run(self, argv: list[str]) -> tuple[float, float]:
        """Wall and CPU (user + system) seconds of one run; a failing command stops the bench."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(argv, env=self.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.decode().strip()}")
        return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime

    def measure(self, chosen: list[Command], runs: int) -> None:
        for command in chosen:
            self.run(command.argv)  # bytecode cache, page cache
        for _ in range(runs):
            for command in chosen:
                wall, cpu = self.run(command.argv)
                command.wall.append(wall)
                command.cpu.append(cpu)

    def importtime(self, argv: list[str], runs: int = 3) -> Counter[str]:
        """Milliseconds of ``-X importtime`` self time per top-level package (the smallest of ``runs``)."""
        best: Counter[str] | None = None
        for _ in range(runs):
            done = subprocess.run([str(PYTHON), "-X", "importtime", *argv[1:]] if argv[0] == str(PYTHON)
                                  else [str(PYTHON), "-X", "importtime", *argv], env=self.env, cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            costs: Counter[str] = Counter()
            for line in done.stderr.splitlines():
                if line.startswith("import time:") and "self [us]" not in line:
                    self_us, _cumulative, name = line.removeprefix("import time:").split("|")
                    costs[name.strip().split(".")[0]] += int(self_us) / 1000
            if best is None or sum(costs.values()) < sum(best.values()):
                best = costs
        assert best is not None
        return best


def rows_of(chosen: list[Command], runs: int) -> list[Row]:
    start = statistics.median(chosen[0].wall) * 1000
    rows: list[Row] = []
    for command in chosen:
        wall, cpu = statistics.median(command.wall) * 1000, statistics.median(command.cpu) * 1000
        measured = (f"{wall:.0f} ms median of {runs} (min {min(command.wall) * 1000:.0f}, max "
                    f"{max(command.wall) * 1000:.0f}; CPU {cpu:.0f} ms)")
        if command is not chosen[0]:
            measured += f"; {wall - start:.0f} ms more than Python's start"
        if command.target:
            rows.append((command.what, f"≤ {TARGET_MS} ms", measured, "pass" if wall <= TARGET_MS else "FAIL"))
        else:
            rows.append((command.what, "baseline", measured, "measured"))
    load = os.getloadavg()[0]
    rows.append(("load average (1 min) when the run ended (other work on the machine slows every row)", "",
                 f"{load:.1f}", ""))
    return rows


def table(rows: list[Row]) -> str:
    return "\n".join(["| what | target | measured | result |", "|---|---|---|---|",
                      *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)])


def import_notes(costs: dict[str, Counter[str]]) -> str:
    lines = ["Where the imports go now (`-X importtime`, self time summed per top-level package, the smallest of 3 "
             "runs; the biggest six):", ""]
    for what, cost in costs.items():
        top = ", ".join(f"{name} {ms:.0f}" for name, ms in cost.most_common(6))
        lines.append(f"- {what}: {sum(cost.values()):.0f} ms in all; {top}")
    return "\n".join(lines)


NOTES = """\
How: `.venv/bin/python bench/cli.py --write` ({runs} rounds over the commands; CPU is the command's user and system
time, which other work on the machine changes less than the wall time). The installation is private and holds the
`tiny` image and a course of {students} students on `intro-shell`, provisioned, no guest running.

What the CLI did before (commit fbad21a; measured by hand on 2026-12-07 on this machine while other work ran, load
about 2.9, with the bytecode cache; medians of 9): `labkit --help` 662 ms, `labkit vm status` 814 ms, `labkit course
status --json` 805 ms, `labkit gradebook` 989 ms, `labkit lab validate` 939 ms, against 17 ms for `python -c pass`.
Every command, `--help` too, imported every command module, and through them SQLAlchemy and the 18 mapped models
(`labkit user`'s module imported the accounts service for its two role names), werkzeug (password hashing), Jinja2
and the lab loader (`labkit.grading`'s package imported its checks, which import the labs; `labkit lab`'s module
imported the renderer). `-X importtime` of `course status --json` then: 561 ms of imports, SQLAlchemy 260, labkit's
own modules 141 (the models 63 of them), werkzeug 24, Jinja2 17, asyncio (from SQLAlchemy) 10. `course status` then
validated and rendered the course's lab again only for a start order it does not print (80 to 90 ms), and at exit
Python's finalization walked the whole heap (about 100 ms once SQLAlchemy is loaded). The database was already opened
without Alembic when at head (one `SELECT version_num`); that stays. Also: with `PYTHONDONTWRITEBYTECODE=1` in the
environment (as in some sandboxes) Python compiles labkit's own modules at every start, 150 to 200 ms more on every
command; an installed labkit writes its bytecode cache once.

What changed: the root group (`labkit/cli/__init__.py`, `COMMANDS`) imports a command's module only when that command
runs or `--help` lists it, and the command modules import the layers below inside their verbs (through `App`, as
before for the services); `labkit.grading` loads its names on first use, like `labkit`; the role names live in
`labkit/services/roles.py`; `course status` asks `targets(..., order=False)`, which loads no lab; the root group
freezes the heap (`gc.freeze()`) at exit, so finalization does not walk it. So `labkit --help`
and `labkit lab validate` import no SQLAlchemy, and no command imports paramiko, pexpect, Flask or werkzeug unless it
uses them (tests/unit/core/test_cli_imports.py). What was left in a command that reads the database was mostly
SQLAlchemy's own import, then the declaration of the mapped models and their configuration at the first query: the
second baseline row, near or above 250 ms alone on this machine kind.

So the read-only commands (`vm status`, `course status`, `gradebook`) now read a SQLite database through Python's
`sqlite3` on a read-only connection, without SQLAlchemy (`labkit/services/sqlite_status.py`; docs/cli.md, "Status
commands read SQLite directly"). They build their output with the same functions as the ORM path
(`labkit/services/machine_truth.py`, `labkit/services/grade_choice.py`), and tests/unit/services/test_sqlite_status.py
compares both paths byte for byte and checks the reader's SQL against the migrated schema. Measured just before
(commit 949a0be, this script, 15 rounds, load 1.8 while other work ran): `vm status` 571 ms (CPU 473), `course status
--json` 578 ms (CPU 576), `course status` 598 ms (CPU 557), `gradebook` 538 ms (CPU 491). What they import now is
click, the runtime (to read each machine's processes: `labkit.runtime` and the overlays, no SQLAlchemy, paramiko or
Jinja2) and `sqlite3`. A PostgreSQL database still goes through SQLAlchemy, as does the rare status call that finds a
record out of date and has the machine service write it.
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="rounds over the commands (default 15)")
    parser.add_argument("--importtime", action="store_true", help="also print where each command's imports go")
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md "
                        "(implies --importtime)")
    args = parser.parse_args(argv)
    bench = Bench()
    chosen = commands()
    try:
        print("setting up the installation ...", file=sys.stderr)
        bench.setup()
        print(f"timing {len(chosen)} commands, {args.runs} rounds ...", file=sys.stderr)
        bench.measure(chosen, args.runs)
        costs = ({c.what: bench.importtime(c.argv) for c in chosen[2:]} if args.importtime or args.write else {})
    finally:
        bench.close()
    rows = rows_of(chosen, args.runs)
    print(table(rows))
    if costs:
        print("\n" + import_notes(costs))
    if args.write:
        write_report(SECTION, "bench/cli.py", rows,
                     notes=import_notes(costs) + "\n\n" + NOTES.format(runs=args.runs, students=STUDENTS))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
