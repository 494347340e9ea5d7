"""The JSON API, ``/api/v1``: the web's actions for scripts, authenticated by bearer tokens, never by cookies.

Tokens are made with ``labkit user token create NAME TOKEN-NAME`` and sent as ``Authorization: Bearer lk_...``.
The rights are the web's: a student sees their own machines and grades, an instructor the courses they own, and
anything else answers 404 as if it did not exist. 403 means the object is the caller's to see but the action is
for the other role (a student asking for the class gradebook of their own course). Long actions answer 202 with a
job (``GET /api/v1/jobs/<id>`` for its progress). The routes are described in `web.openapi`.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, g, jsonify, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, UnsupportedMediaType

from labkit.errors import ConflictError, LabkitError, NotFoundError, StateError
from labkit.grading.report import to_csv
from labkit.progress import Reporter
from labkit.services.accounts import OwnedMachine, UserView
from labkit.services.grading import StudentGrade
from labkit.services.machines import LIVE
from labkit.services.memberships import Membership, Memberships
from labkit.services.roster import parse_roster
from labkit.services.submissions import Submissions, SubmissionView
from web import csrf
from web.api_input import Field, flag, json_body
from web.errors import MESSAGES
from web.state import services

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)  # bearer tokens, not cookies: a browser cannot send them on its own, so there is nothing to forge

#: endpoints anyone may read
PUBLIC = frozenset({"api.openapi"})
REALM = 'Bearer realm="labkit"'
#: SQLite integers are 64-bit: a larger job id can only be "not found"
MAX_ID = 2**63 - 1
_LIVE = {state.value for state in LIVE}
#: machine job kinds: a student may follow such a job on their own machine even if their instructor started it
MACHINE_KINDS = ("start", "stop", "reset", "snapshot", "restore")


# ---- who is asking ---------------------------------------------------------------------------------------------
@bp.before_request
def _authenticate() -> ResponseReturnValue | None:
    if request.endpoint in PUBLIC:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.strip().partition(" ")
    if not header:
        return _error("send an API token: 'Authorization: Bearer lk_...' (create one with 'labkit user token "
                      "create NAME TOKEN-NAME')", 401, {"WWW-Authenticate": REALM})
    if scheme.lower() != "bearer" or not secret.strip():
        return _error("the Authorization header must be 'Bearer <token>'", 401,
                      {"WWW-Authenticate": f'{REALM}, error="invalid_request"'})
    user = services().accounts("api").verify_api_token(secret.strip())
    if user is None:
        return _error("the API token is not valid: unknown, revoked, or its user is disabled", 401,
                      {"WWW-Authenticate": f'{REALM}, error="invalid_token"'})
    g.labkit_user = user  # web.access.current_user() and actor() see the token's user, never a session cookie
    return None


def _user() -> UserView:
    user: UserView = g.labkit_user
    return user


# ---- errors: JSON {"error": sentence, "status": code} ---------------------------------------------------------------
def _error(message: str, status: int, headers: dict[str, str] | None = None) -> ResponseReturnValue:
    return jsonify(error=message, status=status), status, headers or {}


@bp.errorhandler(LabkitError)
def _labkit_error(err: LabkitError) -> ResponseReturnValue:
    if err.status >= 500:
        log.error("%s: %s", request.path, err, exc_info=err)
    return _error(str(err), err.status)


@bp.errorhandler(HTTPException)
def _http_error(err: HTTPException) -> ResponseReturnValue:
    status = err.code or 500
    default = type(err).description
    message = err.description if err.description and err.description != default else MESSAGES.get(status, err.name)
    headers = {"Allow": ", ".join(err.valid_methods)} if getattr(err, "valid_methods", None) else {}  # type: ignore[attr-defined]
    return _error(message, status, headers)


# ---- what the caller may see -----------------------------------------------------------------------------------
def _course(name: str) -> Membership:
    found = Memberships(services().db).get(_user(), name)
    if found is None:
        abort(404, f"no course {name!r} of yours")
    return found


def _owned_course(name: str) -> Membership:
    """A course the caller owns; a student of it gets 403 (it is theirs to see, not to run)."""
    found = _course(name)
    if not found.is_owner:
        abort(403, f"only the instructor of course {name} may do this")
    return found


def _student_of(course: Membership, sid: str) -> str:
    """``sid`` if the caller may act for that student: the course's instructor, or the student themself."""
    if course.is_owner and Memberships(services().db).active_student(course.course_id, sid):
        return sid
    if not course.is_owner and sid == course.sid:
        return sid
    abort(404, f"no student {sid!r} of yours in course {course.course}")


