"""Finding a row by the name a person typed: one place, so every service says "not found" the same way."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.errors import NotFoundError
from labkit.services.models import Course


def course_by_name(session: Session, name: str) -> Course:
    """The course called ``name``; else `NotFoundError` naming the courses there are."""
    course = session.scalar(select(Course).where(Course.name == name))
    if course is None:
        known = session.scalars(select(Course.name).order_by(Course.name)).all()
        raise NotFoundError(f"no course named {name!r}" + (f"; courses: {', '.join(known)}" if known else ""))
    return course
