"""The instructor's class grid as plain values: students × lab machines, each cell a machine's recorded state, and
per student and lab the checks passed in their latest check (a grading run or their own self-check) and their time.

Read from the database only, with a few plain-row queries (no ORM objects, no process table), because the grid's
live stream asks again every second for every open grid: `GridReader.read` costs a few milliseconds for 200
students. The recorded states are kept true by every labkit action that changes a machine, and by the machine
service reconciling, now and then, the machines `GridReader.live_machines` names (a guest that died unnoticed).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

from sqlalchemy import Connection, case, func, select

from labkit.errors import NotFoundError
from labkit.services.db import Database
from labkit.services.lab_time import Clock
from labkit.services.machine_states import LIVE
from labkit.services.models import Assignment, Attempt, Course, CourseLab, GradeResult, GradeRun, Machine, Student

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders the numbers inside names by value: s1, s2, s10 (not s1, s10, s2); case does not count."""
    return tuple((1, int(part)) if part.isdigit() else (0, part.casefold())
                 for part in _DIGITS.split(text) if part)


@dataclass(frozen=True)
class LabTime:
    """One student's time on one lab, in seconds at the moment the grid was read (None: not started / no limit)."""

    used: int | None
    remaining: int | None
    extra_minutes: int
    #: the attempt has ended ("deadline", "submitted", "window"): its time no longer runs
    closed: str | None = None


@dataclass(frozen=True)
class LabChecks:
    """The checks passed in the student's latest check of one lab (any kind of run, hidden checks included)."""

    passed: int
    total: int
    kind: str
    #: how many labkit could not look at (a machine stopped or never started): not failed, not passed
    unchecked: int = 0


@dataclass(frozen=True)
class GridStudent:
    id: str
    name: str
    #: lab id -> checks passed (labs never checked are left out)
    checks: dict[str, LabChecks] = field(default_factory=dict)
    #: lab id -> time used; every lab of the course has one (used None: not started)
    time: dict[str, LabTime] = field(default_factory=dict)


@dataclass(frozen=True)
class GridCell:
    student: str
    lab: str
    machine: str
    #: the machine's labkit name (its console's URL)
    name: str
    state: str


@dataclass(frozen=True)
class GridColumn:
    lab: str
    machine: str


@dataclass(frozen=True)
class ClassGrid:
    """One reading of the grid; `version` changes whenever anything shown changes (except the running clocks)."""

    course: str
    labs: list[str]
    columns: list[GridColumn]
    students: list[GridStudent]
    cells: list[GridCell]
    at: dt.datetime

    @property
    def running(self) -> int:
        return sum(1 for c in self.cells if c.state == "running")

    @functools.cached_property
    def _shape(self) -> str:
        return _digest([self.labs, [asdict(c) for c in self.columns], [s.id for s in self.students],
                        sorted(c.name for c in self.cells)])

    def shape(self) -> str:
        """What the page's table is made of (students, columns and which cells exist): a change needs a new page."""
        return self._shape

    def row_facts(self, student: GridStudent) -> dict[str, object]:
        """A student's checks and time, without the running clock (only what changes by an event)."""
        return {"checks": {lab: [c.passed, c.total, c.kind, c.unchecked] for lab, c in student.checks.items()},
                "time": {lab: [t.used is None, t.remaining is None, t.extra_minutes, t.closed]
                         for lab, t in student.time.items()}}

    @functools.cached_property
    def version(self) -> str:
        return _digest([self.shape(), [(c.name, c.state) for c in self.cells],
                        [self.row_facts(s) for s in self.students]])

    def as_dict(self) -> dict[str, object]:
        return {"course": self.course, "labs": self.labs, "columns": [asdict(c) for c in self.columns],
                "students": [asdict(s) for s in self.students], "cells": [asdict(c) for c in self.cells],
                "running": self.running, "machines": len(self.cells), "at": self.at.isoformat(),
                "version": self.version, "shape": self.shape()}


_NOT_STARTED = LabTime(None, None, 0)


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


