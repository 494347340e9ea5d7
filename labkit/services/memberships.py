"""Which courses a web user belongs to, and as what: the owner (instructor) or a student on the roster.

The JSON API answers 404 for every course that is not the caller's, and decides what the caller may do in the ones
that are (a student may look at their own machines and grades there; only the owner may run class actions).
These are read-only queries; every write stays in the services that own it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from labkit.services.accounts import UserView
from labkit.services.db import Database
from labkit.services.models import ClassSession, Course, CourseLab, Student


@dataclass(frozen=True)
class Membership:
    """A course seen by one user: ``role`` is "instructor" (its owner) or "student" (``sid`` on its roster)."""

    course_id: int
    course: str
    role: str
    sid: str | None
    labs: tuple[str, ...]

    @property
    def is_owner(self) -> bool:
        return self.role == "instructor"


class Memberships:
    def __init__(self, db: Database) -> None:
        self.db = db

    def of(self, user: UserView, course: str | None = None) -> list[Membership]:
        """The courses ``user`` owns (an instructor) or is an active student of, by name."""
        if user.disabled or user.role not in ("instructor", "student"):
            return []
        with self.db.transaction() as session:
            if user.is_instructor:
                query = select(Course, Course.id).where(Course.owner_id == user.id)
            else:
                query = (select(Course, Student.sid).join(Student, Student.course_id == Course.id)
                         .where(Student.user_id == user.id, Student.archived_at.is_(None)))
            if course is not None:
                query = query.where(Course.name == course)
            found = []
            for row, extra in session.execute(query.order_by(Course.name)):
                labs = tuple(session.scalars(select(CourseLab.lab_id).where(CourseLab.course_id == row.id)
                                             .order_by(CourseLab.id)))
                found.append(Membership(row.id, row.name, user.role, None if user.is_instructor else str(extra),
                                        labs))
            return found

    def get(self, user: UserView, course: str) -> Membership | None:
        found = self.of(user, course)
        return found[0] if found else None

    def has_open_session(self, course_id: int) -> bool:
        with self.db.transaction() as session:
            return session.scalar(select(ClassSession.id).where(ClassSession.course_id == course_id,
                                                                ClassSession.ended_at.is_(None))) is not None

    def active_student(self, course_id: int, sid: str) -> bool:
        """Whether ``sid`` is an active (not archived) student on the course's roster."""
        with self.db.transaction() as session:
            return session.scalar(select(Student.id).where(Student.course_id == course_id, Student.sid == sid,
                                                           Student.archived_at.is_(None))) is not None
