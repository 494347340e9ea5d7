"""The sweeper: what happens on its own as time passes. Run every few seconds by the web server (one worker at a time,
`sweep_if_due`) and by ``labkit course sweep`` (cron, tests).

1. A student whose deadline is near (`timing.WARN_BEFORE`) is warned once: ``Attempt.warned_at`` is set and the
   workspace's countdown turns to a warning.
2. At a student's deadline their attempt is closed (``closed_at``, ``closed_reason``: "window" when the window's
   close ended it, else "deadline") and their machines of the lab are stopped; in exam mode they are first frozen and
   submitted, graded with every check, hidden ones too (`finish`). A closed attempt refuses the student's starts,
   resets, snapshots and restores (`timing.refuse_when_closed`).
3. A running machine of a lab with ``idle_minutes`` whose activity mark (``RUN_DIR/activity``, touched by its
   supervisor on console input and while an SSH or other forwarded connection is open) is older than that is paused
   with the backend's pause (UML mconsole stop, QEMU stop), keeping its running state; a start click or opening the
   workspace resumes it.

Closing an attempt is a conditional UPDATE (``closed_at IS NULL``): when two sweeps meet, one of them acts.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from labkit.config import Settings
from labkit.errors import ConflictError, LabkitError
from labkit.runtime import get_backend
from labkit.runtime.base import State, last_activity
from labkit.services.audit import record
from labkit.services.db import Database
from labkit.services.lab_time import Clock
from labkit.services.models import Assignment, Attempt, Course, CourseLab, Machine, Student
from labkit.services.timing import DEADLINE, SUBMITTED, WARN_BEFORE, WINDOW, attempt_of, course_lab, now_utc

if TYPE_CHECKING:
    from labkit.services.machines import Machines

#: the name the sweeper's actions carry in the audit log
SWEEPER = "labkit-sweeper"


@dataclass
class SweepReport:
    warned: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    submitted: list[str] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, list[str]]:
        return {"warned": self.warned, "closed": self.closed, "submitted": self.submitted, "paused": self.paused,
                "failed": self.failed}


class Sweeper:
    """Warn, close (stop or freeze and submit) and pause idle machines: `sweep` does one round."""

    def __init__(self, settings: Settings, db: Database, actor: str = SWEEPER) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor

    def sweep(self, now: dt.datetime | None = None) -> SweepReport:
        now = now or now_utc()
        report = SweepReport()
        for course, sid, lab, reason in self._due(now, report):
            try:
                how = finish(self.settings, self.db, self.actor, course, sid, lab, reason, now)
                if how is not None:
                    report.closed.append(f"{course}/{sid}/{lab}")
                if how == SUBMITTED:
                    report.submitted.append(f"{course}/{sid}/{lab}")
            except LabkitError as err:
                report.failed.append(f"{course}/{sid}/{lab}: {err}")
        self._pause_idle(now, report)
        return report

    def _due(self, now: dt.datetime, report: SweepReport) -> list[tuple[str, str, str, str]]:
        """Warn those near their deadline (recorded here), and list those past it: (course, student, lab, reason)."""
        due: list[tuple[str, str, str, str]] = []
        with self.db.transaction() as session:
            rows = session.execute(
                select(Attempt, CourseLab, Student, Course).join(CourseLab, Attempt.course_lab_id == CourseLab.id)
                .join(Student, Attempt.student_id == Student.id).join(Course, CourseLab.course_id == Course.id)
                .where(Attempt.closed_at.is_(None), Attempt.began_at.is_not(None),
                       (CourseLab.closes_at.is_not(None)) | (CourseLab.allowance_minutes.is_not(None))))
            for attempt, lab, student, course in rows:
                clock = Clock.of(lab, attempt)
                deadline = clock.deadline()
                if deadline is None:
                    continue
                where = f"{course.name}/{student.sid}/{lab.lab_id}"
                if clock.over(now):
                    window = lab.closes_at is not None and deadline == lab.closes_at + clock.extra
                    due.append((course.name, student.sid, lab.lab_id, WINDOW if window else DEADLINE))
                elif deadline - now <= WARN_BEFORE and attempt.warned_at is None:
                    attempt.warned_at = now
                    record(session, self.actor, "lab-warn", where, f"time ends at {deadline:%H:%M:%S} UTC")
                    report.warned.append(where)
        return due

    def _pause_idle(self, now: dt.datetime, report: SweepReport) -> None:
        from labkit.services.machines import Machines

        with self.db.transaction() as session:
            rows = session.execute(
                select(Machine.name, CourseLab.idle_minutes).join(Assignment, Assignment.machine_id == Machine.id)
                .join(CourseLab, Assignment.course_lab_id == CourseLab.id)
                .where(CourseLab.idle_minutes.is_not(None), Machine.state == State.RUNNING.value)).all()
        if not rows:
            return
        machines = Machines(self.settings, self.db, self.actor)
        limits = {name: minutes for name, minutes in rows}
        for view in machines.status(names=sorted(limits)):
            if view.state != State.RUNNING.value:
                continue
            with self.db.transaction() as session:
                machine = session.scalar(select(Machine).where(Machine.name == view.name))
                assert machine is not None
                last = last_activity(machines.spec(machine))
                can_pause = get_backend(machine.backend).capabilities.pause
            if not can_pause or last is None:  # no mark: a supervisor from before marks were kept
                continue
            idle = now.timestamp() - last
            if idle < limits[view.name] * 60:
                continue
            try:
                machines.pause(view.name)
            except LabkitError as err:  # it stopped or changed meanwhile: the next round looks again
                report.failed.append(f"{view.name}: {err}")
                continue
            with self.db.transaction() as session:
                record(session, self.actor, "idle-pause", view.name,
                       f"no console input or SSH session for {int(idle // 60)} min")
            report.paused.append(view.name)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def finish(settings: Settings, db: Database, actor: str, course: str, sid: str, lab: str, reason: str,
           now: dt.datetime | None = None) -> str | None:
    """End a student's attempt on a lab: in exam mode freeze and submit their machines (graded with every check;
    returns "submitted"), stop them (returns "stopped"), and close the attempt (once: None when it was closed
    already). ``reason``: "deadline" or "window" (the sweeper), or "submitted" (the student's own Submit).

    At a deadline the attempt is closed first, so a second sweeper finds nothing to do; if the submission fails
    then, the machines still stop (their disks keep the work for a later ``labkit submit``) and the error is raised.
    A student's Submit submits first and closes after: if the submission fails, they can try again."""
    from labkit.services.courses import Courses
    from labkit.services.submissions import Submissions

    now = now or now_utc()
    courses = Courses(settings, db, actor)
    with db.transaction() as session:
        exam = course_lab(session, course, lab).exam
    if reason == SUBMITTED:
        if exam:
            Submissions(settings, db, actor).submit(course, sid, lab)
        if not _close(db, actor, course, sid, lab, reason, now):
            return None
        courses.stop(course, student=sid, lab=lab)
        return SUBMITTED if exam else "stopped"
    if not _close(db, actor, course, sid, lab, reason, now):
        return None
    if exam:
        try:
            Submissions(settings, db, actor).submit(course, sid, lab, skip_untouched=True)
        finally:  # whatever the submission did, the time is over: the machines stop
            courses.stop(course, student=sid, lab=lab)
        return SUBMITTED
    courses.stop(course, student=sid, lab=lab)
    return "stopped"


def _close(db: Database, actor: str, course: str, sid: str, lab: str, reason: str, now: dt.datetime) -> bool:
    """Close the student's attempt (made if missing) unless it is closed already: a conditional UPDATE, so of two
    callers at once exactly one gets True."""
    with db.transaction() as session:
        row = course_lab(session, course, lab)
        student = next((s for s in row.course.students if s.sid == sid), None)
        if student is None:
            raise ConflictError(f"course {course} has no student {sid!r}")
        attempt = attempt_of(session, student.id, row.id)
        if attempt is None:
            attempt = Attempt(student_id=student.id, course_lab_id=row.id, began_at=now)
            session.add(attempt)
            session.flush()
        done = session.execute(update(Attempt).where(Attempt.id == attempt.id, Attempt.closed_at.is_(None))
                               .values(closed_at=now, closed_reason=reason)).rowcount
        if done:
            record(session, actor, "lab-close", f"{course}/{sid}/{lab}", reason + (" (exam)" if row.exam else ""))
        return bool(done)


def sweep_if_due(settings: Settings, every: float, db: Database) -> SweepReport | None:
    """One sweep, unless another process sweeps right now or swept less than ``every`` seconds ago (several server
    workers each call this; one of them acts). The lock is a file lock taken without waiting."""
    lock_path = settings.run_dir / ".sweeper.lock"
    stamp = settings.run_dir / ".sweeper.last"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        last = _mtime(stamp)
        if last is not None and time.time() - last < every * 0.9:
            return None
        stamp.touch()
        return Sweeper(settings, db).sweep()
    finally:
        os.close(fd)


def come_back(settings: Settings, db: Database, actor: str, course: str, student: str, lab: str) -> list[str]:
    """The student is back (they opened the lab's workspace): resume their paused machines of ``lab`` where they
    were. Returns the machines resumed."""
    from labkit.services.machines import Machines

    with db.transaction() as session:
        row = course_lab(session, course, lab)
        names = [a.vm.name for s in row.course.students if s.sid == student for a in s.assignments
                 if a.course_lab_id == row.id]
    return resume_paused(Machines(settings, db, actor), names)


def resume_paused(machines: Machines, names: list[str]) -> list[str]:
    """Resume those of ``names`` that are paused (an idle pause, or one by hand)."""
    resumed = []
    for view in machines.status(names=names) if names else []:
        if view.state == State.PAUSED.value:
            try:
                machines.resume(view.name)
            except LabkitError:  # it stopped or was resumed meanwhile
                continue
            resumed.append(view.name)
    return resumed
