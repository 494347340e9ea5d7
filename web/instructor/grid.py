"""The live class grid: students × lab machines, each cell the machine's state, each row the student's checks passed
and time used per lab; and the read-only console a cell links to.

The page renders the whole grid once (students in natural order: s1, s2, s10); ``instructor.js`` then listens to
``grid/events``, a server-sent event stream, and changes only the cells and rows that changed. The stream reads the
grid from the database every `TICK_S` (a few plain queries, `labkit.services.class_grid`), compares its version with
the last one sent, and sends the difference; it never holds a worker's thread for long: it ends after `LIFETIME_S`
(the browser's EventSource reconnects by itself, sending the last version it saw as ``Last-Event-ID``: an unchanged
grid costs nothing more, a changed one is sent whole), and a comment every `HEARTBEAT_S` finds a browser that left.
Each open grid costs one server thread (``labkit serve`` runs gthread workers with ``--threads`` each) for as long as
it is open, and one reading of the grid a second (about 2% of a core at 200 students: docs/benchmarks.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Response, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from labkit.errors import LabkitError, NotFoundError
from labkit.services.accounts import OwnedCourse
from labkit.services.class_grid import ClassGrid, GridReader
from labkit.services.course_view import CourseView
from labkit.services.courses import RESET_EACH_SESSION
from labkit.services.extra_time import MAX_GRANT_MINUTES, ExtraTime
from labkit.services.machine_states import LIVE
from web.access import actor, instructor_required, owned_course_or_404, owned_machine_or_404
from web.closing import closing
from web.ids import record_id
from web.instructor import bp
from web.instructor.actions import JOB_TITLES, course_jobs
from web.state import WebState, services

log = logging.getLogger(__name__)

#: how often the stream reads the grid (seconds)
TICK_S = 1.0
#: how long one stream lasts before the browser reconnects (seconds): a stream never holds its thread for good
LIFETIME_S = 300.0
#: a comment this often when nothing changed, so a browser that left is noticed (a write to it fails)
HEARTBEAT_S = 15.0
#: how often the stream has the machines recorded as live checked against their processes (a guest that died)
RECONCILE_S = 15.0
#: what the browser waits before it reconnects (milliseconds)
RETRY_MS = 2000
LIVE_STATES = {state.value for state in LIVE}
STATES = ("running", "starting", "paused", "stopping", "stopped", "error")


def clock_text(seconds: int | None) -> str:
    """``seconds`` as m:ss, or h:mm:ss from an hour; "—" for none (the same as instructor.js writes)."""
    if seconds is None:
        return "—"
    hours, rest = divmod(max(int(seconds), 0), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _read(owned: OwnedCourse) -> ClassGrid:
    return GridReader(services().db).read(owned.name)


def _active_jobs(state: WebState, owned: OwnedCourse, job_url: str) -> list[dict[str, Any]]:
    found = []
    for job in state.job_queries.list(course_id=owned.id, active=True, limit=5):
        data = job.as_dict()
        data["title"] = JOB_TITLES.get(job.kind, job.kind)
        data["url"] = f"{job_url.rsplit('/', 1)[0]}/{job.id}"
        found.append(data)
    return found


def _session_plan(data: ClassGrid, labs: list[dict[str, Any]]) -> dict[str, object]:
    """`Courses.session_plan` from the grid just read (its recorded states, which the stream keeps reconciled):
    the service's own reads every machine's processes, most of the page's time at 200 students."""
    resets = {lab["id"] for lab in labs if lab["reset_policy"] == RESET_EACH_SESSION}
    reset = [c for c in data.cells if c.lab in resets]
    return {"course": data.course, "machines": len(data.cells),
            "running": sum(1 for c in data.cells if c.state in LIVE_STATES), "reset": len(reset),
            "students": len({c.student for c in reset}), "reset_labs": sorted(resets)}


@bp.get("/courses/<course>/grid")
@instructor_required
def grid(course: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)
    data = _read(owned)
    cells = {(c.student, c.lab, c.machine): c for c in data.cells}
    summary = services().courses(actor()).show(owned.name)
    labs: list[dict[str, Any]] = summary["labs"]  # type: ignore[assignment]
    return render_template("instructor/grid.html", course=owned.name, grid=data, cells=cells,
                           labs=labs, each_session=RESET_EACH_SESSION, jobs=course_jobs(owned),
                           follow=request.args.get("job", type=record_id), clock_text=clock_text, states=STATES,
                           max_minutes=MAX_GRANT_MINUTES,
                           session=CourseView(services().db).open_session(owned.name),
                           session_plan=_session_plan(data, labs))


