"""What every benchmark script shares: its measurement loop, a description of the machine it ran on, and the rewrite
of its own section of docs/benchmarks.md (the other scripts' sections are left as they are)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "docs" / "benchmarks.md"

#: One row of a section's table: what, target, measured, result.
Row = tuple[str, str, str, str]


def refuse_unknown(parser: argparse.ArgumentParser, wanted: Iterable[str], known: Iterable[str]) -> None:
    """Stop with a usage error if ``wanted`` names a measurement the script does not have."""
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        parser.error(f"unknown measurement {', '.join(unknown)}; choose from {', '.join(known)}")


def measure(measurements: Mapping[str, Callable[[], None]], names: Iterable[str], rows: list[Row]) -> None:
    """Run the named measurements in this order; each appends its row to ``rows``, shown as it comes."""
    for name in names:
        print(f"running {name} ...", file=sys.stderr)
        measurements[name]()
        print(f"  {rows[-1]}", file=sys.stderr)


def machine_description() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    linux = subprocess.run(["linux", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {mem_kb / 1048576:.0f} GiB memory, host kernel {platform.release()}, "
            f"UML kernel {linux}, Python {platform.python_version()}")


def load_row(when: str = "when the run ended") -> Row:
    """The host's 1-minute load average as a row: other work on the machine slows every figure."""
    return (f"load average (1 min) {when}", "", f"{os.getloadavg()[0]:.1f}", "")


def show_rows(section: str, script: str, rows: list[Row], write: bool, notes: str = "") -> None:
    """Print the rows, and with ``write`` make them ``section`` of docs/benchmarks.md (`write_report`)."""
    for row in rows:
        print(" | ".join(row))
    if write:
        write_report(section, script, rows, notes)


def write_report(section: str, script: str, rows: list[Row], notes: str = "") -> None:
    """Replace ``section`` (e.g. "## Engine") of docs/benchmarks.md with ``rows`` and then ``notes`` (Markdown), or
    append it if it is new."""
    table = ["| what | target | measured | result |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    body = "\n".join([
        section, "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `{script}` on: {machine_description()}.", "",
        *table, "",
        *([notes.strip(), ""] if notes.strip() else []),
    ])
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n\nEach section is rewritten by its script.\n\n"
    if section in text:
        head, _, rest = text.partition(section)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        text = head + body + tail
    else:
        text = text.rstrip() + "\n\n" + body
    REPORT.write_text(text)
