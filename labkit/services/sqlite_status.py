"""Read-only status views straight from a SQLite database, without SQLAlchemy: ``labkit vm status``, ``labkit
course status``, ``labkit gradebook`` (and ``--runs``).

Importing SQLAlchemy and declaring the mapped models alone takes longer than the CLI's budget for a status command
(docs/benchmarks.md, "A snappy CLI"), so when the database is a SQLite file these commands read it here, through
Python's `sqlite3`, on a connection opened read-only (``mode=ro``): nothing here can write the database. They build
their views with the machine service's own functions (`machine_truth`), so the output is the ORM path's, byte for
byte (tests/unit/services/test_sqlite_status.py runs both on one database).

Any other database URL (PostgreSQL), a missing file, or a schema not at the newest migration gives `None` from
`StatusReader.open`: the caller then takes the ORM path, which creates or migrates the database as before.

The records of machines whose processes say something else (a machine found stopped after a crash) are out of date;
like `MachineRecords.status`, the reader only reports their names, and the caller has the machine service write them
(`Machines.write_back`, the ORM path's own write). So a status command still reconciles the database with the
processes; it loads SQLAlchemy only on the rare call that finds a record out of date.

Every table and column named in the SQL below is checked against the migrated schema and the ORM models by
tests/unit/services/test_sqlite_status.py (`TABLES`).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from labkit.config import Settings
from labkit.errors import DatabaseError, NotFoundError
from labkit.runtime import get_backend
from labkit.services.grade_choice import (
    DEFAULT_POLICY,
    GRADED_KINDS,
    Gradebook,
    book_of,
    gradebook_table,
    history_of,
)
from labkit.services.machine_truth import MachineView, facts, machine_spec, machine_view, recorded
from labkit.services.roster import check_student_id

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: The newest Alembic revision, found as `labkit.services.db.HEAD` finds it (a test checks they agree).
HEAD = max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))

#: Every table and column the statements below name (the schema-drift test checks each against the models).
TABLES: dict[str, tuple[str, ...]] = {
    "alembic_version": ("version_num",),
    "machines": ("id", "name", "image_id", "backend", "overlay_kind", "overlay_path", "seed_path", "memory_mb", "mac",
                 "forwards", "networks", "host_ports", "outbound", "state", "pid", "supervisor_pid", "bound_forwards",
                 "started_at"),
    "images": ("id", "name", "version", "path"),
    "snapshots": ("machine_id", "name", "created_at", "id"),
    "courses": ("id", "name"),
    "course_labs": ("id", "course_id", "lab_id"),
    "students": ("id", "course_id", "sid", "archived_at"),
    "assignments": ("id", "student_id", "course_lab_id", "machine", "machine_id"),
    "grade_runs": ("id", "course_id", "kind", "actor", "lab_filter", "student_filter", "started_at", "finished_at"),
    "grade_results": ("id", "run_id", "student_id", "course_lab_id", "submission_id", "check_id", "title", "hidden",
                      "passed", "points", "max_points", "feedback", "evidence", "transport", "duration",
                      "skipped_reason", "unchecked"),
    "submissions": ("id", "created_at"),
}

_MACHINES = """
    SELECT m.id, m.name, m.backend, m.overlay_kind, m.overlay_path, m.seed_path, m.memory_mb, m.mac, m.forwards,
           m.networks, m.host_ports, m.outbound, m.state, m.pid, m.supervisor_pid, m.bound_forwards, m.started_at,
           i.path, i.name, i.version
    FROM machines AS m JOIN images AS i ON i.id = m.image_id
