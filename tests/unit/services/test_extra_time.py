"""Extra time for one student: ``labkit course extend`` and the service behind it add minutes to the student's
`Attempt` (made, not begun, when missing), push back their `Clock.deadline()`, and write one audit event; bad input
gets one sentence and changes nothing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_course
from sqlalchemy import select

from labkit.cli import main
from labkit.config import Settings
from labkit.errors import BadNameError, NotFoundError
from labkit.services.audit_view import AuditView
from labkit.services.db import Database
from labkit.services.extra_time import MAX_GRANT_MINUTES, ExtraTime, check_minutes
from labkit.services.lab_time import Clock
from labkit.services.models import Attempt, CourseLab, Event

LABS = Path(__file__).resolve().parents[3] / "labs"
CLOSES = dt.datetime(2026, 12, 8, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def course(lk_settings: Settings, tmp_path: Path) -> Database:
    """Course c1 (intro-shell, closing at noon) with s1 and s2 on its roster, s3 archived; not provisioned."""
    courses = make_course(lk_settings, "c1", [LABS / "intro-shell"],
                          [("s1", "One", ""), ("s2", "Two", ""), ("s3", "Three", "")], provision=False)
    db = courses.db
    roster = tmp_path / "roster.csv"
    roster.write_text("id,name,email\ns1,One,\ns2,Two,\n")
    courses.import_roster("c1", roster)
    with db.transaction() as session:
        session.scalars(select(CourseLab)).one().closes_at = CLOSES
    yield db
    db.close()


def attempts(db: Database) -> list[tuple[str, dt.datetime | None, int, dt.datetime | None]]:
    """(student, began_at, extra minutes, the clock's deadline) of every attempt."""
    with db.read() as session:
        return [(a.student.sid, a.began_at, a.extra_minutes, Clock.of(a.course_lab, a).deadline())
                for a in session.scalars(select(Attempt).order_by(Attempt.id))]


def events(db: Database) -> list[tuple[str, str, str, str]]:
    with db.read() as session:
        return [(e.actor, e.action, e.target, e.detail)
                for e in session.scalars(select(Event).where(Event.action == "time-extend").order_by(Event.id))]


def test_extend_from_the_cli_is_recorded_and_moves_the_deadline(course: Database, cli_env: dict[str, str]) -> None:
    assert attempts(course) == []
    result = CliRunner().invoke(main, ["course", "extend", "c1", "s2", "intro-shell", "15"],
                                env={**cli_env, "LABKIT_ACTOR": "teacher"})
    assert result.exit_code == 0, result.output
    assert result.output.startswith("s2 has 15 more minutes on intro-shell (15 extra in all); their time now ends "
                                    "2026-12-08 12:15 UTC")
    # not started yet: the attempt is made without a start, and the window's close moves for s2 alone
    assert attempts(course) == [("s2", None, 15, CLOSES + dt.timedelta(minutes=15))]
    granted = ExtraTime(course, actor="lead").extend("c1", "s2", "intro-shell", 10)
    assert (granted.extra_minutes, granted.deadline) == (25, CLOSES + dt.timedelta(minutes=25))
    assert attempts(course) == [("s2", None, 25, CLOSES + dt.timedelta(minutes=25))]
    assert events(course) == [
        ("teacher", "time-extend", "c1", "student s2, lab intro-shell: +15 min (extra time now 15 min)"),
        ("lead", "time-extend", "c1", "student s2, lab intro-shell: +10 min (extra time now 25 min)")]
    # the course's audit page shows them
    assert [e.action for e in AuditView(course).course_events("c1")][:2] == ["time-extend", "time-extend"]


@pytest.mark.parametrize(("args", "message"), [
    (["s1", "intro-shell", "0"], "a whole number of minutes from 1 to 1440, not '0'"),
    (["s1", "intro-shell", "-5"], "a whole number of minutes from 1 to 1440, not '-5'"),
    (["s1", "intro-shell", "1.5"], "not '1.5'"),
    (["s1", "intro-shell", "lots"], "not 'lots'"),
    (["s1", "intro-shell", str(MAX_GRANT_MINUTES + 1)], "not '1441'"),
    (["nobody", "intro-shell", "5"], "student 'nobody' is not on its roster in course c1"),
    (["s3", "intro-shell", "5"], "student 's3' is archived in course c1"),
    (["s1", "two-hosts", "5"], "course c1 has no lab 'two-hosts' (labs: intro-shell)"),
    (["../x", "intro-shell", "5"], "student id '../x' may only hold"),
])
def test_bad_input_is_one_line_and_changes_nothing(course: Database, cli_env: dict[str, str], args: list[str],
                                                   message: str) -> None:
    result = CliRunner().invoke(main, ["course", "extend", "c1", *args], env=cli_env)
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert attempts(course) == [] and events(course) == []


def test_minutes_are_checked_before_anything_is_read() -> None:
    assert check_minutes(" 30 ") == 30 and check_minutes(MAX_GRANT_MINUTES) == MAX_GRANT_MINUTES
    for bad in (True, 0, "", "1e3", "٣"):
        with pytest.raises(BadNameError):
            check_minutes(bad)


def test_an_unknown_course_is_not_found(course: Database) -> None:
    with pytest.raises(NotFoundError, match="no course named 'c9'"):
        ExtraTime(course).extend("c9", "s1", "intro-shell", 5)


def test_extra_time_after_the_deadline_gives_the_time_back_but_a_submit_stays_final(course: Database) -> None:
    """The sweeper closed s1's attempt at the window's close and s2 submitted; extra time reopens s1 only while the
    new deadline is ahead of now."""
    with course.transaction() as session:
        lab = session.scalars(select(CourseLab)).one()
        students = {s.sid: s for s in lab.course.students}
        for sid, reason in (("s1", "window"), ("s2", "submitted")):
            session.add(Attempt(student_id=students[sid].id, course_lab_id=lab.id, began_at=CLOSES, closed_at=CLOSES,
                                closed_reason=reason, warned_at=CLOSES))
    late = CLOSES + dt.timedelta(minutes=30)
    ExtraTime(course).extend("c1", "s1", "intro-shell", 10, now=late)  # ends at 12:10, before now: still over
    ExtraTime(course).extend("c1", "s1", "intro-shell", 30, now=late)  # 12:40, ahead: open again
    ExtraTime(course).extend("c1", "s2", "intro-shell", 60, now=late)
    with course.read() as session:
        state = {a.student.sid: (a.closed_reason, a.closed_at, a.warned_at) for a in session.scalars(select(Attempt))}
    assert state == {"s1": (None, None, None), "s2": ("submitted", CLOSES, CLOSES)}
    assert [detail.endswith("it runs again") for *_, detail in events(course)] == [False, True, False]
