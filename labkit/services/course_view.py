"""Read-only facts about a course that the instructor's dashboard shows and no other service answers yet."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select

from labkit.services.db import Database
from labkit.services.lookup import course_by_name
from labkit.services.models import ClassSession


@dataclass(frozen=True)
class SessionView:
    """The open teaching session of a course."""

    id: int
    begun_at: dt.datetime
    begun_by: str


class CourseView:
    """Queries only; the `Courses` service does every change."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def open_session(self, course: str) -> SessionView | None:
        """The session begun and not yet ended, if any."""
        with self.db.transaction() as session:
            found = course_by_name(session, course)
            current = session.scalar(select(ClassSession).where(ClassSession.course_id == found.id,
                                                                ClassSession.ended_at.is_(None)))
            if current is None:
                return None
            begun = current.begun_at if current.begun_at.tzinfo else current.begun_at.replace(tzinfo=dt.UTC)
            return SessionView(current.id, begun, current.begun_by)