"""


@dataclass
class MachineRow:
    """A machine's record as plain values (`machine_truth.MachineFacts`), with its image and snapshots."""

    id: int
    name: str
    backend: str
    overlay_kind: str
    overlay_path: str
    seed_path: str
    memory_mb: int
    mac: str
    forwards: list[list[int]]
    networks: list[list[str]]
    host_ports: list[int]
    outbound: bool
    state: str
    pid: int | None
    supervisor_pid: int | None
    bound_forwards: list[list[int]]
    started_at: dt.datetime | None
    image_path: str
    image_label: str

    @classmethod
    def of(cls, row: tuple[object, ...]) -> MachineRow:
        (pk, name, backend, overlay_kind, overlay_path, seed_path, memory_mb, mac, forwards, networks, host_ports,
         outbound, state, pid, supervisor_pid, bound_forwards, started_at, image_path, image_name, version) = row
        return cls(pk, name, backend, overlay_kind, overlay_path, seed_path, memory_mb, mac,  # type: ignore[arg-type]
                   _json(forwards), _json(networks), _json(host_ports), bool(outbound), state,  # type: ignore[arg-type]
                   pid, supervisor_pid, _json(bound_forwards), _moment(started_at),  # type: ignore[arg-type]
                   image_path, f"{image_name}:{version}")  # type: ignore[arg-type]


@dataclass(frozen=True)
class ResultRow:
    """A stored check result (`grade_choice.ResultFacts`)."""

    id: int
    student_id: int
    course_lab_id: int
    submission_id: int | None
    check_id: str
    title: str
    hidden: bool
    passed: bool
    points: float
    max_points: float
    feedback: str
    evidence: str
    transport: str
    duration: float
    skipped_reason: str | None
    unchecked: str | None


@dataclass(frozen=True)
class RunRow:
    """A grading run (`grade_choice.RunFacts`)."""

    id: int
    kind: str
    started_at: dt.datetime


@dataclass(frozen=True)
class SubmissionRow:
    """A submission as a grade's source names it (`grade_choice.SubmissionFacts`)."""

    id: int
    created_at: dt.datetime


def _json(value: object) -> object:
    """A JSON column's value as SQLAlchemy's JSON type reads it (SQL NULL is None)."""
    return None if value is None else json.loads(str(value))


def _moment(value: object) -> dt.datetime | None:
    """A `UtcDateTime` column's value as the models read it: stored without a zone, meaning UTC."""
    if value is None:
        return None
    moment = dt.datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment


