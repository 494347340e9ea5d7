"""A course lab's time: setting its window, allowance and idle pause, the rules a start must pass, and what the
workspace's countdown shows.

The clock of a student begins at the first start of one of their machines of the lab, whoever starts it (their
`Attempt`, made then). A start is refused before the window opens, after the student's deadline, and after their
attempt was closed (by the sweeper at the deadline, or by their exam submission). A closed attempt also refuses the
student's own resets, snapshots and restores (`refuse_when_closed`); the instructor still may act on the machines.
The arithmetic is `labkit.services.lab_time.Clock`; the sweeper (`labkit.services.sweeper`) acts at the deadline.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.config import Settings
from labkit.errors import BadNameError, ConflictError, NotFoundError
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.lab_time import Clock
from labkit.services.lookup import course_by_name
from labkit.services.machine_states import LIVE
from labkit.services.models import Assignment, Attempt, CourseLab, Machine, Student, User

#: how long before their deadline a student is warned (the countdown turns to a warning, the sweeper records it)
WARN_BEFORE = dt.timedelta(minutes=5)
#: the longest time setting accepted: a year, in minutes
MAX_MINUTES = 366 * 24 * 60
#: ``Attempt.closed_reason`` values
DEADLINE, WINDOW, SUBMITTED = "deadline", "window", "submitted"

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m?)?$")
_UNSET = object()


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_minutes(text: str, what: str) -> int:
    """Minutes from ``90``, ``90m``, ``1h30m`` or ``2h``; one clear sentence for anything else (negative too)."""
    value = text.strip().lower().replace(" ", "")
    found = _DURATION.match(value) if value else None
    if value.startswith("-"):
        raise BadNameError(f"{what} cannot be negative: {text!r}")
    if found is None or not any(found.groups()):
        raise BadNameError(f"{what} {text!r} is not a duration: give minutes like 90, 90m, 1h30m or 2h")
    minutes = int(found.group(1) or 0) * 60 + int(found.group(2) or 0)
    return check_minutes(minutes, what)


def check_minutes(minutes: int, what: str) -> int:
    if minutes < 0:
        raise BadNameError(f"{what} cannot be negative: {minutes} minutes")
    if minutes == 0:
        raise BadNameError(f"{what} must be at least one minute (use --clear to remove it)")
    if minutes > MAX_MINUTES:
        raise BadNameError(f"{what} of {minutes} minutes is more than a year")
    return minutes


def parse_moment(text: str, what: str) -> dt.datetime:
    """An ISO 8601 moment (``2026-12-08T09:00``, ``2026-12-08 09:00+01:00``); without an offset it is the server's
    local time. Returned in UTC."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError as err:
        raise BadNameError(f"{what} {text!r} is not a date and time: give ISO 8601 like 2026-12-08T09:00 "
                           "(server's local time) or 2026-12-08T09:00+01:00") from err
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the server's local time zone
    return moment.astimezone(dt.UTC)


