"""``GET /jobs/<id>``: a job's progress as JSON, for the pages that poll it (static/js/jobs.js).

Only the job's owner, or the instructor who owns the job's course, may read it; anyone else (and anyone not logged
in) gets the same JSON 404 as a job that does not exist, so job ids reveal nothing.
"""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from labkit.errors import NotFoundError
from labkit.services.accounts import UserView
from labkit.services.jobs import JobView
from web.access import actor, current_user
from web.state import services

bp = Blueprint("jobs_view", __name__)

NOT_FOUND = "There is no such job, or it is not yours."


def may_see(user: UserView, job: JobView) -> bool:
    if job.owner_user_id == user.id:
        return True
    if not user.is_instructor or job.course_id is None:
        return False
    accounts = services().accounts(actor())
    return any((owned := accounts.owned_course(user, name)) is not None and owned.id == job.course_id
               for name in accounts.owned_courses(user.id))


@bp.get("/jobs/<int:job_id>")
def job(job_id: int) -> ResponseReturnValue:
    user = current_user()
    try:
        found = services().job_queries.get(job_id) if user is not None else None
    except NotFoundError:
        found = None
    if user is None or found is None or not may_see(user, found):
        response = jsonify(error=NOT_FOUND)
        response.status_code = 404
    else:
        response = jsonify(found.as_dict())
    response.headers["Cache-Control"] = "no-store"
    return response