def sqlite_file(db_url: str) -> Path | None:
    """The file of a plain SQLite URL (``sqlite:///PATH``), else None (another database, options, in memory)."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if db_url.startswith(prefix):
            path = db_url.removeprefix(prefix)
            if path and path != ":memory:" and "?" not in path:
                return Path(path)
    return None


class StatusReader:
    """One consistent read of a SQLite database (a single reading transaction), for the status views."""

    def __init__(self, settings: Settings, connection: sqlite3.Connection) -> None:
        self.settings = settings
        self.connection = connection

    @classmethod
    def open(cls, settings: Settings) -> StatusReader | None:
        """A reader of the installation's database, or None when the ORM path has to answer: not a SQLite file, no
        file yet, or a schema to migrate (the ORM path creates and migrates the database as it always did)."""
        path = sqlite_file(settings.db_url)
        if path is None or not path.is_file():
            return None
        try:
            connection = sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=ro", uri=True,
                                         isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return None
        try:
            connection.execute("PRAGMA busy_timeout=10000")
            connection.execute("BEGIN")
            revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error:
            connection.close()
            return None
        if revision is None or revision[0] != HEAD:
            connection.close()
            return None
        return cls(settings, connection)

    def close(self) -> None:
        self.connection.close()

    def _rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        try:
            return self.connection.execute(sql, args).fetchall()
        except sqlite3.Error as err:
            raise DatabaseError(f"the database {self.settings.db_url} could not be used: {err}") from err

    # ---- machines ----------------------------------------------------------------------------------------------
    def machines(self, name: str | None = None, names: list[str] | None = None) -> tuple[list[MachineView], list[str]]:
        """`MachineRecords.status` without the write: the views of one machine, ``names``, or all, and the names of
        those whose record is out of date (for `Machines.write_back`)."""
        if name is not None:
            found = self._rows(_MACHINES + " WHERE m.name = ?", name)
            if not found:
                known = [str(row[0]) for row in self._rows("SELECT name FROM machines ORDER BY name")]
                hint = f"; known machines: {', '.join(known)}" if known else "; there are no machines yet"
                raise NotFoundError(f"no machine named {name!r}{hint}")
        elif names is None:
            found = self._rows(_MACHINES + " ORDER BY m.name")
        else:
            found = self._rows(_MACHINES + f" WHERE m.name IN ({', '.join('?' * len(names))}) ORDER BY m.name",
                               *names) if names else []
        machines = [MachineRow.of(row) for row in found]
        snapshots: dict[int, list[str]] = {m.id: [] for m in machines}
        if machines:
            for machine_id, snapshot in self._rows(
                    "SELECT machine_id, name FROM snapshots WHERE machine_id IN "
                    f"({', '.join('?' * len(machines))}) ORDER BY created_at, id", *[m.id for m in machines]):
                snapshots[int(machine_id)].append(str(snapshot))  # type: ignore[call-overload]
        views, stale = [], []
        for machine in machines:
            status = get_backend(machine.backend).status(machine_spec(self.settings, machine))
            if recorded(machine) != facts(status, machine):
                stale.append(machine.name)
            views.append(machine_view(self.settings, machine, machine.overlay_kind, machine.image_label,
                                      snapshots[machine.id], status))
        return views, stale

    # ---- courses -----------------------------------------------------------------------------------------------
    def course_status(self, course: str, student: str | None = None, machine: str | None = None,
                      lab: str | None = None) -> tuple[list[dict[str, object]], list[str]]:
        """`CourseRecords.status` without the write: the rows of the course's provisioned machines (none when the
        course or the selection has none, as there), and the names of the machines whose record is out of date."""
        if student is not None:
            check_student_id(student)
        found = self._rows("SELECT id FROM courses WHERE name = ?", course)
        if not found:
            return [], []
        course_pk = found[0][0]
        labs = self._rows("SELECT id, lab_id FROM course_labs WHERE course_id = ? ORDER BY id", course_pk)
        students = self._rows("SELECT id, sid, archived_at FROM students WHERE course_id = ? ORDER BY sid", course_pk)
        assignments: dict[object, list[tuple[object, ...]]] = {pk: [] for pk, _, _ in students}
        for row in self._rows(
                "SELECT a.student_id, a.course_lab_id, a.machine, m.name, m.memory_mb FROM assignments AS a "
                "JOIN machines AS m ON m.id = a.machine_id JOIN students AS s ON s.id = a.student_id "
                "WHERE s.course_id = ? ORDER BY a.id", course_pk):
            assignments[row[0]].append(row[1:])
        targets: list[tuple[str, str, str, str, int]] = []
        for lab_pk, lab_id in labs:
            if lab and lab_id != lab:
                continue
            for student_pk, sid, archived_at in students:
                if archived_at is not None or (student and sid != student):
                    continue
                for course_lab_pk, lab_machine, name, memory_mb in assignments[student_pk]:
                    if course_lab_pk == lab_pk and (machine is None or lab_machine == machine):
                        targets.append((str(sid), str(lab_id), str(lab_machine), str(name),
                                        int(memory_mb)))  # type: ignore[call-overload]
        if not targets:
            return [], []
        views, stale = self.machines(names=[name for _, _, _, name, _ in targets])
        by_name = {view.name: view for view in views}
        return [{"student": sid, "lab": lab_id, "machine": lab_machine, "name": name,
                 "state": by_name[name].state, "forwards": by_name[name].forwards, "uptime": by_name[name].uptime,
                 "overlay_bytes": by_name[name].overlay_bytes, "memory_mb": memory_mb}
                for sid, lab_id, lab_machine, name, memory_mb in targets], stale

    # ---- grades ------------------------------------------------------------------------------------------------
    def _course(self, name: str) -> int:
        """The course's key; else the `NotFoundError` of `labkit.services.lookup.course_by_name`."""
        found = self._rows("SELECT id FROM courses WHERE name = ?", name)
        if not found:
            known = [str(row[0]) for row in self._rows("SELECT name FROM courses ORDER BY name")]
            raise NotFoundError(f"no course named {name!r}" + (f"; courses: {', '.join(known)}" if known else ""))
        return int(found[0][0])  # type: ignore[call-overload]

    def gradebook(self, course: str, detail: bool = False) -> Gradebook:
        """`Grades.gradebook`: every student × lab, the grade each lab's policy chooses."""
        course_pk = self._course(course)
        labs = self._rows("SELECT id, lab_id, grade_policy FROM course_labs WHERE course_id = ? ORDER BY id", course_pk)
        students = self._rows("SELECT id, sid, name, email, archived_at FROM students WHERE course_id = ? ORDER BY sid",
                              course_pk)
        pairs = [(ResultRow(pk, student, lab, submission, check, title, bool(hidden), bool(passed), float(points),
                            float(max_points), feedback, evidence, transport, float(duration), skipped, unchecked),
                  RunRow(run, kind, _moment(started_at)))  # type: ignore[arg-type]
                 for (pk, student, lab, submission, check, title, hidden, passed, points, max_points, feedback,
                      evidence, transport, duration, skipped, unchecked, run, kind, started_at) in self._rows(
                     "SELECT r.id, r.student_id, r.course_lab_id, r.submission_id, r.check_id, r.title, r.hidden, "
                     "r.passed, r.points, r.max_points, r.feedback, r.evidence, r.transport, r.duration, "
                     "r.skipped_reason, r.unchecked, g.id, g.kind, g.started_at "
                     "FROM grade_results AS r JOIN grade_runs AS g ON g.id = r.run_id "
                     f"WHERE g.course_id = ? AND g.kind IN ({', '.join('?' * len(GRADED_KINDS))}) "
                     "ORDER BY g.id, r.id", course_pk, *GRADED_KINDS)]

        def submissions_of(ids: set[int]) -> dict[int, SubmissionRow]:
            return {int(pk): SubmissionRow(int(pk), _moment(created_at))  # type: ignore[arg-type, call-overload]
                    for pk, created_at in self._rows(
                        f"SELECT id, created_at FROM submissions WHERE id IN ({', '.join('?' * len(ids))})", *ids)}

        history = history_of(pairs, {pk: sid for pk, sid, *_ in students},  # type: ignore[misc, arg-type]
                             {pk: lab_id for pk, lab_id, _ in labs}, submissions_of)  # type: ignore[misc]
        book = book_of(history, {str(lab_id): str(policy or DEFAULT_POLICY) for _, lab_id, policy in labs})
        return gradebook_table([(str(lab_id), policy) for _, lab_id, policy in labs],  # type: ignore[misc]
                               [(str(sid), str(name), str(email), archived_at is not None)
                                for _, sid, name, email, archived_at in students], book, detail)

    def grade_runs(self, course: str, limit: int = 20) -> list[dict[str, object]]:
        """`Grades.runs`: the latest grading runs of the course, newest first."""
        course_pk = self._course(course)
        runs = []
        for pk, kind, actor, lab, student, started_at, finished_at, results, not_checked in self._rows(
                "SELECT g.id, g.kind, g.actor, g.lab_filter, g.student_filter, g.started_at, g.finished_at, "
                "(SELECT count(*) FROM grade_results AS r WHERE r.run_id = g.id), "
                "(SELECT count(*) FROM grade_results AS r WHERE r.run_id = g.id AND r.unchecked IS NOT NULL) "
                "FROM grade_runs AS g WHERE g.course_id = ? ORDER BY g.id DESC LIMIT ?", course_pk, limit):
            finished = _moment(finished_at)
            runs.append({"id": pk, "kind": kind, "actor": actor, "lab": lab, "student": student,
                         "started_at": _moment(started_at).isoformat(),  # type: ignore[union-attr]
                         "finished_at": finished.isoformat() if finished else None, "results": results,
                         "not_checked": not_checked})
        return runs
