"""An idle machine is paused by the sweeper and goes on where it was when the student comes back (issue 14, section
3), on a real UML guest: a counter loop started in the guest survives the pause and both ways back (opening the
workspace, a start click), with the same process id, so nothing rebooted. The sweeper's ``now`` is injected: no test
waits for minutes."""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest
from conftest import LABS, make_course
from guest_console import console_run
from sqlalchemy import select

from labkit.config import Settings
from labkit.runtime.console import connect
from labkit.runtime.rundir import RunDir
from labkit.services.models import Event
from labkit.services.sweeper import Sweeper, come_back
from labkit.services.timing import Timing

pytestmark = [pytest.mark.guest, pytest.mark.timeout(300)]

COURSE, LAB = "idle1", "intro-shell"
LATER = dt.timedelta(minutes=2)


def count(console: object, pid: str) -> int:
    """The guest's counter, after checking its loop (``pid``) still runs."""
    out = console_run(console, f"kill -0 {pid} && (cat /tmp/count 2>/dev/null || echo 0)").split()  # type: ignore[arg-type]
    return int(out[-1])


def counts_past(console: object, pid: str, seen: int) -> int:
    """The counter once it has gone past ``seen`` (the same loop, ``pid``, still running: nothing rebooted)."""
    deadline = time.monotonic() + 30
    while (now := count(console, pid)) <= seen:
        assert time.monotonic() < deadline, f"the counter loop stopped at {now}"
        time.sleep(0.1)
    return now


def test_an_idle_machine_is_paused_and_resumed_with_its_processes(lk_settings: Settings) -> None:
    courses = make_course(lk_settings, COURSE, [LABS / LAB], [("alice", "Alice", "a@example.org")])
    try:
        Timing(lk_settings, courses.db, "teacher").set_time(COURSE, LAB, idle=1)
        courses.start(COURSE)
        name = courses.targets(COURSE)[0].name
        mark = RunDir(lk_settings.run_dir / name).activity
        sweeper = Sweeper(lk_settings, courses.db)
        with connect(courses.machines.console(name).socket) as console:
            console_run(console, "true", timeout=60)
            pid = console_run(console, "(i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done) "
                                       ">/dev/null 2>&1 & echo $!").split()[-1]
            first = counts_past(console, pid, 2)
            deadline = time.monotonic() + 20
            assert time.time() - mark.stat().st_mtime < 30  # console input and the start marked it
            assert sweeper.sweep().paused == []  # in use: not paused
            old = time.time() - 3600
            os.utime(mark, (old, old))
            while mark.stat().st_mtime == old:  # typing on the console marks it again (looked at once a second)
                assert time.monotonic() < deadline, "console input does not mark the machine as used"
                console_run(console, "true")

            # no console input and no SSH session for longer than the idle time: paused, its memory kept
            assert sweeper.sweep(dt.datetime.now(dt.UTC) + LATER).paused == [name]
            assert courses.machines.status(name)[0].state == "paused"
            # the student opens the workspace: it goes on where it was
            assert come_back(lk_settings, courses.db, "alice", COURSE, "alice", LAB) == [name]
            assert courses.machines.status(name)[0].state == "running"
            second = counts_past(console, pid, first)
            assert sweeper.sweep().paused == []  # the resume counts as use

            # idle again; this time a start click brings it back
            assert sweeper.sweep(dt.datetime.now(dt.UTC) + LATER).paused == [name]
            rows = courses.start(COURSE, student="alice")
            assert [row["state"] for row in rows] == ["running"]
            counts_past(console, pid, second)
        with courses.db.transaction() as session:
            paused = session.scalars(select(Event).where(Event.action == "idle-pause")).all()
            assert [(e.actor, e.target) for e in paused] == [("labkit-sweeper", name)] * 2
    finally:
        for view in courses.machines.status():
            if view.state != "stopped":
                courses.machines.kill(view.name)
        courses.db.close()