@bp.get("/courses/<course>/grid.json")
@instructor_required
def grid_json(course: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)
    data = _read(owned).as_dict()
    data["jobs"] = [job for job in course_jobs(owned) if job["state"] in ("queued", "running")]
    response = jsonify(data)
    response.headers["Cache-Control"] = "no-store"
    return response


def _event(kind: str, data: object, version: str | None = None) -> str:
    head = f"id: {version}\n" if version else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _changes(before: ClassGrid, now: ClassGrid) -> dict[str, Any]:
    """The cells and student rows of ``now`` that differ from ``before`` (same shape)."""
    states = {c.name: c.state for c in before.cells}
    rows = {s.id: before.row_facts(s) for s in before.students}
    whole = now.as_dict()
    students = {s["id"]: s for s in whole["students"]}  # type: ignore[attr-defined]
    return {"cells": {c.name: c.state for c in now.cells if states.get(c.name) != c.state},
            "students": [students[s.id] for s in now.students if rows.get(s.id) != now.row_facts(s)],
            "running": now.running, "machines": len(now.cells), "at": whole["at"], "version": now.version}


@bp.get("/courses/<course>/grid/events")
@instructor_required
def grid_events(course: str) -> ResponseReturnValue:
    """The grid's changes as server-sent events: ``grid`` (everything), ``changes`` (cells and rows that changed),
    ``shape`` (students or machines came or went: load the page again), ``jobs`` (the active jobs)."""
    owned = owned_course_or_404(course)
    state = services()
    config = current_app.config
    tick = float(config.get("LABKIT_GRID_TICK_S", TICK_S))
    lifetime = float(config.get("LABKIT_GRID_STREAM_S", LIFETIME_S))
    # the version the browser has: from its page (``since``) on the first connection, then EventSource's own header
    seen = request.headers.get("Last-Event-ID") or request.args.get("since", "")
    job_url = url_for("instructor.job_status", course=owned.name, job_id=1)
    who = actor()

    def stream() -> Iterator[str]:
        reader = GridReader(state.db)
        ends = time.monotonic() + lifetime
        last = reader.read(owned.name)
        yield f"retry: {RETRY_MS}\n\n"
        if last.version != seen:
            yield _event("grid", last.as_dict(), last.version)
        jobs = _active_jobs(state, owned, job_url)
        if jobs:
            yield _event("jobs", jobs)
        said = reconciled = time.monotonic()
        while time.monotonic() + tick < ends and not closing.is_set():
            if closing.wait(tick):
                return
            try:
                if time.monotonic() - reconciled >= RECONCILE_S:
                    reconciled = time.monotonic()
                    live = reader.live_machines(owned.name)
                    if live:
                        state.machines(who).status(names=live)  # writes back the records found out of date
                now = reader.read(owned.name)
                found = _active_jobs(state, owned, job_url)
            except NotFoundError:  # the course was removed meanwhile
                return
            except LabkitError as err:  # e.g. the database busy for too long: try again at the next tick
                log.warning("class grid stream of %s: %s", owned.name, err)
                continue
            if [j["id"] for j in found] != [j["id"] for j in jobs]:  # progress itself the page polls per job
                jobs = found
                yield _event("jobs", jobs)
                said = time.monotonic()
            if now.shape() != last.shape():
                yield _event("shape", {"version": now.version}, now.version)
                return
            if now.version != last.version:
                yield _event("changes", _changes(last, now), now.version)
                last, said = now, time.monotonic()
            elif time.monotonic() - said >= HEARTBEAT_S:
                yield ": still here\n\n"
                said = time.monotonic()

    response = Response(stream(), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # a proxy in front must pass each event on at once
    return response


@bp.post("/courses/<course>/extend")
@instructor_required
def extend(course: str) -> ResponseReturnValue:
    """Give one student extra minutes on one lab (recorded in the audit log); back to the grid."""
    owned = owned_course_or_404(course)
    form = request.form
    try:
        granted = ExtraTime(services().db, actor()).extend(owned.name, form.get("student", ""), form.get("lab", ""),
                                                           form.get("minutes", ""))
    except LabkitError as err:
        flash(f"No time was added: {err}.", "error")
    else:
        ends = (f"; their time now ends {granted.deadline:%Y-%m-%d %H:%M} UTC" if granted.deadline
                else " (the lab has no time limit yet: it counts once one is set)")
        flash(f"{granted.student} has {granted.added} more minutes on {granted.lab} "
              f"({granted.extra_minutes} extra in all){ends}.", "success")
    return redirect(url_for("instructor.grid", course=owned.name))


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

