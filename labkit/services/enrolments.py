"""Who an account belongs to: its enrolments (roster lines bound to it), and which instructor may act for it.

Student ids are global usernames, so a roster line names an account that may already be enrolled in another course.
The rules (docs/web.md, "Accounts and enrolments"):

- An enrolment is a roster line (`Student`) whose ``user_id`` is the account. Archived lines still count: a restored
  line gives its work back to the same account.
- An instructor acts for an account (enrols it in a course, issues its one-time link, which sets its password) only
  when every course it is enrolled in belongs to them; an account in no course yet is the first enrolling course's.
  An account enrolled in courses of two owners is no one instructor's: only an admin (``labkit user link`` /
  ``user passwd`` / ``user enrol``) may change it.
- A roster line whose account belongs to someone else stays unbound ("held"): the account gets no access to the
  course, and the course's instructor gets no power over the account, until an admin enrols it.

Courses without an owner are run from the command line; they count as one owner (``None``).
These are read-only queries over a session the caller holds; the writes stay in `labkit.services.accounts`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.services.models import Course, Student, User

#: a course's owner: an instructor's user id, or None for a course run from the command line
Owner = int | None


@dataclass(frozen=True)
class Held:
    """A roster line of a course that is not bound to the account of the same name, and why."""

    sid: str
    reason: str


def enrolled_courses(session: Session, user_id: int) -> list[tuple[str, Owner]]:
    """(course name, owner) of every roster line bound to the account, archived lines included."""
    rows = session.execute(select(Course.name, Course.owner_id).join(Student, Student.course_id == Course.id)
                           .where(Student.user_id == user_id).order_by(Course.name))
    return [(name, owner) for name, owner in rows]


def foreign_courses(session: Session, user_id: int, owner: Owner) -> list[str]:
    """The courses the account is enrolled in that ``owner`` does not own (empty: the account is theirs)."""
    return [name for name, other in enrolled_courses(session, user_id) if other != owner]


def refusal(session: Session, user: User, course: Course) -> str | None:
    """Why the owner of ``course`` may not act for ``user`` (enrol it, issue its link), or None when they may."""
    if user.role != "student":
        return f"student id {user.username!r} is already the username of an {user.role}; rename one"
    if foreign_courses(session, user.id, course.owner_id):
        # the other course is not named: it is not this instructor's to know (the admin sees it: 'labkit user show')
        return (f"the account {user.username!r} is also enrolled in another instructor's course, so only an admin "
                f"may issue its link ('labkit user link {user.username}') or enrol it here ('labkit user enrol "
                f"{user.username} {course.name}')")
    return None


def held_students(session: Session, course: Course) -> list[Held]:
    """The course's active roster lines that are not bound and whose account the course's owner may not bind."""
    held = []
    for student in course.students:
        if student.user_id is not None or student.archived_at is not None:
            continue
        user = session.scalar(select(User).where(User.username == student.sid))
        if user is not None and (reason := refusal(session, user, course)) is not None:
            held.append(Held(student.sid, reason))
    return held
