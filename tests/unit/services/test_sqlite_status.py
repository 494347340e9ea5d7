"""The status commands' read-only SQLite path (`labkit.services.sqlite_status`) prints what the ORM path prints, byte
for byte, on one populated database; it never writes the database, leaves the out-of-date records to the machine
service as the ORM path does, and names only tables and columns that the migrations make and the models declare."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from labkit.cli import main
from labkit.cli.app import App
from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.runtime.process import ProcessRecord
from labkit.runtime.rundir import RunDir
from labkit.services import db as db_module
from labkit.services import sqlite_status
from labkit.services.db import Database
from labkit.services.models import Base, Course, CourseLab, Event, GradeResult, GradeRun, Machine, Submission
from labkit.services.sqlite_status import TABLES, StatusReader

LABS = Path(__file__).resolve().parents[3] / "labs"


def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def ok(env: dict[str, str], *args: str) -> str:
    code, out, err = cli(env, *args)
    assert code == 0, err
    return out


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process of the test's own that stands for a machine's processes (the status reads only PIDs and marks)."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield process
    process.kill()
    process.wait()


def _records(settings: Settings) -> list[tuple[object, ...]]:
    db = Database(settings)
    try:
        with db.read() as session:
            return [(m.name, m.state, m.pid, m.supervisor_pid, m.bound_forwards, m.started_at)
                    for m in session.scalars(select(Machine).order_by(Machine.name))]
    finally:
        db.close()


def _set_record(settings: Settings, name: str, **values: object) -> None:
    db = Database(settings)
    try:
        with db.transaction() as session:
            machine = session.scalar(select(Machine).where(Machine.name == name))
            assert machine is not None
            for key, value in values.items():
                setattr(machine, key, value)
    finally:
        db.close()


def _live(settings: Settings, name: str, process: subprocess.Popen[bytes], *, supervisor: bool = True,
          machine: bool | None = True, ready: bool = False, paused: bool = False) -> None:
    """Run-folder files as a supervisor writes them, naming ``process`` (``machine`` None: no machine PID yet, False:
    a machine PID that no longer runs)."""
    run = RunDir(settings.run_dir / name)
    run.path.mkdir(parents=True, exist_ok=True)
    alive = ProcessRecord.of(process.pid)
    gone = ProcessRecord(process.pid, alive.start_time + 1)  # the same PID, another start: not that process
    (alive if supervisor else gone).write(run.supervisor_pid)
    if machine is not None:
        (alive if machine else gone).write(run.machine_pid)
        stamp = dt.datetime.now().timestamp() - 5000  # a stable width of the uptime column (four digits)
        os.utime(run.machine_pid, (stamp, stamp))
    if ready:
        run.ready.touch()
    if paused:
        run.paused.touch()


@pytest.fixture
def populated(cli_env: dict[str, str], lk_settings: Settings, tmp_path: Path,
              sleeper: subprocess.Popen[bytes]) -> dict[str, str]:
    """Two courses (two labs, three students, one archived), a machine of no course with snapshots, and machines
    recorded or found in every state: stopped, running, paused, starting, stopping, error, and recorded as running
    but gone."""
    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    ok(cli_env, "course", "create", "net101", "--lab", str(LABS / "intro-shell"), "--lab", str(LABS / "two-hosts"),
       "--no-owner")
    ok(cli_env, "course", "create", "other", "--lab", str(LABS / "intro-shell"), "--no-owner")
    roster = tmp_path / "roster.csv"
    roster.write_text("id,name,email\nzoe,Zoe,z@example.org\nalice,Alice,a@example.org\nbob,Bob,b@example.org\n")
    ok(cli_env, "course", "roster", "net101", str(roster))
    ok(cli_env, "course", "provision", "net101")
    roster.write_text("id,name,email\nzoe,Zoe,z@example.org\nalice,Alice,a@example.org\n")
    ok(cli_env, "course", "roster", "net101", str(roster))  # bob is archived; his machines stay
    ok(cli_env, "course", "roster", "other", str(roster))
    ok(cli_env, "course", "provision", "other")
    ok(cli_env, "vm", "create", "solo", "--image", "tiny", "--forward", "0:80", "--memory", "96")
    ok(cli_env, "vm", "snapshot", "solo", "first")
    ok(cli_env, "vm", "snapshot", "solo", "second")
    names = [line.split(":")[0] for line in ok(cli_env, "vm", "status").splitlines() if not line.startswith(" ")]
    assert len(names) >= 12, names
    _live(lk_settings, names[0], sleeper, ready=True)                  # running
    _live(lk_settings, names[1], sleeper, ready=True, paused=True)     # paused
    _live(lk_settings, names[2], sleeper, machine=None)                # starting
    _live(lk_settings, names[3], sleeper, machine=False)               # stopping
    _live(lk_settings, names[4], sleeper, supervisor=False)            # error: runs without its supervisor
    _set_record(lk_settings, names[5], state="running", pid=2**22 + 7, supervisor_pid=2**22 + 8,
                started_at=dt.datetime(2026, 12, 1, 9, 30, tzinfo=dt.UTC))  # recorded running; its processes gone
    return {"live": names[0], "gone": names[5]}


COMMANDS = [
    ("vm", "status"), ("vm", "status", "--json"), ("vm", "status", "solo"), ("vm", "status", "solo", "--json"),
    ("vm", "status", "nosuch"),
    ("course", "status", "net101"), ("course", "status", "net101", "--json"), ("course", "status", "other"),
    ("course", "status", "net101", "--student", "alice"), ("course", "status", "net101", "--student", "bob"),
    ("course", "status", "net101", "--lab", "two-hosts", "--machine", "b", "--json"),
    ("course", "status", "net101", "--student", "bad..id"), ("course", "status", "nosuch"),
    ("course", "status", "nosuch", "--json"),
]


def _steady(text: str) -> str:
    """The output without the uptimes' digits (seconds pass between two runs; the column width stays)."""
    return re.sub(r'("uptime": )[0-9.]+|(uptime )\d+( s)|\b\d{4}s\b', lambda m: (m.group(1) or m.group(2) or "")
                  + "N" + (m.group(3) or ""), text)


