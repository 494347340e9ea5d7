"""My courses, one course's page, the roster upload and the students' one-time set-password links.

A roster upload is written to a private temporary file and imported by `Courses.import_roster`, which validates the
whole file first: a bad roster shows every problem with its line number and changes nothing. Student links are
secrets, shown once (on the page or as a CSV download) and never stored in the clear, so each creation makes new ones.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flask import current_app, flash, make_response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import RequestEntityTooLarge

from labkit.errors import LabkitError, RosterError
from labkit.grading.report import to_csv
from labkit.services.accounts import OwnedCourse, PasswordLink
from labkit.services.course_view import CourseView
from labkit.services.courses import RESET_EACH_SESSION, RosterReport
from web.access import actor, current_user, instructor_required, owned_course_or_404
from web.errors import answer
from web.ids import record_id
from web.instructor import bp
from web.instructor.actions import course_jobs
from web.state import services

#: "line N: message" parts of a roster error that lists several problems
_PROBLEM = re.compile(r"line (\d+): (.*?)(?=; line \d+: |$)")
LINK_COLUMNS = ["id", "name", "email", "url", "expires"]


def size_text(size: int) -> str:
    return f"{size // (1 << 20)} MiB" if size % (1 << 20) == 0 else f"{size // 1024} KiB"


@bp.errorhandler(RequestEntityTooLarge)
def too_large(_err: RequestEntityTooLarge) -> ResponseReturnValue:
    limit = current_app.config.get("MAX_CONTENT_LENGTH") or 0
    return answer(f"The upload is too large: the limit is {size_text(limit)}. A roster needs one short line per "
                  "student; check that you picked the right file.", 413)


@bp.get("/")
@instructor_required
def index() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    courses = services().courses(actor())
    rows = []
    for name in services().accounts(actor()).owned_courses(user.id):
        summary = courses.show(name)
        machines = courses.status(name)
        rows.append({"name": name, "labs": [lab["id"] for lab in summary["labs"]],  # type: ignore[attr-defined]
                     "students": summary["students"], "machines": len(machines),
                     "running": sum(1 for m in machines if m["state"] == "running")})
    return render_template("instructor/index.html", courses=rows)


def course_context(owned: OwnedCourse) -> dict[str, Any]:
    """What the course page shows (also after a roster upload or link creation)."""
    courses = services().courses(actor())
    summary = courses.show(owned.name)
    students = [s for s in courses.students(owned.name) if not s["archived"]]
    machines = courses.status(owned.name)
    return {"course": owned.name, "summary": summary, "students": students,
            "archived": summary["archived_students"], "machines": len(machines),
            "running": sum(1 for m in machines if m["state"] == "running"),
            "session": CourseView(services().db).open_session(owned.name), "jobs": course_jobs(owned),
            "follow": request.args.get("job", type=record_id), "each_session": RESET_EACH_SESSION,
            "session_plan": courses.session_plan(owned.name),
            "upload_limit": size_text(current_app.config.get("MAX_CONTENT_LENGTH") or 0)}


@bp.get("/courses/<course>")
@instructor_required
def course(course: str) -> ResponseReturnValue:
    return render_template("instructor/course.html", **course_context(owned_course_or_404(course)))


@bp.post("/courses/<course>/roster")
@instructor_required
def roster(course: str) -> ResponseReturnValue:
    """Import an uploaded roster CSV; the page shows the import report, or every problem by line (nothing changed)."""
    owned = owned_course_or_404(course)
    upload = request.files.get("roster")
    if upload is None or not upload.filename:
        flash("Choose a roster file (CSV: id,name,email) to upload.", "error")
        return redirect(url_for("instructor.course", course=owned.name))
    shown_name = Path(upload.filename.replace("\\", "/")).name or "roster.csv"
    folder = Path(tempfile.mkdtemp(prefix="lkroster"))
    try:
        path = folder / "roster.csv"
        upload.save(path)
        try:
            report = services().courses(actor()).import_roster(owned.name, path)
        except RosterError as err:
            message = str(err).replace(str(path), shown_name)
            problems = [(int(line), text) for line, text in _PROBLEM.findall(message)]
            if not problems and err.line:
                problems = [(err.line, message.split(": ", 1)[-1])]
            return render_template("instructor/course.html", roster_error=message, roster_problems=problems,
                                   roster_file=shown_name, **course_context(owned)), 400
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return render_template("instructor/course.html", roster_report=_report_rows(report), roster_file=shown_name,
                           **course_context(owned))


def _report_rows(report: RosterReport) -> list[tuple[str, list[str]]]:
    return [("added", report.added), ("updated", report.updated), ("archived (no longer listed; their work is "
            "kept)", report.archived), ("restored", report.restored),
            ("held (their account is in another instructor's course: not enrolled here, no links; an admin enrols "
             "them with 'labkit user enrol')", report.held)]


@bp.post("/courses/<course>/links")
@instructor_required
def links(course: str) -> ResponseReturnValue:
    """New one-time set-password links: for students who cannot log in yet, or one named student (a reset)."""
    owned = owned_course_or_404(course)
    student = request.form.get("student", "").strip()
    try:
        made = services().accounts(actor()).create_links(owned.name, [student] if student else None)
    except LabkitError as err:
        flash(f"No links were made: {err}.", "error")
        return redirect(url_for("instructor.course", course=owned.name))
    if not student:
        for held in services().accounts(actor()).held(owned.name):
            flash(f"No link for {held.sid}: {held.reason}.", "error")
    rows = [_link_row(link) for link in made]
    if request.form.get("format") == "csv":
        response = make_response(to_csv(LINK_COLUMNS, [[row[c] for c in LINK_COLUMNS] for row in rows]))
        response.headers["Content-Type"] = "text/csv; charset=utf-8"
        response.headers["Content-Disposition"] = f'attachment; filename="links-{owned.name}.csv"'
    else:
        response = make_response(render_template("instructor/links.html", course=owned.name, links=rows,
                                                 student=student))
    response.headers["Cache-Control"] = "no-store"  # the links are passwords until used
    return response


def _link_row(link: PasswordLink) -> dict[str, str]:
    return {"id": link.username, "name": link.name, "email": link.email,
            "url": url_for("auth.set_password", token=link.token, _external=True),
            "expires": link.expires_at.strftime("%Y-%m-%d %H:%M UTC")}
