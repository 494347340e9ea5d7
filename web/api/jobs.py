"""API jobs: queueing a long action (202 with the job), one machine's jobs with their state rules, and
``GET /jobs/<id>`` for a job's progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import abort, jsonify, url_for
from flask.typing import ResponseReturnValue

from labkit.errors import NotFoundError, StateError
from labkit.progress import Reporter
from labkit.services.accounts import OwnedMachine
from labkit.services.memberships import Memberships
from web.api import bp, scope
from web.state import services

#: machine job kinds: a student may follow such a job on their own machine even if their instructor started it
MACHINE_KINDS = ("start", "stop", "reset", "snapshot", "restore")


def accepted(job: Any) -> ResponseReturnValue:
    return jsonify(job.as_dict()), 202, {"Location": url_for("api.job", job_id=job.id)}


def submit(kind: str, target: str, function: Callable[[Reporter], dict[str, Any] | None],
           course_id: int) -> ResponseReturnValue:
    return accepted(services().jobs.submit(kind, target, function, course_id=course_id,
                                           owner_user_id=scope.user().id))


def machine_job(kind: str, owned: OwnedMachine, function: Callable[[Reporter], dict[str, Any] | None],
                refuse: Callable[[str], str | None], target: str | None = None) -> ResponseReturnValue:
    """A job on one machine: a click while the same job runs returns that job; a wrong state is a 409 now."""
    target = target or owned.name
    active = services().job_queries.find_active(kind, target)
    if active is not None:
        return accepted(active)
    state = services().machines(scope.user().username).status(owned.name)[0].state
    problem = refuse(state)
    if problem:
        raise StateError(f"cannot {kind} machine {owned.name}: {problem}", state)
    return submit(kind, target, function, owned.course_id)


@bp.get("/jobs/<int:job_id>")
def job(job_id: int) -> ResponseReturnValue:
    """A job the caller started, one of a course they own, or one on their own machine."""
    user = scope.user()
    try:
        found = services().job_queries.get(job_id)
    except NotFoundError:
        found = None
    visible = found is not None and found.owner_user_id == user.id
    if found is not None and not visible and found.course_id is not None:
        if user.is_instructor:
            visible = any(m.course_id == found.course_id for m in Memberships(services().db).of(user))
        elif found.kind in MACHINE_KINDS:
            mine = {m.name for m in services().accounts(user.username).machines_of(user)}
            visible = found.target.split("/")[0] in mine
    if found is None or not visible:
        abort(404, f"no job {job_id} of yours")  # the same answer whether it does not exist or is not yours
    return jsonify(found.as_dict())
