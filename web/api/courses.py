"""API routes of the caller and their courses: who am I, my courses, a course's status, and the instructor's
class-wide actions (start, stop, provision, roster, sessions) and one student's extra time."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from flask import jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import UnsupportedMediaType

from labkit.errors import StateError
from labkit.services.extra_time import ExtraTime
from labkit.services.memberships import Membership, Memberships
from labkit.services.roster import parse_roster
from web.api import bp, scope
from web.api.jobs import submit
from web.api_input import Field, json_body
from web.state import services


@bp.get("/me")
def me() -> ResponseReturnValue:
    user = scope.user()
    return jsonify(id=user.id, username=user.username, role=user.role,
                   courses=[_membership_json(m) for m in Memberships(services().db).of(user)])


def _membership_json(m: Membership) -> dict[str, Any]:
    return {"name": m.course, "role": m.role, "student": m.sid, "labs": list(m.labs)}


@bp.get("/courses")
def courses() -> ResponseReturnValue:
    return jsonify([_membership_json(m) for m in Memberships(services().db).of(scope.user())])


@bp.get("/courses/<course>")
def course(course: str) -> ResponseReturnValue:
    found = scope.course(course)
    answer = _membership_json(found)
    if found.is_owner:
        summary = services().courses(scope.user().username).show(course)
        answer.update(lab_details=[{k: v for k, v in lab.items() if k != "path"} for lab in summary["labs"]],  # type: ignore[attr-defined]
                      memory_budget_mb=summary["memory_budget_mb"],
                      max_running_per_student=summary["max_running_per_student"],
                      students=services().courses(scope.user().username).students(course),
                      session_open=Memberships(services().db).has_open_session(found.course_id))
    return jsonify(answer)


@bp.get("/courses/<course>/status")
def course_status(course: str) -> ResponseReturnValue:
    """Every machine of the course (a student: their own), with its state."""
    found = scope.course(course)
    return jsonify(services().courses(scope.user().username).status(course, student=found.sid))


_SELECT = {"student": Field(str), "lab": Field(str), "machine": Field(str)}


@bp.post("/courses/<course>/start")
def course_start(course: str) -> ResponseReturnValue:
    found = scope.owned_course(course)
    body = json_body(_SELECT)
    service = services().courses(scope.user().username)
    service.targets(course, body.get("student"), body.get("machine"), body.get("lab"))  # 400/404 now, not in the job
    return submit("start", _course_target(course, body), lambda progress: {"machines": service.start(
        course, body.get("student"), body.get("machine"), body.get("lab"), progress=progress)}, found.course_id)


@bp.post("/courses/<course>/stop")
def course_stop(course: str) -> ResponseReturnValue:
    found = scope.owned_course(course)
    body = json_body(_SELECT)
    service = services().courses(scope.user().username)
    service.targets(course, body.get("student"), body.get("machine"), body.get("lab"))
    return submit("stop", _course_target(course, body), lambda progress: {"machines": service.stop(
        course, body.get("student"), body.get("machine"), body.get("lab"), progress=progress)}, found.course_id)


def _course_target(course: str, body: dict[str, Any]) -> str:
    """Job targets are unique across courses; a narrower selection is a different job."""
    return "course:" + "/".join([course, *(f"{k}={body[k]}" for k in ("student", "lab", "machine") if k in body)])


@bp.post("/courses/<course>/provision")
def course_provision(course: str) -> ResponseReturnValue:
    found = scope.owned_course(course)
    body = json_body({"upgrade": Field(bool)})
    service = services().courses(scope.user().username)
    return submit("provision", f"course:{course}", lambda progress: dataclasses.asdict(service.provision(
        course, upgrade=body.get("upgrade", False), progress=progress)), found.course_id)


@bp.post("/courses/<course>/roster")
def course_roster(course: str) -> ResponseReturnValue:
    """A CSV roster (id,name,email) as the body: students are added, updated, or archived when left out."""
    scope.owned_course(course)
    if request.mimetype not in ("text/csv", "text/plain"):
        raise UnsupportedMediaType(f"send the roster as CSV with 'Content-Type: text/csv' (got "
                                   f"{request.mimetype or 'no content type'!r})")
    data = request.get_data(cache=False)
    parse_roster(data, "roster.csv")  # every bad line, named as the upload, before anything is written
    with tempfile.TemporaryDirectory(prefix="lkroster") as folder:
        path = Path(folder) / "roster.csv"
        path.write_bytes(data)
        report = services().courses(scope.user().username).import_roster(course, path)
    return jsonify(dataclasses.asdict(report))


@bp.post("/courses/<course>/sessions/begin")
def session_begin(course: str) -> ResponseReturnValue:
    scope.owned_course(course)
    json_body({})
    return jsonify(services().courses(scope.user().username).session_begin(course)), 201


@bp.post("/courses/<course>/sessions/end")
def session_end(course: str) -> ResponseReturnValue:
    """Stop every machine; reset those of each-session labs (a job)."""
    found = scope.owned_course(course)
    json_body({})
    active = services().job_queries.find_active("session-end", f"course:{course}")
    if active is None and not Memberships(services().db).has_open_session(found.course_id):
        raise StateError(f"course {course} has no session to end; begin one first")
    service = services().courses(scope.user().username)
    return submit("session-end", f"course:{course}", lambda progress: service.session_end(course, progress),
                  found.course_id)


@bp.post("/courses/<course>/students/<sid>/extend")
def student_extend(course: str, sid: str) -> ResponseReturnValue:
    """Extra minutes for one student on one lab (as ``labkit course extend``), recorded in the audit log."""
    scope.owned_course(course)
    body = json_body({"lab": Field(str, required=True), "minutes": Field(int, required=True)})
    granted = ExtraTime(services().db, scope.user().username).extend(course, sid, body["lab"], body["minutes"])
    return jsonify(granted.as_dict())
