"""Console recordings as the instructor sees them: a student's recordings per machine, with markers where the student
ran a self-check or submitted, one recording's file for the player or an export, and the retention policy on demand.

The supervisor writes the files (`labkit.runtime.recorder`) into ``LABKIT_HOME/recordings/<machine>/``; this module
only reads them, and prunes them by the policy of `Settings` (docs/operations.md, "Console recordings").
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from labkit.config import Settings
from labkit.errors import NotFoundError
from labkit.logtail import tail
from labkit.names import check_name
from labkit.runtime.recorder import TRUNCATED, prune
from labkit.services.db import Database
from labkit.services.grade_choice import SELF_CHECK
from labkit.services.lookup import course_by_name
from labkit.services.models import Assignment, CourseLab, GradeRun, Machine, Student, Submission

#: the names the supervisor gives recordings (`SessionRecorder._open`); anything else is not looked at
RECORDING_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-[a-z]{1,16}-[0-9]{1,10}-[0-9]{1,4}")


@dataclass(frozen=True)
class RecordingInfo:
    """One recording, from its header and its last line."""

    id: str
    machine: str
    source: str
    user: str
    started_at: float
    duration: float
    width: int
    height: int
    size: int
    truncated: bool
    read_only: bool


@dataclass(frozen=True)
class StudentMachine:
    """A student's machine in a course lab, and its recordings (newest first)."""

    lab: str
    machine: str
    name: str
    recordings: list[RecordingInfo]


def read_info(path: Path) -> RecordingInfo | None:
    """What a recording's header and last event say; None for a file that is not a recording."""
    try:
        with path.open("rb") as handle:
            head = json.loads(handle.readline(65536).decode("utf-8", "replace"))
        size = path.stat().st_size
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(head, dict) or head.get("version") != 2:
        return None
    env = head.get("env") if isinstance(head.get("env"), dict) else {}
    last: object = None
    for line in reversed((tail(path, max_bytes=8192) or b"").decode("utf-8", "replace").splitlines()):
        try:
            last = json.loads(line)
        except ValueError:
            continue
        break
    duration = float(last[0]) if isinstance(last, list) and last and isinstance(last[0], (int, float)) else 0.0
    truncated = isinstance(last, list) and last[1:] == ["m", TRUNCATED]
    return RecordingInfo(id=path.stem, machine=str(env.get("LABKIT_MACHINE", path.parent.name)),
                         source=str(env.get("LABKIT_SOURCE", "unknown")), user=str(env.get("LABKIT_USER", "")),
                         started_at=float(head.get("timestamp") or 0), duration=duration,
                         width=int(head.get("width") or 80), height=int(head.get("height") or 24), size=size,
                         truncated=truncated, read_only=env.get("LABKIT_READ_ONLY") == "1")


def _utc(moment: dt.datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


class Recordings:
    """Reading and pruning console recordings (no writes to the database)."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db

    def folder(self, machine: str) -> Path:
        """A machine's recordings folder (its name checked: it becomes a path)."""
        return self.settings.recordings / check_name(machine, "machine name")

    def of_machine(self, machine: str) -> list[RecordingInfo]:
        """A machine's recordings, newest first."""
        try:
            paths = [p for p in self.folder(machine).iterdir()
                     if p.suffix == ".cast" and RECORDING_ID.fullmatch(p.stem)]
        except OSError:
            return []
        found = [info for info in map(read_info, paths) if info is not None]
        return sorted(found, key=lambda r: (r.started_at, r.id), reverse=True)

    def path(self, machine: str, recording: str) -> Path:
        """The file of one recording (``recording`` is checked to be a recording's name, never used as given)."""
        if not RECORDING_ID.fullmatch(recording):
            raise NotFoundError(f"no recording {recording!r} of machine {machine}")
        path = self.folder(machine) / f"{recording}.cast"
        if not path.is_file():
            raise NotFoundError(f"no recording {recording!r} of machine {machine}")
        return path

    def of_student(self, course: str, student: str) -> list[StudentMachine]:
        """Every machine of ``student`` in ``course``, with its recordings."""
        with self.db.read() as session:
            course_row = course_by_name(session, course)
            rows = session.execute(
                select(CourseLab.lab_id, Assignment.machine, Machine.name)
                .join(Assignment, Assignment.course_lab_id == CourseLab.id)
                .join(Student, Student.id == Assignment.student_id)
                .join(Machine, Machine.id == Assignment.machine_id)
                .where(CourseLab.course_id == course_row.id, Student.sid == student)
                .order_by(CourseLab.lab_id, Assignment.machine)).all()
            if not rows and session.scalar(select(Student.id).where(Student.course_id == course_row.id,
                                                                    Student.sid == student)) is None:
                raise NotFoundError(f"no student {student!r} in course {course}")
        return [StudentMachine(lab, machine, name, self.of_machine(name)) for lab, machine, name in rows]

    def markers(self, machine: str, recording: RecordingInfo) -> list[tuple[float, str]]:
        """Where, in seconds from the recording's start, the machine's student ran a self-check of its lab or
        submitted it (from the grading runs and submissions)."""
        with self.db.read() as session:
            found = session.execute(
                select(Student.id, Student.sid, CourseLab.id, CourseLab.lab_id, CourseLab.course_id)
                .join(Assignment, Assignment.student_id == Student.id)
                .join(CourseLab, CourseLab.id == Assignment.course_lab_id)
                .join(Machine, Machine.id == Assignment.machine_id).where(Machine.name == machine)).first()
            if found is None:
                return []
            student_id, sid, course_lab_id, lab, course_id = found
            checks = session.scalars(select(GradeRun.started_at).where(
                GradeRun.course_id == course_id, GradeRun.kind == SELF_CHECK, GradeRun.student_filter == sid,
                (GradeRun.lab_filter == lab) | GradeRun.lab_filter.is_(None))).all()
            submits = session.scalars(select(Submission.created_at).where(
                Submission.student_id == student_id, Submission.course_lab_id == course_lab_id)).all()
        start, end = recording.started_at, recording.started_at + recording.duration + 1
        marks = [(_utc(t), "self-check") for t in checks] + [(_utc(t), "submitted") for t in submits]
        return sorted((round(at - start, 3), label) for at, label in marks if start <= at <= end)

    def cast_with_markers(self, machine: str, recording: str) -> bytes:
        """The recording's file with its `markers` as ``[t, "m", label]`` events in time order, for the player (whose
        idle-time limit then moves them along with the rest; its ``markers`` option would not)."""
        path = self.path(machine, recording)
        info = read_info(path)
        data = path.read_bytes()
        marks = self.markers(machine, info) if info is not None else []
        if not marks:
            return data
        head, _, body = data.partition(b"\n")
        out = [head]
        pending = [json.dumps([at, "m", label]).encode() for at, label in marks]
        times = [at for at, _ in marks]
        for line in body.splitlines():
            try:
                at = float(line[1:line.index(b",")])
            except ValueError:
                at = 0.0
            while times and times[0] <= at:
                out.append(pending.pop(0))
                times.pop(0)
            out.append(line)
        out += pending
        return b"\n".join(out) + b"\n"

    def prune(self) -> list[Path]:
        """Apply the retention policy to every machine's recordings now (the supervisor does it at each start)."""
        removed: list[str] = []
        try:
            folders = [p for p in self.settings.recordings.iterdir() if p.is_dir() and not p.is_symlink()]
        except OSError:
            return []
        for folder in folders:
            removed += prune(str(folder), self.settings.recordings_keep_days, self.settings.recordings_keep_bytes)
        return [Path(p) for p in removed]
