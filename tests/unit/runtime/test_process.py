"""Pid files with start times, and ending process groups and command lines (real child processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from labkit.runtime.process import (
    ProcessRecord,
    end_processes,
    process_group_members,
    process_start_time,
    processes_running,
)


def test_record_round_trip_and_identity(tmp_path: Path) -> None:
    me = ProcessRecord.of(os.getpid())
    assert me.alive()
    me.write(tmp_path / "x.pid")
    assert ProcessRecord.read(tmp_path / "x.pid") == me
    # Same PID, other start time: a reused PID is not our process.
    assert not ProcessRecord(me.pid, me.start_time + 1).alive()
    assert ProcessRecord.read(tmp_path / "missing.pid") is None
    (tmp_path / "bad.pid").write_text("garbage")
    assert ProcessRecord.read(tmp_path / "bad.pid") is None


def test_zombie_counts_as_gone() -> None:
    child = subprocess.Popen(["true"])
    record = ProcessRecord.of(child.pid)
    deadline = time.monotonic() + 5
    while record.alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not record.alive()  # exited, not yet reaped
    child.wait()
    assert process_start_time(child.pid) is None or not record.alive()


def test_end_processes_kills_the_group_and_escaped_members() -> None:
    # A group leader with a child, and a process that left the group (setsid) but runs the same command line.
    argv = [sys.executable, "-c", "import time; time.sleep(60)", "labkit-test-marker"]
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], process_group=0)
    escaped = subprocess.Popen(argv, start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while len(process_group_members(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(process_group_members(leader.pid)) == 2
        assert processes_running(argv) == [escaped.pid]
        assert end_processes(leader.pid, argv) == []
        assert process_group_members(leader.pid) == []
        assert processes_running(argv) == []
    finally:
        for proc in (leader, escaped):
            proc.kill()
            proc.wait()
