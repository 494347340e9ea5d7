"""The class grid: students × machines, each cell the machine's state and the student's last grade in that lab.

The page renders the grid once; ``instructor.js`` then polls ``grid.json`` every few seconds and updates the cells in
place. A cell links to a read-only view of that student's console (the WebSocket makes instructors read-only too).
"""

from __future__ import annotations

from typing import Any

from flask import abort, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from labkit.grading.report import cell
from labkit.services.accounts import OwnedCourse
from labkit.services.course_view import CourseView
from labkit.services.courses import RESET_EACH_SESSION
from web.access import actor, instructor_required, owned_course_or_404, owned_machine_or_404
from web.ids import record_id
from web.instructor import bp
from web.instructor.actions import course_jobs
from web.state import services

#: how often the page asks for fresh states (milliseconds)
POLL_MS = 3000


def _grade_text(points: object, max_points: object) -> str:
    return "" if points is None else f"{cell(points)}/{cell(max_points)}"


def grid_data(owned: OwnedCourse) -> dict[str, Any]:
    """Students, machine columns (lab, machine) and one cell per provisioned machine, with state and last grade."""
    courses = services().courses(actor())
    students = [{"id": s["id"], "name": s["name"]} for s in courses.students(owned.name) if not s["archived"]]
    machines = courses.status(owned.name)
    book = services().grading(actor()).gradebook(owned.name)
    labs = [c for c in book.columns[4:-2] if not c.endswith((" max", " status"))]
    grades: dict[tuple[str, str], str] = {}
    for row in book.rows:
        for lab in labs:
            index = book.columns.index(lab)
            grades[(str(row[0]), lab)] = _grade_text(row[index], row[index + 1])
    columns: list[dict[str, str]] = []
    for m in machines:
        column = {"lab": str(m["lab"]), "machine": str(m["machine"])}
        if column not in columns:
            columns.append(column)
    cells = [{"student": m["student"], "lab": m["lab"], "machine": m["machine"], "name": m["name"],
              "state": m["state"], "uptime": m["uptime"], "grade": grades.get((str(m["student"]), str(m["lab"])), "")}
             for m in machines]
    return {"course": owned.name, "students": students, "columns": columns, "cells": cells,
            "running": sum(1 for m in machines if m["state"] == "running"), "machines": len(machines)}


@bp.get("/courses/<course>/grid")
@instructor_required
def grid(course: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)
    data = grid_data(owned)
    by_key = {(c["student"], c["lab"], c["machine"]): c for c in data["cells"]}
    summary = services().courses(actor()).show(owned.name)
    return render_template("instructor/grid.html", course=owned.name, grid=data, cells=by_key, poll_ms=POLL_MS,
                           labs=summary["labs"], each_session=RESET_EACH_SESSION, jobs=course_jobs(owned),
                           follow=request.args.get("job", type=record_id),
                           session=CourseView(services().db).open_session(owned.name),
                           session_plan=services().courses(actor()).session_plan(owned.name))


@bp.get("/courses/<course>/grid.json")
@instructor_required
def grid_json(course: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)
    data = grid_data(owned)
    data["jobs"] = [job for job in course_jobs(owned) if job["state"] in ("queued", "running")]
    response = jsonify(data)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/courses/<course>/machines/<name>/console")
@instructor_required
def console(course: str, name: str) -> ResponseReturnValue:
    """A student's console, read-only; the machine must belong to this course."""
    owned = owned_course_or_404(course)
    machine = owned_machine_or_404(name)
    if machine.course_id != owned.id:
        abort(404)
    state = next((m["state"] for m in services().courses(actor()).status(owned.name, student=machine.student,
                                                                          machine=machine.machine, lab=machine.lab)
                  if m["name"] == name), "unknown")
    return render_template("instructor/console.html", course=owned.name, machine=machine, state=state)