def _lab(course: Membership, lab: str) -> str:
    if lab not in course.labs:
        abort(404, f"course {course.course} has no lab {lab!r}")
    return lab


def _machine(name: str) -> OwnedMachine:
    found = services().accounts(_user().username).owned_machine(_user(), name)
    if found is None:
        abort(404, f"no machine {name!r} of yours")
    return found


# ---- jobs ------------------------------------------------------------------------------------------------------
def _accepted(job: Any) -> ResponseReturnValue:
    return jsonify(job.as_dict()), 202, {"Location": url_for("api.job", job_id=job.id)}


def _submit(kind: str, target: str, function: Callable[[Reporter], dict[str, Any] | None],
            course_id: int) -> ResponseReturnValue:
    return _accepted(services().jobs.submit(kind, target, function, course_id=course_id,
                                            owner_user_id=_user().id))


def _machine_job(kind: str, owned: OwnedMachine, function: Callable[[Reporter], dict[str, Any] | None],
                 refuse: Callable[[str], str | None], target: str | None = None) -> ResponseReturnValue:
    """A job on one machine: a click while the same job runs returns that job; a wrong state is a 409 now."""
    target = target or owned.name
    active = services().job_queries.find_active(kind, target)
    if active is not None:
        return _accepted(active)
    state = services().machines(_user().username).status(owned.name)[0].state
    problem = refuse(state)
    if problem:
        raise StateError(f"cannot {kind} machine {owned.name}: {problem}", state)
    return _submit(kind, target, function, owned.course_id)


@bp.get("/jobs/<int:job_id>")
def job(job_id: int) -> ResponseReturnValue:
    """A job the caller started, one of a course they own, or one on their own machine."""
    user = _user()
    try:
        found = services().job_queries.get(job_id) if job_id <= MAX_ID else None
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


# ---- the caller --------------------------------------------------------------------------------------------------
@bp.get("/me")
def me() -> ResponseReturnValue:
    user = _user()
    return jsonify(id=user.id, username=user.username, role=user.role,
                   courses=[_membership_json(m) for m in Memberships(services().db).of(user)])


def _membership_json(m: Membership) -> dict[str, Any]:
    return {"name": m.course, "role": m.role, "student": m.sid, "labs": list(m.labs)}


# ---- courses -----------------------------------------------------------------------------------------------------
@bp.get("/courses")
def courses() -> ResponseReturnValue:
    return jsonify([_membership_json(m) for m in Memberships(services().db).of(_user())])


@bp.get("/courses/<course>")
def course(course: str) -> ResponseReturnValue:
    found = _course(course)
    answer = _membership_json(found)
    if found.is_owner:
        summary = services().courses(_user().username).show(course)
        answer.update(lab_details=[{k: v for k, v in lab.items() if k != "path"} for lab in summary["labs"]],  # type: ignore[attr-defined]
                      memory_budget_mb=summary["memory_budget_mb"],
                      max_running_per_student=summary["max_running_per_student"],
                      students=services().courses(_user().username).students(course),
                      session_open=Memberships(services().db).has_open_session(found.course_id))
    return jsonify(answer)


@bp.get("/courses/<course>/status")
def course_status(course: str) -> ResponseReturnValue:
    """Every machine of the course (a student: their own), with its state."""
    found = _course(course)
    return jsonify(services().courses(_user().username).status(course, student=found.sid))


_SELECT = {"student": Field(str), "lab": Field(str), "machine": Field(str)}


@bp.post("/courses/<course>/start")
def course_start(course: str) -> ResponseReturnValue:
    found = _owned_course(course)
    body = json_body(_SELECT)
    service = services().courses(_user().username)
    service.targets(course, body.get("student"), body.get("machine"), body.get("lab"))  # 400/404 now, not in the job
    return _submit("start", _course_target(course, body), lambda progress: {"machines": service.start(
        course, body.get("student"), body.get("machine"), body.get("lab"), progress=progress)}, found.course_id)


@bp.post("/courses/<course>/stop")
def course_stop(course: str) -> ResponseReturnValue:
    found = _owned_course(course)
    body = json_body(_SELECT)
    service = services().courses(_user().username)
    service.targets(course, body.get("student"), body.get("machine"), body.get("lab"))
    return _submit("stop", _course_target(course, body), lambda progress: {"machines": service.stop(
        course, body.get("student"), body.get("machine"), body.get("lab"), progress=progress)}, found.course_id)


