"""Extra time for one student on one course lab (an accessibility arrangement, a late start the student is not to
blame for): ``labkit course extend`` and the class grid's "extend" form.

The minutes go on the student's `Attempt` (made here, not yet begun, when the student has not started the lab), so
`labkit.services.lab_time.Clock` pushes back both their allowance and the window's close for them alone. Every grant
is recorded in the audit log with who gave how many minutes to whom, under the course's name (the course's audit page
shows it). A student whose time had run out (their attempt closed at the deadline or the window's close) gets it
back when the new deadline is still ahead; one who pressed Submit on an exam stays submitted.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from sqlalchemy import select, update

from labkit.errors import BadNameError, NotFoundError
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.lab_time import Clock
from labkit.services.lookup import course_by_name
from labkit.services.models import Attempt, CourseLab, Student
from labkit.services.roster import check_student_id

#: the most minutes one grant may add (a day): a typo of 600 for 60 is still sane, 60000 is refused
MAX_GRANT_MINUTES = 24 * 60
_WHOLE = re.compile(r"[0-9]{1,6}")
#: attempts closed because time ran out, which extra time opens again (`Attempt.closed_reason`)
REOPENED_BY_TIME = ("deadline", "window")


@dataclass(frozen=True)
class Extension:
    """What a grant left: the student's extra minutes on the lab in all, and their deadline now (None: no end)."""

    course: str
    student: str
    lab: str
    added: int
    extra_minutes: int
    deadline: dt.datetime | None

    def as_dict(self) -> dict[str, object]:
        return {"course": self.course, "student": self.student, "lab": self.lab, "added": self.added,
                "extra_minutes": self.extra_minutes,
                "deadline": self.deadline.isoformat() if self.deadline else None}


def check_minutes(minutes: object) -> int:
    """``minutes`` as a whole number from 1 to `MAX_GRANT_MINUTES`, else one sentence saying what is wrong."""
    text = str(minutes).strip()
    if isinstance(minutes, bool) or not _WHOLE.fullmatch(text) or not 1 <= int(text) <= MAX_GRANT_MINUTES:
        raise BadNameError(f"extra time must be a whole number of minutes from 1 to {MAX_GRANT_MINUTES}, "
                           f"not {text[:20]!r}")
    return int(text)


class ExtraTime:
    """Grants extra minutes to one student on one lab of a course."""

    def __init__(self, db: Database, actor: str | None = None) -> None:
        self.db = db
        self.actor = actor or current_actor()

    def extend(self, course: str, student: str, lab: str, minutes: object,
               now: dt.datetime | None = None) -> Extension:
        added = check_minutes(minutes)
        check_student_id(student)
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            person = session.scalar(select(Student).where(Student.course_id == course_row.id, Student.sid == student))
            if person is None or person.archived_at is not None:
                why = "is archived" if person is not None else "is not on its roster"
                raise NotFoundError(f"student {student!r} {why} in course {course}")
            course_lab = session.scalar(select(CourseLab).where(CourseLab.course_id == course_row.id,
                                                                CourseLab.lab_id == lab))
            if course_lab is None:
                raise NotFoundError(f"course {course} has no lab {lab!r} (labs: "
                                    f"{', '.join(cl.lab_id for cl in course_row.labs)})")
            attempt = session.scalar(select(Attempt).where(Attempt.student_id == person.id,
                                                           Attempt.course_lab_id == course_lab.id))
            if attempt is None:
                attempt = Attempt(student_id=person.id, course_lab_id=course_lab.id, began_at=None, extra_minutes=0)
                session.add(attempt)
                session.flush()
            # added in SQL, not read and written back: two grants at once both count
            session.execute(update(Attempt).where(Attempt.id == attempt.id)
                            .values(extra_minutes=Attempt.extra_minutes + added))
            session.refresh(attempt)
            deadline = Clock.of(course_lab, attempt).deadline()
            reopened = (attempt.closed_reason in REOPENED_BY_TIME and deadline is not None
                        and deadline > (now or dt.datetime.now(dt.UTC)))
            if reopened:  # their time had run out; the extra time gives it back (a Submit of their own stays final)
                attempt.closed_at = attempt.closed_reason = attempt.warned_at = None
            record(session, self.actor, "time-extend", course,
                   f"student {student}, lab {lab}: +{added} min (extra time now {attempt.extra_minutes} min)"
                   + ("; their time had run out, it runs again" if reopened else ""))
            return Extension(course, student, lab, added, attempt.extra_minutes, deadline)
