"""Machines a class start is booting right now, so several starts in one course can boot at the same time.

A start holds the course lock only while it admits its machines (memory budget, per-student limit) and writes down
what it is about to boot; the boots themselves run without the lock. The next start admits against the machines
that run and the ones another start has promised to boot, so two starts cannot overbook the budget together. A
promise names its process (PID and start time): one left by a process that died is ignored.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from labkit.atomic import write_atomic
from labkit.runtime.process import ProcessRecord


def _folder(run_dir: Path, course: str) -> Path:
    return run_dir / f".course-{course}.starting"


def promised(run_dir: Path, course: str | None = None) -> dict[str, int]:
    """Machines promised by live starts of ``course`` (of every course when None): machine name -> memory in MB."""
    found: dict[str, int] = {}
    folders = [_folder(run_dir, course)] if course is not None else sorted(run_dir.glob(_folder(run_dir, "*").name))
    for path in (p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.json"))):
        try:
            data = json.loads(path.read_text())
            owner = ProcessRecord(int(data["pid"]), int(data["start_time"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if owner.alive():
            found.update({str(name): int(mb) for name, mb in data["machines"].items()})
        else:
            path.unlink(missing_ok=True)  # left by a start that died
    return found


@contextmanager
def promise(run_dir: Path, course: str, machines: dict[str, int]) -> Iterator[None]:
    """Write down ``machines`` (name -> MB) as being booted by this process until the ``with`` block ends."""
    folder = _folder(run_dir, course)
    folder.mkdir(parents=True, exist_ok=True)
    me = ProcessRecord.of(os.getpid())
    path = folder / f"{me.pid}-{secrets.token_hex(4)}.json"
    write_atomic(path, json.dumps({"pid": me.pid, "start_time": me.start_time, "machines": machines}))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
