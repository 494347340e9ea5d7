"""Submissions: a student's machines of a lab, frozen at a moment and graded at that moment.

A submission is a sparse copy of every overlay of the student's lab (taken like a live snapshot: synced and paused
for the copy), kept under ``<home>/submissions`` apart from the machine's own snapshots, so neither a reset, a
restore nor deleting snapshots can touch it. Only purging the student or the course deletes it.

Just before the copy, every check of the lab runs against the machines as they are (running ones live), and those
results are stored with the submission as its grade: a frozen disk keeps files, but not what only lived in the
running machine (added addresses, routes, started services), so grading it again later may differ.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from labkit.config import Settings
from labkit.errors import NotFoundError
from labkit.grading.result import CheckResult, unchecked_reasons
from labkit.grading.runner import total
from labkit.overlays import Overlay, get_overlay, sparse_copy
from labkit.runtime import DEFAULT_BACKEND, backend_class
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.lookup import course_by_name
from labkit.services.machines import Machines
from labkit.services.models import Course, Machine, Student, Submission
from labkit.services.roster import check_student_id


@dataclass(frozen=True)
class SubmissionView:
    id: int
    course: str
    student: str
    lab: str
    created_at: dt.datetime
    machines: list[str]
    bytes: int
    #: the grade stored with the submission (None: its lab has no checks); ``not_checked`` checks could not be checked
    points: float | None = None
    max_points: float | None = None
    not_checked: int = 0
    graded_note: str = ""


def frozen_backend(disk: Mapping[str, object]) -> str:
    """The backend kind of a frozen disk record (records made before machines named one are the default's)."""
    return str(disk.get("backend") or DEFAULT_BACKEND)


def frozen_overlay(disk: Mapping[str, object]) -> Overlay:
    """The overlay kind of a frozen disk record: the recorded one, else its backend's."""
    return get_overlay(str(disk.get("overlay_kind") or backend_class(frozen_backend(disk)).overlay_kind))


def student_folder(settings: Settings, course_pk: int, student_pk: int) -> Path:
    """Where one student's submissions of one course live (ids, never names, become paths)."""
    return settings.submissions / f"c{course_pk}" / f"s{student_pk}"


class Submissions:
    """``labkit submit``."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()
        self.machines = Machines(settings, db, self.actor)

    def submit(self, course: str, student: str, lab: str | None = None, grade: bool = True,
               skip_untouched: bool = False) -> list[SubmissionView]:
        """Grade the student's machines of every lab (or of ``lab``) as they are and freeze them: one submission
        per lab, its grade stored with it. ``skip_untouched`` leaves out labs whose machines were never started
        since they were made or reset (nothing to keep)."""
        from labkit.services.grading import Grading

        check_student_id(student)
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            student_row = _student(course_row, student)
            labs = [cl for cl in course_row.labs if lab is None or cl.lab_id == lab]
            if lab is not None and not labs:
                raise NotFoundError(f"course {course} has no lab {lab!r}")
            plan = [(cl.id, cl.lab_id, {a.machine: _disk_record(a.vm) for a in student_row.assignments
                                        if a.course_lab_id == cl.id}) for cl in labs]
            folder = student_folder(self.settings, course_row.id, student_row.id)
            student_pk, course_pk = student_row.id, course_row.id
        plan = [entry for entry in plan if entry[2]]
        if skip_untouched:
            plan = [entry for entry in plan if any(self._touched(str(d["vm"])) for d in entry[2].values())]
            if not plan:
                return []
        if not plan:
            raise NotFoundError(f"student {student} has no machines in course {course}"
                                + (f" lab {lab}" if lab else "") + " to submit; provision the course first")
        views = []
        grading = Grading(self.settings, self.db, self.actor)
        for lab_pk, lab_id, machines in plan:
            measured = grading.measure(course, student, lab_id) if grade else None
            stamp = dt.datetime.now(dt.UTC)
            where = folder / f"l{lab_pk}-{stamp:%Y%m%dT%H%M%S%f}"
            try:
                disks = {}
                for machine, disk in sorted(machines.items()):
                    dest = where / frozen_overlay(disk).file_name(machine)
                    size = self.machines.freeze(str(disk["vm"]), dest)
                    sparse_copy(Path(str(disk["seed"])), where / f"{machine}.seed")
                    disks[machine] = {**disk, "overlay": str(dest), "seed": str(where / f"{machine}.seed"),
                                      "bytes": size}
                with self.db.transaction() as session:
                    row = Submission(student_id=student_pk, course_lab_id=lab_pk, actor=self.actor, disks=disks,
                                     created_at=stamp)
                    session.add(row)
                    session.flush()
                    note = ""
                    if measured is not None:
                        job, results = measured
                        grading.store_submission_grade(session, course_pk, row, job, results)
                        points, max_points = total(results)
                        missed = sum(1 for r in results if r.unchecked is not None)
                        note = f", graded {points:g}/{max_points:g}" + (f" ({missed} not checked)" if missed else "")
                    record(session, self.actor, "submit", f"{course}/{student}/{lab_id}",
                           f"{len(disks)} machines frozen in {where.name}{note}")
                    views.append(_view(row, course, student, lab_id, measured[1] if measured else None))
            except BaseException:
                shutil.rmtree(where, ignore_errors=True)
                raise
        return views

    def _touched(self, name: str) -> bool:
        """Whether the machine holds anything of its own (a running one, or a stopped one with a non-empty
        overlay): an empty overlay was never started since it was made or reset."""
        view = self.machines.status(name)[0]
        return view.state != "stopped" or bool(view.overlay_bytes)

    def list(self, course: str, student: str | None = None) -> list[SubmissionView]:
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            query = (select(Submission, Student).join(Student).where(Student.course_id == course_row.id)
                     .order_by(Submission.id))
            if student is not None:
                query = query.where(Student.sid == check_student_id(student))
            labs = {cl.id: cl.lab_id for cl in course_row.labs}
            return [_view(row, course, s.sid, labs[row.course_lab_id]) for row, s in session.execute(query)]



def _student(course: Course, student: str) -> Student:
    found = next((s for s in course.students if s.sid == student and s.archived_at is None), None)
    if found is None:
        raise NotFoundError(f"course {course.name} has no student {student!r}")
    return found


def _disk_record(vm: Machine) -> dict[str, object]:
    """What grading needs to read or boot a frozen copy of ``vm`` later, even after the machine changed or went."""
    return {"vm": vm.name, "backend": vm.backend, "overlay_kind": vm.overlay_kind, "image": vm.image.path,
            "seed": vm.seed_path, "password": vm.console_password,
            "memory_mb": vm.memory_mb, "ports": [guest for _, guest in vm.forwards],
            "networks": [net for net, _ in vm.networks], "host_ports": list(vm.host_ports or []),
            "outbound": bool(vm.outbound)}


def _view(row: Submission, course: str, student: str, lab: str,
          results: Sequence[CheckResult] | None = None) -> SubmissionView:
    size = sum(int(str(d.get("bytes", 0))) for d in row.disks.values())
    if results is None:
        return SubmissionView(row.id, course, student, lab, row.created_at, sorted(row.disks), size)
    points, max_points = total(results)
    reasons = unchecked_reasons(results)
    missed = sum(1 for r in results if r.unchecked is not None)
    note = f"{missed} of {len(results)} checks could not be checked: {'; '.join(reasons)}" if missed else ""
    return SubmissionView(row.id, course, student, lab, row.created_at, sorted(row.disks), size, points, max_points,
                          missed, note)
