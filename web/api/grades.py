"""API routes of grades and submissions: the gradebook, grading runs, a student's grades and submissions, and a
student's own self-check and lab submission."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Response, abort, jsonify
from flask.typing import ResponseReturnValue

from labkit.grading.report import to_csv
from labkit.progress import Reporter
from labkit.services.gradebook import StudentGrade
from labkit.services.memberships import Membership
from labkit.services.submissions import Submissions, SubmissionView
from web.api import bp, scope
from web.api.jobs import submit
from web.api_input import Field, flag, json_body
from web.state import services


@bp.get("/courses/<course>/grades")
def grades(course: str) -> ResponseReturnValue:
    """The class gradebook (``?detail=1``: a column per check) and per-check pass rates."""
    scope.owned_course(course)
    grading = services().grading(scope.user().username)
    book = grading.gradebook(course, detail=flag("detail"))
    return jsonify(columns=book.columns, rows=book.rows, pass_rates=grading.pass_rates(course))


@bp.get("/courses/<course>/grades.csv")
def grades_csv(course: str) -> ResponseReturnValue:
    """The same gradebook as ``labkit gradebook --csv``."""
    scope.owned_course(course)
    book = services().grading(scope.user().username).gradebook(course, detail=flag("detail"))
    return Response("\ufeff" + to_csv(book.columns, book.rows), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{course}-grades.csv"'})


@bp.post("/courses/<course>/grade")
def grade(course: str) -> ResponseReturnValue:
    """Grade the class, one lab, or one student (live machines, or with ``submissions`` the latest submissions again
    from their frozen disks; ``needs_running`` then names the checks that may differ from the submissions' grades)."""
    found = scope.owned_course(course)
    body = json_body({"lab": Field(str), "student": Field(str), "submissions": Field(bool)})
    lab = scope.lab(found, body["lab"]) if "lab" in body else None
    student = scope.student_of(found, body["student"]) if "student" in body else None
    grading = services().grading(scope.user().username)

    def run(progress: Reporter) -> dict[str, Any]:
        report = grading.grade(course, lab=lab, student=student, submissions=body.get("submissions", False),
                               progress=progress)
        return {"run_id": report.run_id, "kind": report.kind, "missing": report.missing,
                "not_checked": report.not_checked, "needs_running": report.needs_running,
                "grades": [_grade_json(g, hidden=True) for g in report.grades]}

    target = "/".join(["grade:" + course, *(f"{k}={v}" for k, v in (("lab", lab), ("student", student)) if v)])
    return submit("grade", target, run, found.course_id)


@bp.get("/courses/<course>/students/<sid>/grades")
def student_grades(course: str, sid: str) -> ResponseReturnValue:
    """A student's latest grade per lab; the student themself sees no hidden checks and no evidence."""
    found = scope.course(course)
    scope.student_of(found, sid)
    shown = services().grading(scope.user().username).latest(course, sid, include_hidden=found.is_owner)
    return jsonify(student=sid, grades=[_grade_json(g, hidden=found.is_owner) for g in shown])


@bp.get("/courses/<course>/students/<sid>/submissions")
def student_submissions(course: str, sid: str) -> ResponseReturnValue:
    """A student's submissions; the instructor also sees the grade each got when it was made."""
    found = scope.course(course)
    scope.student_of(found, sid)
    listed = Submissions(services().settings, services().db, scope.user().username).list(course, sid)
    if not found.is_owner:
        return jsonify([_submission_json(s) for s in listed])
    stored = {g.id: g.grade for g in services().grading(scope.user().username).submission_grades(course, None, sid)}
    return jsonify([_submission_json(_with_grade(s, stored.get(s.id)), graded=True) for s in listed])


def _with_grade(view: SubmissionView, grade: StudentGrade | None) -> SubmissionView:
    """The submission with the grade stored when it was made (the instructor's view)."""
    if grade is None:
        return view
    return dataclasses.replace(view, points=grade.points, max_points=grade.max_points,
                               not_checked=grade.not_checked, graded_note=grade.why_not_graded)


@bp.post("/courses/<course>/students/<sid>/submit")
def student_submit(course: str, sid: str) -> ResponseReturnValue:
    """Freeze the student's machines (of every lab, or of ``lab``) as a submission."""
    found = scope.course(course)
    scope.student_of(found, sid)
    body = json_body({"lab": Field(str)})
    return _submit_job(found, sid, scope.lab(found, body["lab"]) if "lab" in body else None)


def _submit_job(found: Membership, sid: str, lab: str | None) -> ResponseReturnValue:
    from labkit.services.exams import Exams

    service = Submissions(services().settings, services().db, scope.user().username)
    exams = Exams(services().settings, services().db, scope.user().username)
    course = found.course

    def run(progress: Reporter) -> dict[str, Any]:
        # a student's own Submit of one lab is final in exam mode (labkit.services.exams)
        views = exams.submit(course, sid, lab) if lab and not found.is_owner else service.submit(course, sid, lab)
        return {"submissions": [_submission_json(s, graded=found.is_owner) for s in views]}

    return submit("submit", f"submit:{course}/{sid}" + (f"/{lab}" if lab else ""), run, found.course_id)


@bp.post("/labs/<course>/<lab>/submit")
def lab_submit(course: str, lab: str) -> ResponseReturnValue:
    """The student's own submission of one lab."""
    found = _student_course(course)
    json_body({})
    return _submit_job(found, str(found.sid), scope.lab(found, lab))


@bp.post("/labs/<course>/<lab>/self-check")
def lab_self_check(course: str, lab: str) -> ResponseReturnValue:
    """The lab's non-hidden checks against the student's own live machines (a job; not counted as a grade)."""
    found = _student_course(course)
    json_body({})
    scope.lab(found, lab)
    sid = str(found.sid)
    grading = services().grading(scope.user().username)

    def run(progress: Reporter) -> dict[str, Any]:
        report = grading.self_check(course, sid, lab)
        return {"run_id": report.run_id, "grades": [_grade_json(g, hidden=False) for g in report.grades]}

    return submit("self-check", f"self-check:{course}/{sid}/{lab}", run, found.course_id)


def _student_course(course: str) -> Membership:
    found = scope.course(course)
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
                                 "feedback": r.feedback, "skipped_reason": r.skipped_reason,
                                 "not_checked": r.unchecked}
        if hidden:
            check.update(hidden=r.check_id in grade.hidden, evidence=r.evidence)
        checks.append(check)
    return {"student": grade.student, "lab": grade.lab, "points": grade.points, "max_points": grade.max_points,
            "passed": grade.passed, "graded_at": grade.graded_at.isoformat(), "source": grade.source,
            "complete": grade.complete, "not_graded_because": grade.why_not_graded or None, "checks": checks}


def _submission_json(s: SubmissionView, graded: bool = False) -> dict[str, Any]:
    """A submission; with ``graded`` (the instructor) the grade stored with it, hidden checks included."""
    found = {"id": s.id, "course": s.course, "student": s.student, "lab": s.lab,
             "created_at": s.created_at.isoformat(), "machines": s.machines, "bytes": s.bytes}
    if graded:
        found.update(points=s.points, max_points=s.max_points, not_checked=s.not_checked,
                     not_graded_because=s.graded_note or None)
    return found
