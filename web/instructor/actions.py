"""Class-wide actions of the dashboard, each a POST (CSRF-checked) that submits a job and returns at once.

Long actions (provision, start all, stop all, reset one student, session end, grading) run in the app's `JobRunner`;
the page then shows the job's progress by polling ``/teach/courses/<course>/jobs/<id>``. A job's target is
``course:<name>`` (course names are unique), so a double-clicked button finds the job already queued or running and
gets that one back: nothing runs twice. Only session begin is instant and runs in the request.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import abort, flash, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue

from labkit.errors import LabkitError, NotFoundError
from labkit.progress import Reporter
from labkit.services.accounts import OwnedCourse
from labkit.services.course_view import CourseView
from labkit.services.jobs import JobFunction, JobView
from web.access import actor, current_user, instructor_required, owned_course_or_404
from web.instructor import bp
from web.state import services

#: where a form may ask to go back to after its action (a fixed list: never a URL from the request)
RETURN_PAGES = {"course": "instructor.course", "grid": "instructor.grid", "grades": "instructor.grades"}

#: what each job kind is called on the pages
JOB_TITLES = {"provision": "Provisioning", "start-all": "Starting all machines", "stop-all": "Stopping all machines",
              "reset-student": "Resetting a student", "session-end": "Ending the session", "grade": "Grading"}


def course_target(course: str, *more: str) -> str:
    return ":".join(("course", course, *more))


def submit(owned: OwnedCourse, kind: str, function: JobFunction, *target: str) -> JobView:
    """Queue ``function`` as a job of the course (or get the same action's job that is already active)."""
    user = current_user()
    return services().jobs.submit(kind, course_target(owned.name, *target), function, course_id=owned.id,
                                  owner_user_id=user.id if user else None)


def back(owned: OwnedCourse, job: JobView | None = None) -> ResponseReturnValue:
    """Redirect to the page the form came from (``back`` field), with the job to follow."""
    endpoint = RETURN_PAGES.get(request.form.get("back", ""), "instructor.course")
    return redirect(url_for(endpoint, course=owned.name, job=job.id if job else None))


def started(owned: OwnedCourse, job: JobView) -> ResponseReturnValue:
    title = JOB_TITLES.get(job.kind, job.kind)
    flash(f"{title}: job {job.id} is {job.state}; its progress is shown below.", "info")
    return back(owned, job)


def course_jobs(owned: OwnedCourse, limit: int = 5) -> list[dict[str, Any]]:
    """The course's recent jobs for a page: the active ones and the last few that ended, newest first."""
    return [_job_dict(owned, job) for job in services().job_queries.list(course_id=owned.id, limit=limit)]


def _job_dict(owned: OwnedCourse, job: JobView) -> dict[str, Any]:
    found = job.as_dict()
    found["title"] = JOB_TITLES.get(job.kind, job.kind)
    found["url"] = url_for("instructor.job_status", course=owned.name, job_id=job.id)
    return found


@bp.get("/courses/<course>/jobs/<int:job_id>")
@instructor_required
def job_status(course: str, job_id: int) -> ResponseReturnValue:
    """A job of this course as JSON ``{state, done, total, percent, message, error, result, ...}`` (polled)."""
    owned = owned_course_or_404(course)
    try:
        job = services().job_queries.get(job_id)
    except NotFoundError:
        abort(404)
    if job.course_id != owned.id:
        abort(404)
    response = jsonify(_job_dict(owned, job))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/courses/<course>/provision")
@instructor_required
def provision(course: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)
    upgrade = request.form.get("upgrade") == "yes"
    courses = services().courses(actor())

    def run(progress: Reporter) -> dict[str, Any]:
        return dataclasses.asdict(courses.provision(owned.name, upgrade=upgrade, progress=progress))

    return started(owned, submit(owned, "provision", run))


@bp.post("/courses/<course>/start-all")
@instructor_required
def start_all(course: str) -> ResponseReturnValue:
    return _whole_class(course, "start-all", "running")


@bp.post("/courses/<course>/stop-all")
@instructor_required
def stop_all(course: str) -> ResponseReturnValue:
    return _whole_class(course, "stop-all", "stopped")


def _whole_class(course: str, kind: str, goal: str) -> ResponseReturnValue:
    """Start (``goal`` running) or stop (``goal`` stopped) every machine of the course; the job counts those there."""
    owned = owned_course_or_404(course)
    courses = services().courses(actor())
    act = courses.start if goal == "running" else courses.stop

    def run(progress: Reporter) -> dict[str, Any]:
        machines = act(owned.name, progress=progress)
        return {goal: sum(1 for m in machines if m["state"] == goal), "machines": len(machines)}

    return started(owned, submit(owned, kind, run))


@bp.post("/courses/<course>/reset-student")
@instructor_required
def reset_student(course: str) -> ResponseReturnValue:
    """Stop one student's machines, keep their work as a submission (graded), and give them fresh overlays; the
    form must confirm."""
    owned = owned_course_or_404(course)
    courses = services().courses(actor())
    sid = request.form.get("student", "")
    if sid not in {s["id"] for s in courses.students(owned.name) if not s["archived"]}:
        abort(404, f"course {owned.name} has no active student {sid!r}.")
    if request.form.get("confirm") != "yes":
        flash(f"Nothing was reset: tick the box to confirm that {sid}'s machines start afresh (their work is kept "
              "as a submission).", "error")
        return back(owned)

    def run(progress: Reporter) -> dict[str, Any]:
        kept = courses.keep(owned.name, student=sid, progress=progress)  # graded live, before the stop
        courses.stop(owned.name, student=sid, progress=progress)
        machines = courses.reset(owned.name, student=sid, progress=progress, discard=True)
        return {"student": sid, "reset": len(machines), "submitted": len(kept)}

    return started(owned, submit(owned, "reset-student", run, "student", sid))


@bp.post("/courses/<course>/session/begin")
@instructor_required
def session_begin(course: str) -> ResponseReturnValue:
    """Instant (one row), so it runs in the request."""
    owned = owned_course_or_404(course)
    try:
        services().courses(actor()).session_begin(owned.name)
    except LabkitError as err:
        flash(f"The session was not begun: {err}.", "error")
    else:
        flash(f"A session of {owned.name} has begun.", "success")
    return back(owned)


@bp.post("/courses/<course>/session/end")
@instructor_required
def session_end(course: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)
    if CourseView(services().db).open_session(owned.name) is None:
        flash(f"Course {owned.name} has no session to end; begin one first.", "error")
        return back(owned)
    courses = services().courses(actor())

    def run(progress: Reporter) -> dict[str, Any]:
        return courses.session_end(owned.name, progress=progress)

    return started(owned, submit(owned, "session-end", run))
