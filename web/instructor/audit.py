"""The audit log of one course: who did what, and when, to the course, its machines and its students."""

from __future__ import annotations

from flask import render_template, request
from flask.typing import ResponseReturnValue

from labkit.services.audit_view import AuditView
from web.access import instructor_required, owned_course_or_404
from web.ids import record_id
from web.instructor import bp
from web.state import services

PAGE = 100


@bp.get("/courses/<course>/audit")
@instructor_required
def audit(course: str) -> ResponseReturnValue:
    """Newest first, ``PAGE`` events a page; ``?before=<event id>`` pages back."""
    owned = owned_course_or_404(course)
    before = request.args.get("before", type=record_id)
    events = AuditView(services().db).course_events(owned.name, limit=PAGE, before=before)
    older = events[-1].id if len(events) == PAGE else None
    return render_template("instructor/audit.html", course=owned.name, events=events, older=older, before=before)
