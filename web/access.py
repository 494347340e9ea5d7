"""Who is asking, and what they may see. Anything that is not the user's answers 404, never 403 (issue 5).

Views use the decorators and the ``*_or_404`` loaders; the rules themselves (which course, which machine) are
queries of the `Accounts` service.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import abort, g, redirect, request, session, url_for

from labkit.services.accounts import OwnedCourse, OwnedMachine, UserView
from web.state import services

F = TypeVar("F", bound=Callable[..., Any])

#: session keys: the user's id, the stamp of their password (a changed password ends older sessions), and the
#: secret of the server-side session row (logging out deletes the row: a copied cookie stops working)
SESSION_USER = "uid"
SESSION_STAMP = "stamp"
SESSION_SECRET = "sid"


def current_user() -> UserView | None:
    """The logged-in user of this request (cached in ``g``), or None. A disabled user, a stale session or one that
    was logged out (its server-side row is gone) is None."""
    if "labkit_user" in g:
        return g.labkit_user
    user = None
    uid, secret = session.get(SESSION_USER), session.get(SESSION_SECRET)
    if isinstance(uid, int):
        found = services().accounts("web").get_by_session(uid, secret) if isinstance(secret, str) else None
        if found is not None and not found.disabled and found.stamp == session.get(SESSION_STAMP):
            user = found
        else:
            session.clear()
    g.labkit_user = user
    return user


def actor() -> str:
    """The name written to the audit log for this request."""
    user = current_user()
    return user.username if user is not None else "anonymous"


def home_url(user: UserView) -> str:
    return "/teach/" if user.is_instructor else "/my/"


def _require(check: Callable[[UserView], bool]) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        @wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
            if not check(user):
                abort(404)
            return view(*args, **kwargs)

        return wrapped  # type: ignore[return-value]

    return decorator


login_required = _require(lambda user: True)
instructor_required = _require(lambda user: user.is_instructor)
student_required = _require(lambda user: user.is_student)


def _user_or_404() -> UserView:
    user = current_user()
    if user is None:
        abort(404)
    return user


def owned_course_or_404(course_name: str) -> OwnedCourse:
    """The course, if the current user is the instructor who owns it."""
    found = services().accounts(actor()).owned_course(_user_or_404(), course_name)
    if found is None:
        abort(404)
    return found


def owned_machine_or_404(machine_name: str) -> OwnedMachine:
    """The machine, if it is the current student's own or of a course the current instructor owns."""
    found = services().accounts(actor()).owned_machine(_user_or_404(), machine_name)
    if found is None:
        abort(404)
    return found
