"""Grades of a course: run grading as a job, the gradebook (students × checks with totals), pass rates, CSV export
and the history of grading runs.

The CSV download is the same gradebook, written the same way, as ``labkit gradebook COURSE --csv FILE``
(`labkit.grading.report`): UTF-8 with a byte order mark, CRLF, spreadsheet-safe cells.
"""

from __future__ import annotations

from typing import Any

from flask import make_response, render_template, request
from flask.typing import ResponseReturnValue

from labkit.grading.report import cell, to_csv
from labkit.progress import Reporter
from web.access import actor, instructor_required, owned_course_or_404
from web.ids import record_id
from web.instructor import bp
from web.instructor.actions import course_jobs, started, submit
from web.state import services

#: the first columns of a gradebook row (student, name, email, archived) and the last two (total, max)
_PERSON, _TOTALS = 4, 2


@bp.get("/courses/<course>/grades")
@instructor_required
def grades(course: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)
    grading = services().grading(actor())
    book = grading.gradebook(owned.name, detail=True)
    rows = [[cell(value) for value in row] for row in book.rows]
    only = request.args.get("student") or None  # the class grid links to one student's grades
    if only is not None:
        rows = [row for row in rows if row[0] == only]
    rates = sorted(grading.pass_rates(owned.name), key=lambda r: (str(r["lab"]), str(r["check"])))
    labs = [lab["id"] for lab in services().courses(actor()).show(owned.name)["labs"]]  # type: ignore[attr-defined]
    return render_template("instructor/grades.html", course=owned.name, columns=book.columns, rows=rows,
                           person=_PERSON, totals=_TOTALS, rates=rates, only=only,
                           titles={f"{r['lab']}:{r['check']}": r["title"] for r in rates},
                           runs=grading.runs(owned.name), labs=labs, policies=grading.policies(owned.name),
                           jobs=course_jobs(owned), follow=request.args.get("job", type=record_id))


@bp.post("/courses/<course>/grade")
@instructor_required
def grade(course: str) -> ResponseReturnValue:
    """Grade the class (live machines, or with ``submissions=yes`` the latest submissions), optionally one lab."""
    owned = owned_course_or_404(course)
    grading = services().grading(actor())
    lab = request.form.get("lab") or None
    submissions = request.form.get("submissions") == "yes"

    def run(progress: Reporter) -> dict[str, Any]:
        report = grading.grade(owned.name, lab=lab, submissions=submissions, progress=progress)
        return {"run": report.run_id, "graded": len(report.grades), "missing": report.missing,
                "not_checked": report.not_checked, "needs_running": report.needs_running}

    return started(owned, submit(owned, "grade", run))


@bp.get("/courses/<course>/grades.csv")
@instructor_required
def grades_csv(course: str) -> ResponseReturnValue:
    """The gradebook as CSV, byte for byte what ``labkit gradebook COURSE --csv`` writes (``?detail=1``:
    ``--detail``)."""
    owned = owned_course_or_404(course)
    detail = request.args.get("detail") == "1"
    book = services().grading(actor()).gradebook(owned.name, detail=detail)
    response = make_response(("\ufeff" + to_csv(book.columns, book.rows)).encode())
    response.headers["Content-Type"] = "text/csv; charset=utf-8"
    suffix = "-detail" if detail else ""
    response.headers["Content-Disposition"] = f'attachment; filename="grades-{owned.name}{suffix}.csv"'
    response.headers["Cache-Control"] = "no-store"
    return response
