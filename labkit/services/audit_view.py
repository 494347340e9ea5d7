"""Reading the audit log of one course: what the instructor's dashboard shows (issue 5, "every state-changing action
is recorded and visible to the instructor").

An event belongs to a course when its target is the course itself, or one of its students' machines. An account's
events (its links, passwords, tokens; the target is the username) belong to a course only when the account is
enrolled in that course alone: a student id that another course also lists, or an account shared by two courses, is
not this course's to watch (issue 11). Events are only read here; `labkit.services.audit` writes them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import aliased

from labkit.services.db import Database
from labkit.services.lookup import course_by_name
from labkit.services.models import Assignment, CourseLab, Event, Machine, Student, User


@dataclass(frozen=True)
class EventView:
    id: int
    at: dt.datetime
    actor: str
    action: str
    target: str
    detail: str


class AuditView:
    """Queries over the `Event` rows; never writes."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def course_events(self, course: str, limit: int = 100, before: int | None = None) -> list[EventView]:
        """The newest ``limit`` events of ``course`` (older than event id ``before`` when given), newest first."""
        with self.db.transaction() as session:
            found = course_by_name(session, course)
            machines = select(Machine.name).join(Assignment, Assignment.machine_id == Machine.id) \
                .join(CourseLab, Assignment.course_lab_id == CourseLab.id).where(CourseLab.course_id == found.id)
            elsewhere = aliased(Student)
            accounts = select(User.username).join(Student, Student.user_id == User.id) \
                .where(Student.course_id == found.id,
                       ~select(elsewhere.id).where(elsewhere.user_id == User.id,
                                                   elsewhere.course_id != found.id).exists())
            # "COURSE/..." targets: a lab's time and exam settings, a student's time on a lab, submissions
            own = (Event.target == course) | Event.target.startswith(f"{course}/", autoescape=True)
            query = (select(Event).where(own | Event.target.in_(machines) | Event.target.in_(accounts))
                     .order_by(Event.id.desc()).limit(max(1, min(limit, 1000))))
            if before is not None:
                query = query.where(Event.id < before)
            return [EventView(e.id, e.at if e.at.tzinfo else e.at.replace(tzinfo=dt.UTC), e.actor, e.action,
                              e.target, e.detail) for e in session.scalars(query)]
