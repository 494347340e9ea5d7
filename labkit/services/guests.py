"""Opening Guest handles by name, for grading scripts: a bare machine, or a student's machine in a course.

These are the functions `labkit.open_vm` and `labkit.open_guest` give to Python. The database is opened only to find
the machine and closed again before the handle is returned, so a script holding many handles holds no database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.config import Settings
from labkit.errors import ConflictError
from labkit.services.courses import Courses
from labkit.services.db import Database
from labkit.services.machines import Machines

if TYPE_CHECKING:
    from labkit.guest import Guest


def open_vm(name: str, settings: Settings | None = None) -> Guest:
    """A Guest handle for machine ``name`` (running: SSH or console; stopped: offline, read-only)."""
    settings = settings or Settings.from_env()
    db = Database(settings)
    try:
        return Machines(settings, db, actor="grader").open_guest(name)
    finally:
        db.close()


def open_guest(course: str, student: str, machine: str, lab: str | None = None,
               settings: Settings | None = None) -> Guest:
    """A Guest handle for ``student``'s machine ``machine`` in ``course``.

    ``lab`` is needed only when the student has a machine of that name in two labs of the course.
    """
    settings = settings or Settings.from_env()
    db = Database(settings)
    try:
        courses = Courses(settings, db, actor="grader")
        targets = courses.targets(course, student=student, machine=machine, lab=lab)
        if len(targets) > 1:
            labs = ", ".join(sorted(t.lab for t in targets))
            raise ConflictError(f"student {student} has a machine {machine!r} in several labs of course {course} "
                                f"({labs}); say which with lab=")
        return courses.machines.open_guest(targets[0].name)
    finally:
        db.close()