def _course_target(course: str, body: dict[str, Any]) -> str:
    """Job targets are unique across courses; a narrower selection is a different job."""
    return "course:" + "/".join([course, *(f"{k}={body[k]}" for k in ("student", "lab", "machine") if k in body)])


@bp.post("/courses/<course>/provision")
def course_provision(course: str) -> ResponseReturnValue:
    found = _owned_course(course)
    body = json_body({"upgrade": Field(bool)})
    service = services().courses(_user().username)
    return _submit("provision", f"course:{course}", lambda progress: dataclasses.asdict(service.provision(
        course, upgrade=body.get("upgrade", False), progress=progress)), found.course_id)


@bp.post("/courses/<course>/roster")
def course_roster(course: str) -> ResponseReturnValue:
    """A CSV roster (id,name,email) as the body: students are added, updated, or archived when left out."""
    _owned_course(course)
    if request.mimetype not in ("text/csv", "text/plain"):
        raise UnsupportedMediaType(f"send the roster as CSV with 'Content-Type: text/csv' (got "
                                   f"{request.mimetype or 'no content type'!r})")
    data = request.get_data(cache=False)
    parse_roster(data, "roster.csv")  # every bad line, named as the upload, before anything is written
    with tempfile.TemporaryDirectory(prefix="lkroster") as folder:
        path = Path(folder) / "roster.csv"
        path.write_bytes(data)
        report = services().courses(_user().username).import_roster(course, path)
    return jsonify(dataclasses.asdict(report))


@bp.post("/courses/<course>/sessions/begin")
def session_begin(course: str) -> ResponseReturnValue:
    _owned_course(course)
    json_body({})
    return jsonify(services().courses(_user().username).session_begin(course)), 201


@bp.post("/courses/<course>/sessions/end")
def session_end(course: str) -> ResponseReturnValue:
    """Stop every machine; reset those of each-session labs (a job)."""
    found = _owned_course(course)
    json_body({})
    active = services().job_queries.find_active("session-end", f"course:{course}")
    if active is None and not Memberships(services().db).has_open_session(found.course_id):
        raise StateError(f"course {course} has no session to end; begin one first")
    service = services().courses(_user().username)
    return _submit("session-end", f"course:{course}", lambda progress: service.session_end(course, progress),
                   found.course_id)


# ---- grades ------------------------------------------------------------------------------------------------------
@bp.get("/courses/<course>/grades")
def grades(course: str) -> ResponseReturnValue:
    """The class gradebook (``?detail=1``: a column per check) and per-check pass rates."""
    _owned_course(course)
    grading = services().grading(_user().username)
    book = grading.gradebook(course, detail=flag("detail"))
    return jsonify(columns=book.columns, rows=book.rows, pass_rates=grading.pass_rates(course))


