"""The instructor dashboard, ``/teach/...``: an instructor's own courses only; any other course name answers 404.

One blueprint, split by purpose: `courses` (my courses, roster upload, student links), `actions` (class-wide actions
as jobs, and their progress), `grid` (the live class grid and the read-only console), `recordings` (console
replays), `capture` (packet capture), `timing` (time windows and exams), `grades` (grading runs, the gradebook,
CSV export) and `audit` (the course's audit log). Every view loads
its course with `owned_course_or_404`.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("instructor", __name__, url_prefix="/teach")

# the views register themselves on ``bp``
from web.instructor import actions, audit, capture, courses, grades, grid, recordings, timing  # noqa: E402, F401
