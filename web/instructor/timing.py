"""A course lab's time and exam mode on the course page (``instructor/_time.html``): its window, allowance and idle
pause, exam mode, releasing results, and who is in an exam and who has submitted. The same as ``labkit course
time|exam|release|exam-status`` (labkit.services.timing, labkit.services.exams), each change in the audit log."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from flask import flash, redirect, request, url_for
from flask.typing import ResponseReturnValue

from labkit.errors import LabkitError
from labkit.services.exams import Exams
from labkit.services.timing import Timing, parse_minutes, parse_moment
from web.access import actor, instructor_required, owned_course_or_404
from web.instructor import bp
from web.state import services


def _timing() -> Timing:
    return Timing(services().settings, services().db, actor())


@bp.context_processor
def _time_helpers() -> dict[str, Any]:
    """Read lazily by the course page's time section only."""
    state = services()
    return {"lab_times": lambda course: _timing().show(course), "local_input": _local_input,
            "exam_status": lambda course, lab: Exams(state.settings, state.db, actor()).status(course, lab)}


def _local_input(stamp: str | None) -> str:
    """A stored UTC moment as a datetime-local field's value, in the server's local time (how it is read back)."""
    return "" if not stamp else dt.datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%dT%H:%M")


def _back(course: str) -> ResponseReturnValue:
    return redirect(url_for("instructor.course", course=course) + "#time", 303)


def _change(course: str, lab: str, what: str, change: Callable[[], object]) -> ResponseReturnValue:
    try:
        change()
    except LabkitError as err:
        flash(f"Lab {lab}: nothing changed: {err}.", "error")
    else:
        flash(f"Lab {lab}: {what}.", "success")
    return _back(course)


@bp.post("/courses/<course>/labs/<lab>/time")
@instructor_required
def lab_time(course: str, lab: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)

    def change() -> object:
        values: dict[str, object] = {}
        for field, parse in (("opens", parse_moment), ("closes", parse_moment), ("allowance", parse_minutes),
                             ("idle", parse_minutes)):
            text = request.form.get(field, "").strip()
            values[field] = parse(text, field) if text else None
        return _timing().set_time(owned.name, lab, **values)

    return _change(owned.name, lab, "time settings saved", change)


@bp.post("/courses/<course>/labs/<lab>/exam")
@instructor_required
def lab_exam(course: str, lab: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)
    on = request.form.get("mode") == "on"
    return _change(owned.name, lab, f"exam mode {'on' if on else 'off'}",
                   lambda: _timing().set_exam(owned.name, lab, on))


@bp.post("/courses/<course>/labs/<lab>/release")
@instructor_required
def lab_release(course: str, lab: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)
    return _change(owned.name, lab, "results released", lambda: _timing().release(owned.name, lab))
