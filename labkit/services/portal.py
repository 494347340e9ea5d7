"""The student portal's view of the database: a student's labs, their machines, and their own instructions.

Only reads. Which machine a user may touch is decided by `Accounts.owned_machine`; this service answers "what does
this student have" (every lab of every course they are an active roster member of, provisioned or not) and renders
the lab's instructions with the student's own parameters, exactly as provisioning and grading derive them
(`labkit.labs.student.for_student` with the course's secret).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Row, Select, and_, bindparam, select

from labkit.config import Settings
from labkit.errors import LabFormatError, LabkitError, NotFoundError
from labkit.labs.guide import Guide, split_guide
from labkit.labs.loader import load_lab
from labkit.labs.model import Lab
from labkit.labs.render import LAB_FILE, render_instructions
from labkit.labs.student import for_student
from labkit.runtime.base import MachineStatus
from labkit.services.accounts import UserView
from labkit.services.audit import current_actor
from labkit.services.db import Database
from labkit.services.machine_states import is_live
from labkit.services.machines import Machines, MachineView, shown_forwards, uptime
from labkit.services.models import Assignment, Course, CourseLab, Image, Machine, Student

SSH_PORT = 22

#: Everything the dashboard shows of a student's labs, in one statement built once (building it costs more than
#: running it): every lab of every course the user is an active student of, with their machine of each lab machine.
#: Plain rows, not ORM objects (three times cheaper): a machine's columns under their own names, with its image's
#: file and label, are what `Machines.observe` needs (`MachineFacts`).
_DASHBOARD = (select(Student.sid, Course.id.label("course_id"), Course.name.label("course"), CourseLab.lab_id,
                     CourseLab.path, CourseLab.reset_policy, Assignment.machine.label("lab_machine"),
                     *Machine.__table__.columns, Image.path.label("image_path"), Image.label.label("image_label"))
              .select_from(Student).join(Course, Student.course_id == Course.id)
              .join(CourseLab, CourseLab.course_id == Course.id)
              .outerjoin(Assignment, and_(Assignment.student_id == Student.id,
                                          Assignment.course_lab_id == CourseLab.id))
              .outerjoin(Machine, Machine.id == Assignment.machine_id)
              .outerjoin(Image, Image.id == Machine.image_id)
              .where(Student.user_id == bindparam("uid"), Student.archived_at.is_(None))
              .order_by(Course.name, CourseLab.id, Assignment.machine))


@dataclass(frozen=True)
class Enrollment:
    """One lab of one course as one student has it."""

    course: str
    course_id: int
    student: str
    lab: str
    title: str
    reset_policy: str


@dataclass(frozen=True)
class PortalMachine:
    """What the student sees of one of their machines."""

    name: str
    #: the machine's name inside the lab (``box``)
    machine: str
    image: str
    state: str
    uptime: float | None
    #: "host:guest" pairs; the host port is 0 until the machine runs (a free port is picked at each start)
    forwards: list[str]
    ssh_port: int | None
    #: root's password on this machine (console logins and SSH); shown to the owning student only
    console_password: str
    #: the kind a snapshot taken now would be ("disk" or "running state"; the machine page says which)
    snapshot_kind: str = "disk"

    @property
    def live(self) -> bool:
        return is_live(self.state)


@dataclass(frozen=True)
class PortalLab:
    enrollment: Enrollment
    #: empty until the instructor provisions the course
    machines: list[PortalMachine]


@dataclass(frozen=True)
class Workspace:
    """What the student's lab workspace shows besides the machines: the guide in its steps and the lab's shape."""

    guide: Guide
    #: step id -> ids of the checks its Check button runs (hidden checks left out; empty: nothing to check there)
    step_checks: dict[str, tuple[str, ...]]
    #: lab machine names in start order (``depends_on`` first)
    machines: tuple[str, ...]
    #: lab machine -> the machines it depends on, directly or not
    needs: dict[str, tuple[str, ...]]
    networks: tuple[str, ...]
    #: exam mode before the results are released: no Check buttons and no feedback
    feedback_hidden: bool


@functools.lru_cache(maxsize=256)
def _load_cached(path: str, stamp: tuple[int, int]) -> Lab:
    return load_lab(Path(path))


def _lab(path: str) -> Lab:
    """The course's lab, loaded once per version of its lab.toml: validating a lab takes tens of milliseconds, too
    long for every page view. Instructions are read fresh from their file at each render all the same."""
    try:
        info = (Path(path) / LAB_FILE).stat()
    except OSError as err:
        raise LabFormatError(f"cannot read the lab: {err.strerror}", str(Path(path) / LAB_FILE)) from err
    return _load_cached(path, (info.st_mtime_ns, info.st_size))


def _title(path: str, fallback: str) -> str:
    try:
        return _lab(path).title
    except LabkitError:  # a lab folder that moved or broke: the page still lists the lab by its id
        return fallback


class Portal:
    """``Portal(settings, db).labs_of(user)``, ``.enrollment(user, course, lab)``, ``.instructions(...)``."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()
        self.machines = Machines(settings, db, self.actor)

    @staticmethod
    def _places(user: UserView, course: str | None = None) -> Select[tuple[Student, Course]]:
        """The user's active roster lines with their courses."""
        query = (select(Student, Course).join(Course, Student.course_id == Course.id)
                 .where(Student.user_id == user.id, Student.archived_at.is_(None)).order_by(Course.name))
        return query.where(Course.name == course) if course is not None else query

    @staticmethod
    def _enrolled(student: Student, course: Course,
                  lab: str | None = None) -> list[tuple[str, Enrollment, CourseLab]]:
        return [(cl.path, Enrollment(course.name, course.id, student.sid, cl.lab_id, cl.lab_id, cl.reset_policy), cl)
                for cl in sorted(course.labs, key=lambda cl: cl.id) if lab is None or cl.lab_id == lab]

    def enrollment(self, user: UserView, course: str, lab: str) -> Enrollment | None:
        """The student's place in ``lab`` of ``course``, or None when it is not theirs (the web app's 404)."""
        if not user.is_student or user.disabled:
            return None
        with self.db.read() as session:
            found = [entry for student, course_row in session.execute(self._places(user, course))
                     for entry in self._enrolled(student, course_row, lab)]
        return _titled(found[0][0], found[0][1]) if found else None

    def labs_of(self, user: UserView) -> list[PortalLab]:
        """Every lab of every course the student is on the roster of, with their machines' real states.

        One reading transaction (and a write only when a machine's record is out of date): the dashboard is the
        page a whole class reloads at the same moment.
        """
        if not user.is_student or user.disabled:
            return []
        places: dict[tuple[str, str], tuple[str, Enrollment, dict[str, Row[Any]]]] = {}
        with self.db.read_rows() as connection:
            for row in connection.execute(_DASHBOARD, {"uid": user.id}):
                enrollment = Enrollment(row.course, row.course_id, row.sid, row.lab_id, row.lab_id, row.reset_policy)
                _, _, machines = places.setdefault((row.course, row.lab_id), (row.path, enrollment, {}))
                if row.name is not None:  # a provisioned lab: this is the student's machine of that lab machine
                    machines[row.lab_machine] = row
        rows = [vm for _, _, machines in places.values() for vm in machines.values()]
        statuses, stale = self.machines.observe(rows)
        by_vm = dict(zip((vm.name for vm in rows), statuses, strict=True))
        self.machines.write_back(stale)
        return [PortalLab(_titled(path, enrollment),
                          [_observed(vm, by_vm[vm.name], machine) for machine, vm in sorted(by_name.items())])
                for path, enrollment, by_name in places.values()]

    def machine(self, name: str, machine: str | None = None) -> PortalMachine:
        """One machine, reconciled with its processes (`Machines.status`)."""
        view = self.machines.status(name)[0]
        with self.db.read() as session:
            row = session.scalar(select(Machine).where(Machine.name == name))
            if row is None:
                raise NotFoundError(f"no machine named {name!r}")
            password, hostname = row.console_password, row.hostname
        return _portal_machine(view, machine or hostname or name, password)

    def snapshots(self, name: str) -> list[dict[str, object]]:
        """The machine's snapshots, oldest first, with their times and sizes (no paths: those are the server's)."""
        return [{"name": s["name"], "created_at": dt.datetime.fromisoformat(str(s["created_at"])),
                 "size": s["size"], "kind": s["kind"]} for s in self.machines.snapshots(name)]

    def instructions(self, course: str, student: str, lab: str) -> str:
        """The lab's instructions (Markdown) with the student's own values filled in."""
        with self.db.read() as session:
            row = session.scalar(select(CourseLab).join(Course).where(Course.name == course, CourseLab.lab_id == lab))
            if row is None:
                raise NotFoundError(f"course {course} has no lab {lab!r}")
            path, secret = row.path, row.course.secret
        loaded = _lab(path)
        return render_instructions(loaded, for_student(loaded, course, student, secret).context)

    def workspace(self, course: str, student: str, lab: str) -> Workspace:
        """The student's guide (rendered with their values, cut into its steps) and what the workspace needs of the
        lab. In exam mode, until the instructor releases the results, ``feedback_hidden`` is true."""
        with self.db.read() as session:
            row = session.scalar(select(CourseLab).join(Course).where(Course.name == course, CourseLab.lab_id == lab))
            if row is None:
                raise NotFoundError(f"course {course} has no lab {lab!r}")
            path, secret = row.path, row.course.secret
            hidden = bool(row.exam) and row.results_released_at is None
        loaded = _lab(path)
        text = render_instructions(loaded, for_student(loaded, course, student, secret).context)
        return _workspace(loaded, text, hidden)


