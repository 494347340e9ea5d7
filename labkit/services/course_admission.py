"""Admission: whether a class-wide start may boot its machines (the course's memory budget and per-student limit).

A start is refused whole rather than half-done. Machines that run, and machines another start is booting right now
(`labkit.services.starting`), count as used. Only the course's own machines are read from their processes for it
(reconciled); the budget counts the other machines of the installation as their records say, so a click does not scan
every machine (each of them is reconciled by its own actions and status reads).

Paused machines (paused by the idle sweep, `labkit.services.sweeper`, or by hand) are counted apart: a paused guest
keeps its memory, so it counts in the memory budget (and a refusal says how much of it paused machines hold: stopping
them frees it), but it uses no CPU, so it does not count in a student's limit of machines running at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from labkit.errors import AdmissionError
from labkit.runtime.base import State
from labkit.services import starting
from labkit.services.machine_records import MachineView
from labkit.services.machine_states import LIVE


@dataclass(frozen=True)
class Target:
    """One student machine a class-wide action applies to."""

    student: str
    lab: str
    machine: str
    name: str
    memory_mb: int
    wave: int


@dataclass(frozen=True)
class Limits:
    """What a course allows at once: memory of running machines, and running machines per student."""

    budget_mb: int
    per_student: int
    #: machine name -> student id, for every machine of the course
    owners: dict[str, str]


def host_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def default_budget_mb() -> int:
    """Three quarters of the host's memory: the rest stays for the host, the supervisors and page cache."""
    return host_memory_mb() * 3 // 4


def admit(run_dir: Path, course: str, targets: list[Target], views: list[MachineView], limits: Limits,
          elsewhere: dict[str, int]) -> list[Target]:
    """The targets to boot: those not live and not being booted by another start. Raises `AdmissionError` if they
    would exceed the memory budget or a student's limit. ``views`` is the truth about the course's machines,
    ``elsewhere`` the memory (MB) of the installation's other machines that run or are being booted (call it under
    the course lock, so no other start of the course admits in between)."""
    live = {s.value for s in LIVE}
    by_name = {view.name: view for view in views}
    booting = {m: mb for m, mb in starting.promised(run_dir, course).items()
               if m in by_name and by_name[m].state not in live}
    wanted = [t for t in targets if by_name[t.name].state not in live and t.name not in booting]
    others = {m: mb for m, mb in elsewhere.items() if m not in by_name}
    running = {v.name: v.memory_mb for v in by_name.values() if v.state in live} | booting | others
    used = sum(running.values())
    needed = sum(t.memory_mb for t in wanted)
    paused = {v.name for v in by_name.values() if v.state == State.PAUSED.value}
    if used + needed > limits.budget_mb:
        held = sum(mb for machine, mb in running.items() if machine in paused)
        by: dict[str, int] = {}
        for machine, memory in running.items():
            owner = limits.owners.get(machine, f"machine {machine}")
            by[owner] = by.get(owner, 0) + memory
        top = ", ".join(f"{who} {mb} MB" for who, mb in sorted(by.items(), key=lambda kv: -kv[1])[:8])
        raise AdmissionError(f"starting {len(wanted)} machines needs {needed} MB, but {used} MB of the "
                             f"{limits.budget_mb} MB memory budget are in use" + (f" (by {top})" if top else "")
                             + (f"; {held} MB of it by {len(paused)} paused machines" if held else ""))
    counts: dict[str, int] = {}
    for machine in running:
        if machine in limits.owners and machine not in paused:
            counts[limits.owners[machine]] = counts.get(limits.owners[machine], 0) + 1
    for target in wanted:
        counts[target.student] = counts.get(target.student, 0) + 1
    over = sorted(sid for sid, n in counts.items() if n > limits.per_student)
    if over:
        raise AdmissionError(f"students {', '.join(over)} would run more than {limits.per_student} machines at once "
                             "(the course's per-student limit)")
    return wanted
