"""Pid files that cannot be fooled by a reused PID: each records the process's start time from /proc/<pid>/stat.

Backends keep no process handles in memory (the CLI exits, the web app restarts), so the run folder's pid files plus
/proc are the only truth. A pid file names a live process only if that PID exists now *and* started at the recorded
time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from labkit.atomic import write_atomic


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat from field 3 (the state) on, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            stat = file.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')', so split after the last ')'.
    return stat[stat.rindex(")") + 2:].split()


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks after boot), or None when there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def process_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, Z, t ...), or None when it is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def process_group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


class ProcessRecord:
    """A PID together with its start time: the identity of one process for as long as the host runs.

    A plain value class, not a dataclass: the console supervisor imports this module, and `dataclasses` (with
    `inspect`) would cost every running machine a megabyte (docs/runtime.md, "Memory")."""

    __slots__ = ("pid", "start_time")

    def __init__(self, pid: int, start_time: int) -> None:
        self.pid = pid
        self.start_time = start_time

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ProcessRecord) and other.pid == self.pid
                and other.start_time == self.start_time)

    def __hash__(self) -> int:
        return hash((self.pid, self.start_time))

    def __repr__(self) -> str:
        return f"ProcessRecord(pid={self.pid!r}, start_time={self.start_time!r})"

    @classmethod
    def of(cls, pid: int) -> ProcessRecord:
        start = process_start_time(pid)
        if start is None:
            raise ProcessLookupError(pid)
        return cls(pid, start)

    def alive(self) -> bool:
        """True while this very process exists and has not exited (a zombie counts as gone)."""
        fields = _stat_fields(self.pid)  # one read: status views ask this of every machine at every page view
        return fields is not None and int(fields[19]) == self.start_time and fields[0] not in ("Z", "X")

    def wait_gone(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for this process to end; True once it has, False when it still runs."""
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def write(self, path: Path) -> None:
        """Write ``PID START_TIME`` atomically."""
        write_atomic(path, f"{self.pid} {self.start_time}\n")

    @classmethod
    def read(cls, path: Path) -> ProcessRecord | None:
        """The record in ``path``, or None when the file is missing or unreadable (a crash mid-write cannot happen:
        writes are atomic, so garbage means someone else wrote it)."""
        try:
            pid, start = path.read_text().split()
            return cls(int(pid), int(start))
        except (OSError, ValueError):
            return None

    def send(self, signum: int) -> bool:
        """Send ``signum`` if this is still the recorded process; False when it was already gone."""
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)
            return True
        return False

    def kill_group(self, signum: int = signal.SIGKILL) -> bool:
        """Signal the process group this process leads (its PID is the group id).

        Safe even after the leader died: the kernel does not hand out a PID while a process group still uses it as
        its id, so a non-empty group with this id is still ours.
        """
        leader_alive = self.alive()
        if not leader_alive and not process_group_members(self.pid):
            return False
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            return False
        return True


def processes_running(argv: list[str]) -> list[int]:
    """PIDs of live processes whose command line is exactly ``argv``.

    UML's helper threads are clones of ``linux`` that keep its command line, and one of them (the SIGWINCH thread a tty
    console gets) calls setsid(), leaving the process group. A machine's argv holds its unique ``umid=`` and
    ``uml_dir=``, so it names that machine's processes and no one else's.
    """
    wanted = b"\0".join(os.fsencode(a) for a in argv) + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes() != wanted:
                continue
        except OSError:
            continue
        if process_state(int(entry.name)) not in (None, "Z", "X"):
            found.append(int(entry.name))
    return found


def end_processes(pgid: int | None, argv: list[str] | None, timeout: float = 5.0) -> list[int]:
    """SIGKILL process group ``pgid`` and every process running exactly ``argv``, until none is left or ``timeout``
    passes; return the PIDs still alive (empty on success)."""
    deadline = time.monotonic() + timeout
    while True:
        left = set(process_group_members(pgid) if pgid else ()) | set(processes_running(argv) if argv else ())
        if not left:
            return []
        if pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return sorted(left)
        time.sleep(0.05)