@bp.get("/courses/<course>/grades.csv")
def grades_csv(course: str) -> ResponseReturnValue:
    """The same gradebook as ``labkit grades --csv``."""
    _owned_course(course)
    book = services().grading(_user().username).gradebook(course, detail=flag("detail"))
    return Response("\ufeff" + to_csv(book.columns, book.rows), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{course}-grades.csv"'})


@bp.post("/courses/<course>/grade")
def grade(course: str) -> ResponseReturnValue:
    """Grade the class, one lab, or one student (live machines, or with ``submissions`` the latest submissions)."""
    found = _owned_course(course)
    body = json_body({"lab": Field(str), "student": Field(str), "submissions": Field(bool)})
    lab = _lab(found, body["lab"]) if "lab" in body else None
    student = _student_of(found, body["student"]) if "student" in body else None
    grading = services().grading(_user().username)

    def run(progress: Reporter) -> dict[str, Any]:
        report = grading.grade(course, lab=lab, student=student, submissions=body.get("submissions", False),
                               progress=progress)
        return {"run_id": report.run_id, "kind": report.kind, "missing": report.missing,
                "grades": [_grade_json(g, hidden=True) for g in report.grades]}

    target = "/".join(["grade:" + course, *(f"{k}={v}" for k, v in (("lab", lab), ("student", student)) if v)])
    return _submit("grade", target, run, found.course_id)


@bp.get("/courses/<course>/students/<sid>/grades")
def student_grades(course: str, sid: str) -> ResponseReturnValue:
    """A student's latest grade per lab; the student themself sees no hidden checks and no evidence."""
    found = _course(course)
    _student_of(found, sid)
    shown = services().grading(_user().username).latest(course, sid, include_hidden=found.is_owner)
    return jsonify(student=sid, grades=[_grade_json(g, hidden=found.is_owner) for g in shown])


@bp.get("/courses/<course>/students/<sid>/submissions")
def student_submissions(course: str, sid: str) -> ResponseReturnValue:
    found = _course(course)
    _student_of(found, sid)
    listed = Submissions(services().settings, services().db, _user().username).list(course, sid)
    return jsonify([_submission_json(s) for s in listed])


@bp.post("/courses/<course>/students/<sid>/submit")
def student_submit(course: str, sid: str) -> ResponseReturnValue:
    """Freeze the student's machines (of every lab, or of ``lab``) as a submission."""
    found = _course(course)
    _student_of(found, sid)
    body = json_body({"lab": Field(str)})
    return _submit_job(found, sid, _lab(found, body["lab"]) if "lab" in body else None)


def _submit_job(found: Membership, sid: str, lab: str | None) -> ResponseReturnValue:
    service = Submissions(services().settings, services().db, _user().username)
    course = found.course
    return _submit("submit", f"submit:{course}/{sid}" + (f"/{lab}" if lab else ""),
                   lambda progress: {"submissions": [_submission_json(s) for s in service.submit(course, sid, lab)]},
                   found.course_id)


@bp.post("/labs/<course>/<lab>/submit")
def lab_submit(course: str, lab: str) -> ResponseReturnValue:
    """The student's own submission of one lab."""
    found = _student_course(course)
    json_body({})
    return _submit_job(found, str(found.sid), _lab(found, lab))


@bp.post("/labs/<course>/<lab>/self-check")
def lab_self_check(course: str, lab: str) -> ResponseReturnValue:
    """The lab's non-hidden checks against the student's own live machines (a job; not counted as a grade)."""
    found = _student_course(course)
    json_body({})
    _lab(found, lab)
    sid = str(found.sid)
    grading = services().grading(_user().username)

    def run(progress: Reporter) -> dict[str, Any]:
        report = grading.self_check(course, sid, lab)
        return {"run_id": report.run_id, "grades": [_grade_json(g, hidden=False) for g in report.grades]}

    return _submit("self-check", f"self-check:{course}/{sid}/{lab}", run, found.course_id)


def _student_course(course: str) -> Membership:
    found = _course(course)
    if found.is_owner:
        abort(403, "self-check and lab submissions are for students; grade with POST /courses/<course>/grade")
    return found


def _grade_json(grade: StudentGrade, hidden: bool) -> dict[str, Any]:
    """One student's lab result; without ``hidden``, hidden checks and the instructor's evidence are left out."""
    checks = []
    for r in grade.results:
        if r.check_id in grade.hidden and not hidden:
            continue
        check: dict[str, Any] = {"id": r.check_id, "title": grade.titles.get(r.check_id, r.check_id),
                                 "passed": r.passed, "points": r.points, "max_points": r.max_points,
                                 "feedback": r.feedback, "skipped_reason": r.skipped_reason}
        if hidden:
            check.update(hidden=r.check_id in grade.hidden, evidence=r.evidence)
        checks.append(check)
    return {"student": grade.student, "lab": grade.lab, "points": grade.points, "max_points": grade.max_points,
            "passed": grade.passed, "graded_at": grade.graded_at.isoformat(), "source": grade.source,
            "checks": checks}


def _submission_json(s: SubmissionView) -> dict[str, Any]:
    return {"id": s.id, "course": s.course, "student": s.student, "lab": s.lab,
            "created_at": s.created_at.isoformat(), "machines": s.machines, "bytes": s.bytes}


# ---- machines ----------------------------------------------------------------------------------------------------
@bp.get("/machines")
def machines() -> ResponseReturnValue:
    """The caller's machines: a student's own, or every machine of an instructor's courses."""
    user = _user()
    owned = services().accounts(user.username).machines_of(user)
    views = {v.name: v for v in services().machines(user.username).status()} if owned else {}
    return jsonify([_machine_json(m, views[m.name]) for m in owned if m.name in views])


@bp.get("/machines/<name>")
def machine(name: str) -> ResponseReturnValue:
    owned = _machine(name)
    return jsonify(_machine_json(owned, services().machines(_user().username).status(owned.name)[0]))


def _machine_json(owned: OwnedMachine, view: Any) -> dict[str, Any]:
    return {"name": owned.name, "course": owned.course, "lab": owned.lab, "machine": owned.machine,
            "student": owned.student, "student_name": owned.student_name, "state": view.state,
            "forwards": view.forwards, "ssh": view.ssh, "uptime": view.uptime, "memory_mb": view.memory_mb,
            "overlay_bytes": view.overlay_bytes, "snapshots": view.snapshots, "console_read_only": owned.read_only}


def _state_json(view: Any) -> dict[str, Any]:
    return {"name": view.name, "state": view.state}


@bp.post("/machines/<name>/start")
def machine_start(name: str) -> ResponseReturnValue:
    """Start one machine (within the course's memory budget and per-student limit)."""
    owned = _machine(name)
    json_body({})
    service = services().courses(_user().username)
    return _machine_job("start", owned, lambda progress: {"machines": service.start(
        owned.course, student=owned.student, machine=owned.machine, lab=owned.lab, progress=progress)},
        lambda state: f"it is already {state}" if state in _LIVE else None)


@bp.post("/machines/<name>/stop")
def machine_stop(name: str) -> ResponseReturnValue:
    owned = _machine(name)
    json_body({})
    service = services().machines(_user().username)
    return _machine_job("stop", owned, lambda progress: _state_json(service.stop(owned.name)),
                        lambda state: None if state in ("running", "paused", "starting") else f"it is {state}")


@bp.post("/machines/<name>/reset")
def machine_reset(name: str) -> ResponseReturnValue:
    """Throw away every change on the machine; needs ``{"confirm": true}``."""
    owned = _machine(name)
    body = json_body({"confirm": Field(bool)})
    if body.get("confirm") is not True:
        abort(400, 'a reset throws away all work on the machine: send {"confirm": true} to go ahead')
    service = services().machines(_user().username)
    return _machine_job("reset", owned, lambda progress: _state_json(service.reset(owned.name)),
                        lambda state: f"it is {state}; stop it first" if state in _LIVE else None)


@bp.get("/machines/<name>/snapshots")
def snapshots(name: str) -> ResponseReturnValue:
    owned = _machine(name)
    listed = services().machines(_user().username).snapshots(owned.name)
    return jsonify([{k: v for k, v in s.items() if k != "path"} for s in listed])


@bp.post("/machines/<name>/snapshots")
def snapshot_take(name: str) -> ResponseReturnValue:
    """Take a named snapshot (a running machine is synced and paused for the copy): a job."""
    from labkit.names import check_name

    owned = _machine(name)
    snapshot = check_name(json_body({"name": Field(str, required=True)})["name"], "snapshot name")
    service = services().machines(_user().username)
    if any(s["name"] == snapshot for s in service.snapshots(owned.name)):
        raise ConflictError(f"machine {owned.name} already has a snapshot named {snapshot!r}")
    return _machine_job("snapshot", owned, lambda progress: {"name": owned.name, "snapshot": snapshot,
                                                             "state": service.snapshot(owned.name, snapshot).state},
                        lambda state: f"it is {state}" if state in ("starting", "stopping") else None,
                        target=f"{owned.name}/{snapshot}")


@bp.post("/machines/<name>/snapshots/<snapshot>/restore")
def snapshot_restore(name: str, snapshot: str) -> ResponseReturnValue:
    """Bring a snapshot back (the machine must be stopped; changes since are lost): a job."""
    owned = _machine(name)
    json_body({})
    service = services().machines(_user().username)
    _snapshot_or_404(service.snapshots(owned.name), owned.name, snapshot)
    return _machine_job("restore", owned, lambda progress: {**_state_json(service.restore(owned.name, snapshot)),
                                                            "snapshot": snapshot},
                        lambda state: f"it is {state}; stop it first" if state in _LIVE else None,
                        target=f"{owned.name}/{snapshot}")


@bp.delete("/machines/<name>/snapshots/<snapshot>")
def snapshot_delete(name: str, snapshot: str) -> ResponseReturnValue:
    owned = _machine(name)
    service = services().machines(_user().username)
    _snapshot_or_404(service.snapshots(owned.name), owned.name, snapshot)
    service.delete_snapshot(owned.name, snapshot)
    return "", 204


def _snapshot_or_404(listed: list[dict[str, object]], machine: str, snapshot: str) -> None:
    if not any(s["name"] == snapshot for s in listed):
        raise NotFoundError(f"machine {machine} has no snapshot {snapshot!r}")


# ---- the description ---------------------------------------------------------------------------------------------
@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    from web.openapi import document

    return jsonify(document())