class GridReader:
    """Reads `ClassGrid`s of a course (the grid page, its JSON and its event stream)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def read(self, course: str, now: dt.datetime | None = None) -> ClassGrid:
        now = now or dt.datetime.now(dt.UTC)
        with self.db.read_rows() as rows:
            course_pk = rows.scalar(select(Course.id).where(Course.name == course))
            if course_pk is None:
                raise NotFoundError(f"no course named {course!r}")
            # as plain objects: a Row's attributes are slow to read, and the clock reads each of them per student
            labs = [SimpleNamespace(**row._mapping) for row in rows.execute(
                select(CourseLab).where(CourseLab.course_id == course_pk).order_by(CourseLab.id))]
            lab_ids = {lab.id: lab.lab_id for lab in labs}
            people = list(rows.execute(select(Student.id, Student.sid, Student.name)
                                       .where(Student.course_id == course_pk, Student.archived_at.is_(None))))
            machines = list(rows.execute(
                select(Assignment.student_id, Assignment.course_lab_id, Assignment.machine, Machine.name,
                       Machine.state)
                .join(Machine, Assignment.machine_id == Machine.id)
                .join(Student, Assignment.student_id == Student.id)
                .where(Student.course_id == course_pk, Student.archived_at.is_(None))))
            attempts = {(a.student_id, a.course_lab_id): SimpleNamespace(**a._mapping) for a in rows.execute(
                select(Attempt).join(CourseLab, Attempt.course_lab_id == CourseLab.id)
                .where(CourseLab.course_id == course_pk))}
            checks = self._latest_checks(rows, course_pk)
        people.sort(key=lambda p: natural_key(p.sid))
        rank = {p.id: i for i, p in enumerate(people)}
        sids = {p.id: p.sid for p in people}
        order = {lab.id: i for i, lab in enumerate(labs)}
        machine_keys = {name: natural_key(name) for name in {m.machine for m in machines}}
        shown = sorted((m for m in machines if m.student_id in rank),
                       key=lambda m: (rank[m.student_id], order[m.course_lab_id], machine_keys[m.machine]))
        cells = [GridCell(sids[m.student_id], lab_ids[m.course_lab_id], m.machine, m.name, m.state) for m in shown]
        columns: list[GridColumn] = []
        for lab in labs:
            names = sorted({m.machine for m in machines if m.course_lab_id == lab.id}, key=machine_keys.__getitem__)
            columns += [GridColumn(lab.lab_id, name) for name in names]
        checked: dict[int, dict[str, LabChecks]] = {}
        for (student_pk, lab_pk), found in checks.items():
            checked.setdefault(student_pk, {})[lab_ids[lab_pk]] = found
        students = []
        for person in people:
            times = {}
            for lab in labs:
                attempt = attempts.get((person.id, lab.id))
                times[lab.lab_id] = self._time(lab, attempt, now)
            students.append(GridStudent(person.sid, person.name, checked.get(person.id, {}), times))
        return ClassGrid(course, [lab.lab_id for lab in labs], columns, students, cells, now)

    @staticmethod
    def _time(lab: object, attempt: object | None, now: dt.datetime) -> LabTime:
        """``Clock.used`` (up to the attempt's end) and what is left, from plain rows with the models' names."""
        if attempt is None and getattr(lab, "closes_at", None) is None:
            return _NOT_STARTED  # the common case, without a clock: no time bound can have begun
        clock = Clock.of(lab, attempt)  # type: ignore[arg-type]
        closed = getattr(attempt, "closed_at", None)
        used = clock.used(closed or now)
        remaining = clock.remaining(now) if clock.limited and closed is None else None
        return LabTime(None if used is None else int(used.total_seconds()),
                       None if remaining is None else int(remaining.total_seconds()),
                       getattr(attempt, "extra_minutes", 0) or 0,
                       (getattr(attempt, "closed_reason", None) or "ended") if closed is not None else None)

    @staticmethod
    def _latest_checks(rows: Connection, course_pk: int) -> dict[tuple[int, int], LabChecks]:
        """(student pk, course lab pk) -> the checks passed in the latest run that checked them."""
        latest = (select(GradeResult.student_id, GradeResult.course_lab_id, func.max(GradeResult.run_id).label("run"))
                  .join(GradeRun, GradeResult.run_id == GradeRun.id).where(GradeRun.course_id == course_pk)
                  .group_by(GradeResult.student_id, GradeResult.course_lab_id).subquery())
        query = (select(GradeResult.student_id, GradeResult.course_lab_id, GradeRun.kind,
                        func.sum(GradeResult.passed), func.count(),
                        func.sum(case((GradeResult.unchecked.is_not(None), 1), else_=0)))
                 .join(GradeRun, GradeResult.run_id == GradeRun.id)
                 .join(latest, (latest.c.student_id == GradeResult.student_id)
                       & (latest.c.course_lab_id == GradeResult.course_lab_id) & (latest.c.run == GradeResult.run_id))
                 .group_by(GradeResult.student_id, GradeResult.course_lab_id, GradeRun.kind))
        return {(student, lab): LabChecks(int(passed or 0), int(total), kind, int(unchecked or 0))
                for student, lab, kind, passed, total, unchecked in rows.execute(query)}

    def live_machines(self, course: str) -> list[str]:
        """The course's machines recorded as live (running, starting, ...): the only ones whose record can be out of
        date without a labkit action (a guest that died)."""
        with self.db.read_rows() as rows:
            return list(rows.scalars(
                select(Machine.name).join(Assignment, Assignment.machine_id == Machine.id)
                .join(CourseLab, Assignment.course_lab_id == CourseLab.id).join(Course)
                .where(Course.name == course, Machine.state.in_([s.value for s in LIVE]))))