def test_both_paths_print_the_same(populated: dict[str, str], cli_env: dict[str, str], lk_settings: Settings,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    ok(cli_env, "vm", "status")  # the first status writes the out-of-date records (checked below); compare after
    fast = {args: cli(cli_env, *args) for args in COMMANDS}
    assert StatusReader.open(lk_settings) is not None  # so the commands above took the SQLite path
    monkeypatch.setattr(App, "status_reader", lambda self: None)
    orm = {args: cli(cli_env, *args) for args in COMMANDS}
    for args in COMMANDS:
        assert (fast[args][0], _steady(fast[args][1]), fast[args][2]) == \
            (orm[args][0], _steady(orm[args][1]), orm[args][2]), args
    states = {line.split(":")[1].split()[0] for line in orm["vm", "status"][1].splitlines() if not line[0].isspace()}
    assert states == {"stopped", "running", "paused", "starting", "stopping", "error"}
    assert orm["vm", "status", "nosuch"][0] == 1 and orm["vm", "status", "nosuch"][2].startswith(
        "labkit: error: no machine named 'nosuch'; known machines: ")
    assert orm["course", "status", "nosuch"][1] == "course nosuch has no provisioned machines yet\n"
    assert "bob" not in orm["course", "status", "net101"][1]
    assert "bad..id" in orm["course", "status", "net101", "--student", "bad..id"][2]
    assert "snapshots: first, second" in orm["vm", "status", "solo"][1]


def test_the_sqlite_path_reconciles_as_the_orm_path_does(populated: dict[str, str], cli_env: dict[str, str],
                                                         lk_settings: Settings, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A record out of date (found stopped, found running) is written as the ORM path writes it, by the machine
    service; the reader itself only reads."""
    db_file = lk_settings.home / "labkit.db"
    before = tmp_path / "before.db"
    with sqlite3.connect(db_file) as source, sqlite3.connect(before) as copy:
        source.backup(copy)
    reader = StatusReader.open(lk_settings)
    assert reader is not None
    try:
        views, stale = reader.machines()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.connection.execute("UPDATE machines SET state = 'stopped'")
    finally:
        reader.close()
    assert set(stale) >= {populated["live"], populated["gone"]}
    assert next(v for v in views if v.name == populated["gone"]).state == "stopped"

    ok(cli_env, "course", "status", "net101")
    ok(cli_env, "vm", "status")
    fast = _records(lk_settings)
    with sqlite3.connect(before) as source, sqlite3.connect(db_file) as target:
        source.backup(target)  # the database as it was: the ORM path now reconciles the same records
    monkeypatch.setattr(App, "status_reader", lambda self: None)
    ok(cli_env, "course", "status", "net101")
    ok(cli_env, "vm", "status")
    assert _records(lk_settings) == fast
    gone = next(row for row in fast if row[0] == populated["gone"])
    assert gone[1:] == ("stopped", None, None, [], None)
    db = Database(lk_settings)
    try:
        with db.read() as session:
            assert session.scalar(select(Event.action).where(Event.target == populated["gone"])
                                  .order_by(Event.id.desc())) == "found-stopped"
    finally:
        db.close()


def test_the_orm_path_answers_when_the_reader_cannot(lk_settings: Settings, cli_env: dict[str, str],
                                                    tmp_path: Path) -> None:
    """No database file yet (the ORM path creates it), a schema to migrate, another database: no reader."""
    assert StatusReader.open(lk_settings) is None
    assert ok(cli_env, "vm", "status").startswith("no machines yet")  # made the database through the ORM path
    assert StatusReader.open(lk_settings) is not None
    older = dataclasses.replace(lk_settings, db_url=f"sqlite:///{tmp_path / 'older.db'}")
    with sqlite3.connect(lk_settings.home / "labkit.db") as source, sqlite3.connect(tmp_path / "older.db") as copy:
        source.backup(copy)
        copy.execute("UPDATE alembic_version SET version_num = '0001'")
    assert StatusReader.open(older) is None
    postgres = dataclasses.replace(lk_settings, db_url="postgresql://labkit@127.0.0.1/labkit")
    assert StatusReader.open(postgres) is None


def test_every_table_and_column_the_reader_names_exists(lk_settings: Settings) -> None:
    """Schema drift: a model or migration change that breaks the reader's SQL fails here, not in a user's hands."""
    Database(lk_settings).close()  # the schema as the app makes it: through the Alembic migrations
    assert sqlite_status.HEAD == db_module.HEAD
    with sqlite3.connect(lk_settings.home / "labkit.db") as connection:
        for table, columns in TABLES.items():
            migrated = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
            assert set(columns) <= migrated, (table, set(columns) - migrated)
            if table != "alembic_version":
                assert set(columns) <= set(Base.metadata.tables[table].columns.keys()), table
    statements = sqlite_status._MACHINES + Path(sqlite_status.__file__).read_text()
    named = set(re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", statements))
    assert named <= set(TABLES), named - set(TABLES)


GRADE_COMMANDS = [
    ("gradebook", "net101"), ("gradebook", "net101", "--json"), ("gradebook", "net101", "--detail"),
    ("grades", "net101", "--detail", "--json"), ("gradebook", "other"), ("gradebook", "net101", "--runs"),
    ("gradebook", "net101", "--runs", "--json"), ("gradebook", "nosuch"), ("gradebook", "nosuch", "--runs"),
]


def _store_grades(settings: Settings) -> None:
    """Grading runs as the grading service stores them: live grades and submission grades, complete and not, a
    hidden check, a regrade, a self-check, a submission since deleted; several runs per student and lab."""
    db = Database(settings)
    try:
        with db.transaction() as session:
            course = session.scalar(select(Course).where(Course.name == "net101"))
            assert course is not None
            students = {s.sid: s for s in course.students}
            intro, two = course.labs
            when = dt.datetime(2026, 12, 7, 9, 0, tzinfo=dt.UTC)
            kept = Submission(student_id=students["zoe"].id, course_lab_id=two.id, actor="zoe", disks={},
                              created_at=when + dt.timedelta(minutes=30))
            session.add(kept)
            session.flush()

            def run(kind: str, minutes: int, lab: CourseLab, sid: str, scores: list[tuple[str, float, str | None]],
                    submission: int | None = None) -> None:
                graded = GradeRun(course_id=course.id, kind=kind, actor="teacher",
                                  started_at=when + dt.timedelta(minutes=minutes),
                                  finished_at=when + dt.timedelta(minutes=minutes, seconds=42))
                for check, points, unchecked in scores:
                    graded.results.append(GradeResult(
                        student_id=students[sid].id, course_lab_id=lab.id, submission_id=submission, check_id=check,
                        title=f"the {check} check", hidden=check.startswith("hidden"), passed=points >= 2,
                        points=points, max_points=2.0, feedback=f"feedback on {check}", evidence="seen",
                        transport="offline", duration=0.25, unchecked=unchecked))
                session.add(graded)

            run("grade", 0, intro, "zoe", [("one", 2.0, None), ("hidden-two", 1.5, None)])
            run("grade", 10, intro, "zoe", [("one", 2.0, None), ("hidden-two", 0.0, "machine box is stopped")])
            run("grade", 20, intro, "alice", [("one", 1.0, None), ("hidden-two", 2.0, None)])
            run("grade", 25, intro, "alice", [("one", 2.0, None), ("hidden-two", 1.0, None)])
            run("submit", 30, two, "zoe", [("lan", 2.0, None), ("route", 0.5, None)], submission=kept.id)
            run("submit", 35, two, "alice", [("lan", 2.0, None), ("route", 2.0, None)])  # its submission is gone
            run("submission", 40, two, "zoe", [("lan", 2.0, None), ("route", 2.0, None)], submission=kept.id)
            run("self-check", 45, two, "alice", [("lan", 0.0, None)])
            run("grade", 50, two, "bob", [("lan", 1.0, None), ("route", 0.0, "machine b was never started")])
    finally:
        db.close()


def test_both_paths_print_the_same_gradebook(populated: dict[str, str], cli_env: dict[str, str],
                                             lk_settings: Settings, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Grades of every kind, complete and not, under each policy; a real `labkit grade` of machines it cannot look
    at adds runs of checks not checked."""
    _store_grades(lk_settings)
    cli(cli_env, "grade", "net101")  # exits 3: the machines' checks could not be checked
    ok(cli_env, "course", "policy", "net101", "two-hosts", "latest")
    fast = {args: cli(cli_env, *args) for args in GRADE_COMMANDS}
    csv_fast = tmp_path / "fast.csv"
    ok(cli_env, "gradebook", "net101", "--detail", "--csv", str(csv_fast))
    monkeypatch.setattr(App, "status_reader", lambda self: None)
    orm = {args: cli(cli_env, *args) for args in GRADE_COMMANDS}
    csv_orm = tmp_path / "orm.csv"
    ok(cli_env, "gradebook", "net101", "--detail", "--csv", str(csv_orm))
    for args in GRADE_COMMANDS:
        assert fast[args] == orm[args], args
    assert csv_fast.read_bytes() == csv_orm.read_bytes()
    book = orm["gradebook", "net101", "--detail"][1]
    for shown in ("best: best of 2 grades: live (run 4", "latest: latest grade: regrade from the frozen disks of "
                  "submission 1", "latest: latest grade: submission (since deleted)",
                  "not graded: 1 of 2 checks could not be checked: machine b was never started"):
        assert shown in book, (shown, book)
    assert orm["gradebook", "nosuch"][2] == "labkit: error: no course named 'nosuch'; courses: net101, other\n"
    assert len(orm["gradebook", "net101", "--runs"][1].splitlines()) == 10
