"""Course records: a course, its labs and its roster, and which student machines a class-wide action applies to.

The base of the course service (`labkit.services.courses.Courses`): provisioning (`course_provisioning`), class-wide
actions with admission (`course_actions`, `course_admission`) and teaching sessions (`course_sessions`) stand on it,
one module each. A course never touches overlays or processes itself: every student machine is an ordinary machine of
the `Machines` service, linked to the course by an `Assignment` row.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, select

from labkit.atomic import locked
from labkit.config import Settings
from labkit.errors import BadNameError, ConflictError, NotFoundError
from labkit.images.store import ImageStore
from labkit.labs.loader import load_lab
from labkit.labs.model import Lab
from labkit.names import check_name
from labkit.services import loaded_labs
from labkit.services.audit import current_actor, record
from labkit.services.course_admission import Target, default_budget_mb
from labkit.services.db import Database
from labkit.services.enrolments import held_students
from labkit.services.lookup import course_by_name
from labkit.services.machines import Machines, MachineView
from labkit.services.models import Assignment, ClassSession, Course, CourseLab, Machine, Student
from labkit.services.roster import check_student_id, read_roster
from labkit.services.submissions import student_folder

RESET_EACH_SESSION = "each-session"


@dataclass(frozen=True)
class RosterReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    #: listed students whose account belongs to another instructor's course: not enrolled here until an admin does
    held: list[str] = field(default_factory=list)


class CourseRecords:
    """Courses, their labs and rosters (the base of `labkit.services.courses.Courses`)."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()
        self.machines = Machines(settings, db, self.actor)

    # ---- helpers -----------------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """One class-wide action per course at a time; a second one waits for the first (then finds it done)."""
        with locked(self.settings.home / f".course-{name}.lock"):
            yield

    def _known_images(self) -> dict[str, str]:
        """The built images' names and ``name:version`` refs (a lab may pin a version), each with its backend."""
        return ImageStore(self.settings).known_refs()

    def _lab(self, course_lab: CourseLab, fresh: bool = False) -> Lab:
        """The course lab, validated; loaded once per version (`loaded_labs`) unless ``fresh``."""
        if fresh:
            loaded_labs.forget(Path(course_lab.path))
        return loaded_labs.course_lab(Path(course_lab.path), course_lab.version, self._known_images())

    # ---- courses -----------------------------------------------------------------------------------------------
    def create(self, name: str, labs: list[Path], memory_budget_mb: int | None = None,
               max_running_per_student: int = 4) -> dict[str, object]:
        check_name(name, "course name")
        if not labs:
            raise BadNameError("a course needs at least one lab (--lab labs/NAME)")
        if max_running_per_student < 1:
            raise BadNameError("the per-student limit of running machines must be at least 1")
        loaded = [load_lab(path, self._known_images()) for path in labs]
        ids = [lab.id for lab in loaded]
        if len(set(ids)) != len(ids):
            raise ConflictError(f"the same lab is given twice: {', '.join(ids)}")
        biggest = max(loaded, key=lambda lab: len(lab.machines))
        if len(biggest.machines) > max_running_per_student:
            # A student runs a lab's machines together: below that count the lab could never run.
            raise BadNameError(f"lab {biggest.id} needs {len(biggest.machines)} machines running at once, but the "
                               f"per-student limit of running machines is {max_running_per_student}; give "
                               f"--max-running {len(biggest.machines)} or more")
        with self.db.transaction() as session:
            if session.scalar(select(Course).where(Course.name == name)) is not None:
                raise ConflictError(f"a course named {name!r} already exists")
            course = Course(name=name, secret=secrets.token_hex(32), memory_budget_mb=memory_budget_mb,
                            max_running_per_student=max_running_per_student)
            for lab in loaded:
                course.labs.append(CourseLab(lab_id=lab.id, path=str(Path(lab.folder or ".").resolve()),
                                             version=lab.version, reset_policy=lab.reset_policy, files={}))
            session.add(course)
            record(session, self.actor, "course-create", name, ", ".join(ids))
            session.flush()
            return self._summary(course)

    def show(self, name: str) -> dict[str, object]:
        with self.db.transaction() as session:
            return self._summary(course_by_name(session, name))

    def _summary(self, course: Course) -> dict[str, object]:
        return {
            "name": course.name,
            "labs": [{"id": cl.lab_id, "path": cl.path, "version": cl.version, "reset_policy": cl.reset_policy,
                      "grade_policy": cl.grade_policy or "best", "provisioned": cl.digest is not None}
                     for cl in course.labs],
            "students": len([s for s in course.students if s.archived_at is None]),
            "archived_students": len([s for s in course.students if s.archived_at is not None]),
            "memory_budget_mb": course.memory_budget_mb or default_budget_mb(),
            "max_running_per_student": course.max_running_per_student,
        }

    def remove(self, name: str, purge: bool = False) -> None:
        """Delete a course. Its students' machines (their work) go only with ``purge``."""
        with self._locked(name):
            with self.db.transaction() as session:
                course = course_by_name(session, name)
                names = [a.vm.name for s in course.students for a in s.assignments]
                course_pk = course.id
            if names and not purge:
                raise ConflictError(f"course {name} has {len(names)} student machines; add --purge to delete them "
                                    "with the students' work")
            for machine in names:
                self._purge_machine(machine)
            shutil.rmtree(self.settings.submissions / f"c{course_pk}", ignore_errors=True)
            with self.db.transaction() as session:
                course = course_by_name(session, name)
                # the course's teaching sessions go with it (their begin and end stay in the audit log)
                session.execute(delete(ClassSession).where(ClassSession.course_id == course.id))
                session.delete(course)
                record(session, self.actor, "course-remove", name, f"{len(names)} machines purged")

    def _purge_machine(self, name: str) -> None:
        views = self.machines.status(name)
        if views and views[0].state != "stopped":
            self.machines.kill(name)
        with self.db.transaction() as session:
            for assignment in session.scalars(select(Assignment).join(Machine).where(Machine.name == name)):
                session.delete(assignment)
        self.machines.remove(name)

    # ---- roster ------------------------------------------------------------------------------------------------
    def import_roster(self, name: str, path: Path, purge: bool = False) -> RosterReport:
        """Add new students, update names, archive students no longer listed (their work stays unless ``purge``)."""
        entries = read_roster(path)
        report = RosterReport()
        to_purge: list[str] = []
        submitted: list[Path] = []
        with self._locked(name):
            with self.db.transaction() as session:
                course = course_by_name(session, name)
                current = {s.sid: s for s in course.students}
                listed = {e.sid for e in entries}
                for entry in entries:
                    student = current.get(entry.sid)
                    if student is None:
                        course.students.append(Student(sid=entry.sid, name=entry.name, email=entry.email))
                        report.added.append(entry.sid)
                        continue
                    if student.archived_at is not None:
                        student.archived_at = None
                        report.restored.append(entry.sid)
                    elif (student.name, student.email) != (entry.name, entry.email):
                        report.updated.append(entry.sid)
                    student.name, student.email = entry.name, entry.email
                for sid, student in current.items():
                    if sid not in listed and student.archived_at is None:
                        student.archived_at = dt.datetime.now(dt.UTC)
                        report.archived.append(sid)
                    if sid not in listed and purge:
                        to_purge += [a.vm.name for a in student.assignments]
                        submitted.append(student_folder(self.settings, course.id, student.id))
                        report.purged.append(sid)
                report.held.extend(h.sid for h in held_students(session, course))
                record(session, self.actor, "roster-import", name,
                       f"+{len(report.added)} ~{len(report.updated)} -{len(report.archived)} "
                       f"restored {len(report.restored)} purged {len(report.purged)}")
            for machine in to_purge:
                self._purge_machine(machine)
            for folder in submitted:
                shutil.rmtree(folder, ignore_errors=True)
            if report.purged:
                with self.db.transaction() as session:
                    course = course_by_name(session, name)
                    for student in [s for s in course.students if s.sid in report.purged]:
                        course.students.remove(student)
        return report

    def enrol(self, name: str, students: list[str]) -> RosterReport:
        """Put exactly ``students`` (ids, named after themselves) on the roster: the throwaway courses of
        ``labkit lab test`` and ``labkit lab up`` have no roster file."""
        with tempfile.TemporaryDirectory(prefix="lkroster") as folder:
            roster = Path(folder) / "roster.csv"
            roster.write_text("id,name,email\n" + "".join(f"{s},{s},\n" for s in students), encoding="utf-8")
            return self.import_roster(name, roster)

    def students(self, name: str) -> list[dict[str, object]]:
        with self.db.transaction() as session:
            course = course_by_name(session, name)
            return [{"id": s.sid, "name": s.name, "email": s.email,
                     "archived": s.archived_at is not None} for s in course.students]

    # ---- class-wide targets ------------------------------------------------------------------------------------
    def targets(self, name: str, student: str | None = None, machine: str | None = None,
                lab: str | None = None, order: bool = True) -> list[Target]:
        """The provisioned machines selected; ``order=False`` leaves every `Target.wave` 0 and loads no lab (a
        status view needs no start order, and loading a lab validates and renders it: most of a status query)."""
        if student is not None:
            check_student_id(student)
        with self.db.transaction() as session:
            course = course_by_name(session, name)
            found = []
            for course_lab in course.labs:
                if lab and course_lab.lab_id != lab:
                    continue
                waves = ({m: i for i, wave in enumerate(self._lab(course_lab).start_order()) for m in wave}
                         if order else {})
                for s in course.students:
                    if s.archived_at is not None or (student and s.sid != student):
                        continue
                    for a in s.assignments:
                        if a.course_lab_id == course_lab.id and (machine is None or a.machine == machine):
                            found.append(Target(s.sid, course_lab.lab_id, a.machine, a.vm.name, a.vm.memory_mb,
                                                waves.get(a.machine, 0)))
            if not found:
                what = " ".join(f"{k} {v}" for k, v in (("student", student), ("machine", machine), ("lab", lab)) if v)
                raise NotFoundError(f"course {name} has no provisioned machines{' for ' + what if what else ''}; "
                                    "import a roster and run 'labkit course provision' first")
            return found

    # ---- status ------------------------------------------------------------------------------------------------
    def status(self, name: str, student: str | None = None, machine: str | None = None,
               lab: str | None = None) -> list[dict[str, object]]:
        """Per student and machine: state, forwards, uptime, overlay size (reconciled with the processes)."""
        try:
            targets = self.targets(name, student, machine, lab, order=False)
        except NotFoundError:
            return []
        return self._rows(targets)

    def _rows(self, targets: list[Target], read: dict[str, MachineView] | None = None) -> list[dict[str, object]]:
        """`status` rows of ``targets``: the machines among ``read`` (views just read) are not read again, the others
        are reconciled with their processes (only these: not every machine of the installation)."""
        views = dict(read or {})
        missing = [t.name for t in targets if t.name not in views]
        if missing:
            views.update({view.name: view for view in self.machines.status(names=missing)})
        return [{"student": t.student, "lab": t.lab, "machine": t.machine, "name": t.name,
                 "state": views[t.name].state, "forwards": views[t.name].forwards, "uptime": views[t.name].uptime,
                 "overlay_bytes": views[t.name].overlay_bytes, "memory_mb": t.memory_mb} for t in targets]
