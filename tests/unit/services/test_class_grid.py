"""The class grid's reading: students in natural order (s1, s2, s10), machine cells with their recorded states, and
per student and lab the checks passed in their latest check and the time used (`Clock.used`); its version changes
with what it shows."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_course
from sqlalchemy import select

from labkit.config import Settings
from labkit.services.class_grid import GridReader, LabChecks, LabTime, natural_key
from labkit.services.courses import Courses
from labkit.services.models import Attempt, CourseLab, GradeResult, GradeRun, Machine, Student

LABS = Path(__file__).resolve().parents[3] / "labs"
NOW = dt.datetime(2026, 12, 8, 10, 0, tzinfo=dt.UTC)


def test_natural_order() -> None:
    names = ["s10", "s2", "S3", "s1", "s1a", "alice", "s02b", "s100", "x-9", "x-10"]
    random.Random(4).shuffle(names)
    assert sorted(names, key=natural_key) == ["alice", "s1", "s1a", "s2", "s02b", "S3", "s10", "s100", "x-9",
                                              "x-10"]


@pytest.fixture
def courses(lk_settings: Settings) -> Iterator[Courses]:
    found = make_course(lk_settings, "c1", [LABS / "intro-shell"],
                        [("s10", "Ten", ""), ("s2", "Two", ""), ("s1", "One", "")])
    yield found
    found.db.close()


def test_grid_rows_cells_checks_and_time(courses: Courses) -> None:
    reader = GridReader(courses.db)
    first = reader.read("c1", NOW)
    assert [s.id for s in first.students] == ["s1", "s2", "s10"]
    assert [(c.student, c.lab, c.machine, c.state) for c in first.cells] == [
        ("s1", "intro-shell", "box", "stopped"), ("s2", "intro-shell", "box", "stopped"),
        ("s10", "intro-shell", "box", "stopped")]
    assert first.labs == ["intro-shell"] and [c.machine for c in first.columns] == ["box"]
    assert all(s.checks == {} and s.time == {"intro-shell": LabTime(None, None, 0)} for s in first.students)
    assert reader.read("c1", NOW + dt.timedelta(hours=1)).version == first.version  # a clock alone is no change

    with courses.db.transaction() as session:
        s2 = session.scalar(select(Student).where(Student.sid == "s2"))
        lab = session.scalars(select(CourseLab)).one()
        lab.allowance_minutes = 60
        session.add(Attempt(student_id=s2.id, course_lab_id=lab.id, began_at=NOW - dt.timedelta(minutes=10),
                            extra_minutes=5))
        # an older self-check, then a grading run: the latest counts, unchecked ones apart
        for kind, outcomes in (("self-check", [True, True, True]), ("grade", [True, False, None])):
            run = GradeRun(course_id=lab.course_id, kind=kind, actor="t")
            session.add(run)
            session.flush()
            for i, passed in enumerate(outcomes):
                session.add(GradeResult(run_id=run.id, student_id=s2.id, course_lab_id=lab.id, check_id=f"k{i}",
                                        passed=bool(passed), unchecked=None if passed is not None else "stopped"))
        session.scalar(select(Machine).where(Machine.name == first.cells[2].name)).state = "running"
    second = reader.read("c1", NOW)
    s2_row = second.students[1]
    assert s2_row.checks == {"intro-shell": LabChecks(1, 3, "grade", 1)}
    # 10 minutes used; 60 + 5 allowed from the first start
    assert s2_row.time == {"intro-shell": LabTime(600, 55 * 60, 5)}
    assert second.students[0].time == {"intro-shell": LabTime(None, None, 0)}  # not started: no clock yet
    assert [c.state for c in second.cells] == ["stopped", "stopped", "running"] and second.running == 1
    assert second.version != first.version and second.shape() == first.shape()
    assert reader.live_machines("c1") == [first.cells[2].name]
