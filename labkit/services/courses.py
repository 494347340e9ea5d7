"""Courses: labs bound to a roster, provisioned for every student, started, stopped and reset as a class.

`Courses` is what the CLI, the web app and scripts use. It is built in layers, one module each: course records,
rosters and targets (`course_records`), provisioning (`course_provisioning`), class-wide actions (`course_actions`)
with admission, the memory budget and per-student limit (`course_admission`), and teaching sessions
(`course_sessions`). A course never touches overlays or processes itself: every student machine is an ordinary
machine of the `Machines` service (its own overlay, seed disk and audit trail), linked to the course by an
`Assignment` row.
"""

from __future__ import annotations

from labkit.services.course_records import RESET_EACH_SESSION, RosterReport
from labkit.services.course_sessions import CourseSessions


class Courses(CourseSessions):
    """``labkit course ...``."""


__all__ = ["RESET_EACH_SESSION", "Courses", "RosterReport"]