def _workspace(loaded: Lab, text: str, feedback_hidden: bool) -> Workspace:
    order = tuple(name for wave in loaded.start_order() for name in wave)
    return Workspace(split_guide(text, loaded.steps),
                     {s.id: tuple(c.id for c in loaded.step_checks(s.id, include_hidden=False)) for s in loaded.steps},
                     order, {m: tuple(loaded.needs(m)) for m in order}, tuple(loaded.networks), feedback_hidden)


def _titled(path: str, enrollment: Enrollment) -> Enrollment:
    return dataclasses.replace(enrollment, title=_title(path, enrollment.lab))


def _portal_machine(view: MachineView, machine: str, password: str) -> PortalMachine:
    return PortalMachine(name=view.name, machine=machine, image=view.image, state=view.state, uptime=view.uptime,
                         forwards=view.forwards, ssh_port=_ssh_port(view.forwards), console_password=password,
                         snapshot_kind=view.snapshot_kind)


def _observed(row: Row[Any], status: MachineStatus, machine: str) -> PortalMachine:
    forwards = shown_forwards(row, status)
    return PortalMachine(name=row.name, machine=machine, image=row.image_label, state=status.state.value,
                         uptime=uptime(status), forwards=forwards, ssh_port=_ssh_port(forwards),
                         console_password=row.console_password)


def _ssh_port(forwards: list[str]) -> int | None:
    pairs = [tuple(int(part) for part in forward.split(":", 1)) for forward in forwards]
    return next((host for host, guest in pairs if guest == SSH_PORT and host), None)
