"""Grading runs without booting: stopped machines are graded offline, results are kept as runs, grades are derived."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import LABS, make_course

from labkit.config import Settings
from labkit.errors import NotFoundError
from labkit.progress import ProgressEvent
from labkit.services.courses import Courses
from labkit.services.grading import Grading
from labkit.services.submissions import Submissions


@pytest.fixture
def course(lk_settings: Settings) -> Iterator[tuple[Courses, Grading]]:
    courses = make_course(lk_settings, "c1", [LABS / "intro-shell"],
                          [("alice", "Alice", "a@x.org"), ("bob", "Bob", "b@x.org")])
    yield courses, Grading(lk_settings, courses.db, actor="teacher")
    courses.db.close()


def test_stopped_machines_are_graded_offline_and_kept_as_runs(course: tuple[Courses, Grading]) -> None:
    _courses, grading = course
    events: list[ProgressEvent] = []
    first = grading.grade("c1", progress=events.append)
    assert [g.student for g in first.grades] == ["alice", "bob"] and first.kind == "grade"
    assert events[-1].done == events[-1].total == 2
    results = {r.check_id: r for r in first.grades[0].results}
    assert len(results) == 8 and first.grades[0].max_points == 13
    assert results["secret-content"].transport == "offline" and not results["secret-content"].passed
    assert "must run" in results["root-intact"].feedback  # a command needs a running machine: says so
    assert results["home"].skipped

    # Grades are derived: a later run for bob replaces his row only; self-checks never count.
    second = grading.grade("c1", student="bob")
    grading.self_check("c1", "alice")
    assert [r["kind"] for r in grading.runs("c1")] == ["self-check", "grade", "grade"]
    assert [r["results"] for r in grading.runs("c1")] == [6, 8, 16]
    book = grading.gradebook("c1")
    assert book.columns == ["student", "name", "email", "archived", "intro-shell", "intro-shell max", "total", "max"]
    assert [row[:2] for row in book.rows] == [["alice", "Alice"], ["bob", "Bob"]]
    assert all(row[4] == 0 and row[5] == 13 for row in book.rows)
    latest = grading.latest("c1", "bob")
    assert latest[0].graded_at >= second.started_at and latest[0].source == "live"
    hidden_free = grading.latest("c1", "bob", include_hidden=False)[0]
    assert {r.check_id for r in hidden_free.results} == {r.check_id for r in latest[0].results} - latest[0].hidden
    rates = {r["check"]: r for r in grading.pass_rates("c1")}
    assert rates["secret-content"]["graded"] == 2 and rates["secret-content"]["rate"] == 0


def test_bad_requests_name_what_is_wrong(course: tuple[Courses, Grading]) -> None:
    _courses, grading = course
    with pytest.raises(NotFoundError, match="no course named 'nope'"):
        grading.grade("nope")
    with pytest.raises(NotFoundError, match="has no lab 'web'"):
        grading.grade("c1", lab="web")
    with pytest.raises(NotFoundError, match="has no student 'carol'"):
        grading.grade("c1", student="carol")
    with pytest.raises(NotFoundError, match=r"nothing to grade for alice.*no submission"):
        grading.grade("c1", student="alice", submissions=True)
    report = grading.grade("c1", submissions=True)
    assert report.grades == [] and sorted(report.missing) == ["alice/intro-shell: no submission",
                                                              "bob/intro-shell: no submission"]


def test_a_stopped_submission_is_frozen_and_graded_offline_or_booted(course: tuple[Courses, Grading],
                                                                     lk_settings: Settings) -> None:
    courses, grading = course
    submissions = Submissions(lk_settings, grading.db, actor="teacher")
    [view] = submissions.submit("c1", "alice")
    assert view.lab == "intro-shell" and view.machines == ["box"]
    with pytest.raises(NotFoundError, match="has no lab 'web'"):
        submissions.submit("c1", "alice", lab="web")
    assert [s.id for s in submissions.list("c1")] == [view.id]
    folder = lk_settings.submissions / "c1"
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == ["box.cow", "box.seed"]
    courses.remove("c1", purge=True)  # purging the course deletes its submissions too
    assert not folder.exists()