def _stamp(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Countdown:
    """What the workspace shows about one student's time on one lab (``/my/.../time`` answers it as JSON).

    ``state``: "unlimited" (no bound), "not-open" (before the window), "waiting" (bounded, their clock not begun),
    "running", "warning" (less than `WARN_BEFORE` left), "over" (deadline passed, or the attempt closed while its
    machines are still being frozen or stopped), "closed" (their attempt was closed and its machines stopped)."""

    state: str
    deadline: str | None
    remaining_seconds: int | None
    opens_at: str | None
    closed_reason: str | None
    exam: bool
    results_released: bool
    warned: bool
    #: an exam's released result as the student sees it (no hidden checks): {"points", "max_points"}, else None
    result: dict[str, float] | None = None

    def to_json(self) -> dict[str, object]:
        return {"state": self.state, "deadline": self.deadline, "remaining_seconds": self.remaining_seconds,
                "opens_at": self.opens_at, "closed_reason": self.closed_reason, "exam": self.exam,
                "results_released": self.results_released, "warned": self.warned, "result": self.result}


def countdown_of(lab: CourseLab, attempt: Attempt | None, now: dt.datetime) -> Countdown:
    clock = Clock.of(lab, attempt)
    deadline, remaining = clock.deadline(), clock.remaining(now)
    if attempt is not None and attempt.closed_at is not None:
        state = "closed"
    elif clock.not_yet_open(now):
        state = "not-open"
    elif not clock.limited:
        state = "unlimited"
    elif deadline is None:
        state = "waiting"
    elif clock.over(now):
        state = "over"
    elif remaining is not None and remaining <= WARN_BEFORE:
        state = "warning"
    else:
        state = "running"
    return Countdown(state, _stamp(deadline), None if remaining is None else int(remaining.total_seconds()),
                     _stamp(lab.opens_at), attempt.closed_reason if attempt else None, lab.exam,
                     lab.results_released_at is not None, bool(attempt and attempt.warned_at))


def course_lab(session: Session, course: str, lab: str) -> CourseLab:
    found = next((cl for cl in course_by_name(session, course).labs if cl.lab_id == lab), None)
    if found is None:
        raise NotFoundError(f"course {course} has no lab {lab!r}")
    return found


def attempt_of(session: Session, student_pk: int, lab_pk: int) -> Attempt | None:
    return session.scalar(select(Attempt).where(Attempt.student_id == student_pk, Attempt.course_lab_id == lab_pk))


def refusal(lab: CourseLab, attempt: Attempt | None, now: dt.datetime) -> str | None:
    """Why a student may not start (or change) their machines of ``lab`` now; None when they may."""
    clock = Clock.of(lab, attempt)
    if attempt is not None and attempt.closed_at is not None:
        why = {SUBMITTED: "you submitted it", WINDOW: "the lab closed", DEADLINE: "your time ran out"}
        return (f"your time on lab {lab.lab_id} has ended ({why.get(attempt.closed_reason or '', 'it was closed')}"
                f" at {attempt.closed_at:%Y-%m-%d %H:%M} UTC): its machines can no longer be started or changed")
    if clock.not_yet_open(now):
        assert lab.opens_at is not None
        return f"lab {lab.lab_id} opens at {lab.opens_at:%Y-%m-%d %H:%M} UTC: its machines start from then"
    if clock.over(now):
        return f"your time on lab {lab.lab_id} ended at {clock.deadline():%Y-%m-%d %H:%M} UTC"
    return None


def refuse_when_closed(session: Session, machine_pk: int, actor: str, action: str) -> None:
    """Refuse ``action`` on a course machine when ``actor`` is the student who owns it and their attempt on its lab
    is closed (their time ended or they submitted): the student can no longer change what was frozen. Instructors
    and other callers are not refused."""
    row = session.execute(select(Assignment, Student, User).join(Student, Assignment.student_id == Student.id)
                          .join(User, Student.user_id == User.id)
                          .where(Assignment.machine_id == machine_pk)).first()
    if row is None or row[2].username != actor:
        return
    assignment, student, _user = row
    attempt = attempt_of(session, student.id, assignment.course_lab_id)
    if attempt is not None and attempt.closed_at is not None:
        raise ConflictError(f"cannot {action} {assignment.machine}: "
                            + (refusal(assignment.course_lab, attempt, now_utc()) or "your time has ended"))


class Timing:
    """``labkit course time|exam|release``, and the time rules of a start."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()

    # ---- settings ----------------------------------------------------------------------------------------------
    def set_time(self, course: str, lab: str, *, opens: object = _UNSET, closes: object = _UNSET,
                 allowance: object = _UNSET, idle: object = _UNSET, clear: bool = False) -> dict[str, object]:
        """Change the lab's window (``opens``/``closes``: datetimes or None), ``allowance`` and ``idle`` minutes (int
        or None); what is not given stays, unless ``clear`` (everything not given is removed)."""
        with self.db.transaction() as session:
            row = course_lab(session, course, lab)
            values = {"opens_at": row.opens_at, "closes_at": row.closes_at,
                      "allowance_minutes": row.allowance_minutes, "idle_minutes": row.idle_minutes}
            if clear:
                values = dict.fromkeys(values)
            for key, given in (("opens_at", opens), ("closes_at", closes), ("allowance_minutes", allowance),
                               ("idle_minutes", idle)):
                if given is not _UNSET:
                    values[key] = given
            for key in ("allowance_minutes", "idle_minutes"):
                minutes = values[key]
                if minutes is not None:
                    check_minutes(int(minutes), "the allowance" if key == "allowance_minutes" else "the idle time")
            opens_at, closes_at = values["opens_at"], values["closes_at"]
            if isinstance(opens_at, dt.datetime) and isinstance(closes_at, dt.datetime) and closes_at <= opens_at:
                raise BadNameError(f"the window of {lab} would close ({_stamp(closes_at)}) before it opens "
                                   f"({_stamp(opens_at)})")
            for key, value in values.items():
                setattr(row, key, value)
            summary = self._summary(row)
            record(session, self.actor, "lab-time", f"{course}/{lab}",
                   ", ".join(f"{k} {v}" for k, v in summary.items() if k in values))
            return summary

    def set_exam(self, course: str, lab: str, on: bool) -> dict[str, object]:
        """Turn exam mode on or off. Turning it on hides results again until `release`; the guests' network is cut
        from their next start (`exam_reach`)."""
        with self.db.transaction() as session:
            row = course_lab(session, course, lab)
            row.exam = on
            if on:
                row.results_released_at = None
            record(session, self.actor, "lab-exam", f"{course}/{lab}", "on" if on else "off")
            return self._summary(row)

    def release(self, course: str, lab: str) -> dict[str, object]:
        """Show the students their results (exam mode): self-check results and feedback, submission grades."""
        with self.db.transaction() as session:
            row = course_lab(session, course, lab)
            if not row.exam:
                raise ConflictError(f"lab {lab} of {course} is not in exam mode: its results are never held back")
            row.results_released_at = now_utc()
            record(session, self.actor, "lab-release", f"{course}/{lab}", "results released")
            return self._summary(row)

    def show(self, course: str, lab: str | None = None) -> list[dict[str, object]]:
        with self.db.transaction() as session:
            labs = course_by_name(session, course).labs
            if lab is not None:
                labs = [course_lab(session, course, lab)]
            return [self._summary(row) for row in labs]

    @staticmethod
    def _summary(row: CourseLab) -> dict[str, object]:
        return {"lab": row.lab_id, "opens_at": _stamp(row.opens_at), "closes_at": _stamp(row.closes_at),
                "allowance_minutes": row.allowance_minutes, "idle_minutes": row.idle_minutes, "exam": row.exam,
                "results_released_at": _stamp(row.results_released_at)}

    # ---- students ----------------------------------------------------------------------------------------------
    def countdown(self, course: str, student: str, lab: str, now: dt.datetime | None = None) -> Countdown:
        with self.db.transaction() as session:
            row = course_lab(session, course, lab)
            who = next((s for s in row.course.students if s.sid == student), None)
            if who is None:
                raise NotFoundError(f"course {course} has no student {student!r}")
            shown = countdown_of(row, attempt_of(session, who.id, row.id), now or now_utc())
            if shown.state == "closed" and session.scalar(
                    select(Machine.id).join(Assignment, Assignment.machine_id == Machine.id)
                    .where(Assignment.student_id == who.id, Assignment.course_lab_id == row.id,
                           Machine.state.in_([s.value for s in LIVE])).limit(1)) is not None:
                # closed, but its machines are still being frozen or stopped (as recorded): not over yet
                shown = dataclasses.replace(shown, state="over")
        if shown.exam and shown.results_released:
            from labkit.services.grading import Grading

            grade = next((g for g in Grading(self.settings, self.db, self.actor).latest(course, student, False)
                          if g.lab == lab), None)
            if grade is not None:
                shown = dataclasses.replace(shown, result={"points": grade.points, "max_points": grade.max_points})
        return shown

    def results_hidden(self, course: str, lab: str) -> bool:
        """Whether students may not see their results of ``lab`` yet (exam mode, results not released)."""
        with self.db.transaction() as session:
            row = course_lab(session, course, lab)
            return row.exam and row.results_released_at is None

    def admit(self, session: Session, course: str, pairs: Iterable[tuple[str, str]], now: dt.datetime,
              ) -> dict[tuple[str, str], str]:
        """For each (student, lab) a start wants: why it is refused (missing: allowed)."""
        refused: dict[tuple[str, str], str] = {}
        course_row = course_by_name(session, course)
        labs = {cl.lab_id: cl for cl in course_row.labs}
        students = {s.sid: s for s in course_row.students}
        for sid, lab_id in pairs:
            why = refusal(labs[lab_id], attempt_of(session, students[sid].id, labs[lab_id].id), now)
            if why is not None:
                refused[(sid, lab_id)] = why
        return refused

    def begin(self, session: Session, course: str, pairs: Iterable[tuple[str, str]], now: dt.datetime) -> None:
        """Begin the clocks of the students' labs being started now (only the first start sets ``began_at``)."""
        course_row = course_by_name(session, course)
        labs = {cl.lab_id: cl for cl in course_row.labs}
        students = {s.sid: s for s in course_row.students}
        for sid, lab_id in sorted(set(pairs)):
            student, lab = students[sid], labs[lab_id]
            attempt = attempt_of(session, student.id, lab.id)
            if attempt is None:
                attempt = Attempt(student_id=student.id, course_lab_id=lab.id)
                session.add(attempt)
            if attempt.began_at is None:
                attempt.began_at = now
                record(session, self.actor, "lab-begin", f"{course}/{sid}/{lab_id}",
                       f"clock begun at {_stamp(now)}")
