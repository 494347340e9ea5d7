"""Exam mode, for the student and the instructor: the student's Submit ends their exam, and the instructor sees who
is in and who has submitted.

In an exam lab a Submit is final: the attempt is closed ("submitted"), the machines are frozen and submitted
(graded with every check, hidden ones too) and stopped, and the student can no longer start or change them
(`labkit.services.sweeper.finish` does it, as at the deadline). Outside exam mode a Submit is the ordinary one
(`labkit.services.submissions`), repeatable.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from labkit.config import Settings
from labkit.errors import ConflictError
from labkit.services.audit import current_actor
from labkit.services.db import Database
from labkit.services.lab_time import Clock
from labkit.services.machine_states import is_live
from labkit.services.models import Attempt, Submission
from labkit.services.submissions import Submissions, SubmissionView
from labkit.services.sweeper import finish
from labkit.services.timing import SUBMITTED, attempt_of, course_lab, now_utc


class Exams:
    """``labkit course exam-status``, and the student's Submit."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()

    def submit(self, course: str, student: str, lab: str) -> list[SubmissionView]:
        """The student's Submit of ``lab``: final in exam mode (see the module), else an ordinary submission."""
        with self.db.transaction() as session:
            row = course_lab(session, course, lab)
            exam = row.exam
            who = next((s for s in row.course.students if s.sid == student), None)
            attempt = attempt_of(session, who.id, row.id) if who is not None else None
            if exam and attempt is not None and attempt.closed_at is not None:
                raise ConflictError(f"your exam {lab} has ended ({attempt.closed_reason} at "
                                    f"{attempt.closed_at:%Y-%m-%d %H:%M} UTC): it cannot be submitted again")
        submissions = Submissions(self.settings, self.db, self.actor)
        if not exam:
            return submissions.submit(course, student, lab)
        finish(self.settings, self.db, self.actor, course, student, lab, SUBMITTED)
        return [s for s in submissions.list(course, student) if s.lab == lab][-1:]

    def status(self, course: str, lab: str, now: dt.datetime | None = None) -> list[dict[str, object]]:
        """Every student of the lab: whether they began, their deadline, whether they are in (a machine live),
        whether their attempt is closed and why, and when they last submitted."""
        from labkit.services.machines import Machines

        now = now or now_utc()
        with self.db.transaction() as session:
            row = course_lab(session, course, lab)
            attempts = {a.student_id: a for a in session.scalars(select(Attempt)
                                                                 .where(Attempt.course_lab_id == row.id))}
            last = {sid: at for sid, at in session.execute(
                select(Submission.student_id, Submission.created_at).where(Submission.course_lab_id == row.id)
                .order_by(Submission.id))}
            students = [(s.sid, s.id, [a.vm.name for a in s.assignments if a.course_lab_id == row.id])
                        for s in row.course.students if s.archived_at is None]
            clocks = {pk: Clock.of(row, attempts.get(pk)) for _, pk, _ in students}
        names = [name for _, _, machines in students for name in machines]
        live = {v.name for v in Machines(self.settings, self.db, self.actor).status(names=names) if is_live(v.state)}
        rows = []
        for sid, pk, machines in students:
            attempt, clock = attempts.get(pk), clocks[pk]
            deadline, remaining = clock.deadline(), clock.remaining(now)
            rows.append({
                "student": sid,
                "began_at": _stamp(attempt.began_at if attempt else None),
                "deadline": _stamp(deadline),
                "remaining_seconds": None if remaining is None else int(remaining.total_seconds()),
                "extra_minutes": attempt.extra_minutes if attempt else 0,
                "in": any(name in live for name in machines),
                "closed": attempt.closed_reason if attempt and attempt.closed_at else None,
                "submitted_at": _stamp(last.get(pk)),
            })
        return rows


def _stamp(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).isoformat(timespec="seconds")
