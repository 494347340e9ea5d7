"""What the caller of the API may see: each lookup answers 404 (or 403) with one sentence when it is not theirs."""

from __future__ import annotations

from flask import abort, g

from labkit.services.accounts import OwnedMachine, UserView
from labkit.services.memberships import Membership, Memberships
from web.state import services


def user() -> UserView:
    """The token's user (set by the blueprint's authentication before every view)."""
    found: UserView = g.labkit_user
    return found


def course(name: str) -> Membership:
    found = Memberships(services().db).get(user(), name)
    if found is None:
        abort(404, f"no course {name!r} of yours")
    return found


def owned_course(name: str) -> Membership:
    """A course the caller owns; a student of it gets 403 (it is theirs to see, not to run)."""
    found = course(name)
    if not found.is_owner:
        abort(403, f"only the instructor of course {name} may do this")
    return found


def student_of(course: Membership, sid: str) -> str:
    """``sid`` if the caller may act for that student: the course's instructor, or the student themself."""
    if course.is_owner and Memberships(services().db).active_student(course.course_id, sid):
        return sid
    if not course.is_owner and sid == course.sid:
        return sid
    abort(404, f"no student {sid!r} of yours in course {course.course}")


def lab(course: Membership, lab: str) -> str:
    if lab not in course.labs:
        abort(404, f"course {course.course} has no lab {lab!r}")
    return lab


def machine(name: str) -> OwnedMachine:
    found = services().accounts(user().username).owned_machine(user(), name)
    if found is None:
        abort(404, f"no machine {name!r} of yours")
    return found
