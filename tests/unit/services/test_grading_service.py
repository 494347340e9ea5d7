"""Grading runs without booting: stopped machines are graded offline, results are kept as runs, grades are derived."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LABS, make_course

from labkit.config import Settings
from labkit.errors import LabkitError, NotFoundError
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


def test_never_started_machines_are_not_graded_and_kept_as_runs(course: tuple[Courses, Grading]) -> None:
    """A student who never started a machine is "not graded" with the reason: no check FAILs, no 0 points."""
    _courses, grading = course
    events: list[ProgressEvent] = []
    first = grading.grade("c1", progress=events.append)
    assert [g.student for g in first.grades] == ["alice", "bob"] and first.kind == "grade"
    assert events[-1].done == events[-1].total == 2
    results = {r.check_id: r for r in first.grades[0].results}
    assert len(results) == 8 and first.grades[0].max_points == 13
    assert all(r.unchecked and "never started" in r.unchecked and not r.passed for r in results.values())
    assert first.not_checked == 16 and not first.grades[0].complete
    assert "8 of 8 checks could not be checked: machine box was never started" in first.grades[0].why_not_graded

    # Results are kept as runs; self-checks never count.
    grading.grade("c1", student="bob")
    grading.self_check("c1", "alice")
    assert [r["kind"] for r in grading.runs("c1")] == ["self-check", "grade", "grade"]
    assert [r["results"] for r in grading.runs("c1")] == [6, 8, 16]
    assert [r["not_checked"] for r in grading.runs("c1")] == [6, 8, 16]
    book = grading.gradebook("c1")
    assert book.columns == ["student", "name", "email", "archived", "intro-shell", "intro-shell max",
                            "intro-shell status", "total", "max"]
    assert [row[:2] for row in book.rows] == [["alice", "Alice"], ["bob", "Bob"]]
    assert all(row[4] is None and row[5] is None for row in book.rows)  # empty, not 0
    assert all(str(row[6]).startswith("not graded: 8 of 8 checks could not be checked: machine box was never "
                                      "started") for row in book.rows)
    latest = grading.latest("c1", "bob")
    assert latest[0].source == "live" and not latest[0].complete
    hidden_free = grading.latest("c1", "bob", include_hidden=False)[0]
    assert {r.check_id for r in hidden_free.results} == {r.check_id for r in latest[0].results} - latest[0].hidden
    assert grading.pass_rates("c1") == []  # nothing was graded


def test_a_lab_pinning_an_image_version_is_graded(lk_settings: Settings, tmp_path: Path) -> None:
    """The course took the lab naming ``tiny:1``; grading loads it against the same images and gets as far."""
    lab = tmp_path / "intro-shell"
    shutil.copytree(LABS / "intro-shell", lab)
    toml = lab / "lab.toml"
    toml.write_text(toml.read_text().replace('image = "tiny"\n', 'image = "tiny:1"\n', 1))
    courses = make_course(lk_settings, "c1", [lab], [("alice", "Alice", "a@x.org")])
    try:
        report = Grading(lk_settings, courses.db, actor="teacher").grade("c1")
        assert [g.student for g in report.grades] == ["alice"]
        assert "machine box was never started" in report.grades[0].why_not_graded
    finally:
        courses.db.close()


def test_the_policy_chooses_among_complete_grades_only(course: tuple[Courses, Grading]) -> None:
    """`choose`: best (default), latest and submission, over stored runs; an incomplete run never counts."""
    from labkit.services.gradebook import StudentGrade, choose

    def run(i: int, points: float, kind: str = "grade", unchecked: str | None = None) -> StudentGrade:
        import datetime as dt

        from labkit.grading.result import CheckResult
        result = CheckResult("c", points == 2, points, 2, "", "", "", 0.0, unchecked=unchecked)
        return StudentGrade("s", "lab", result.points, 2, [result], dt.datetime(2026, 1, 1, tzinfo=dt.UTC), kind,
                            kind=kind, run_id=i)

    history = [run(1, 2, "submit"), run(2, 1), run(3, 0, unchecked="machine a is stopped")]
    assert choose(history, "best").grade is history[0]
    assert choose(history, "latest").grade is history[1]
    assert choose(history, "submission").grade is history[0]
    assert "the last run could not check everything" in choose(history, "latest").note
    lost = choose([run(4, 0, unchecked="machine a was never started")], "best")
    assert lost.grade is None and lost.note.startswith("not graded: 1 of 1 checks could not be checked: machine a")
    _courses, grading = course
    assert grading.policies("c1") == {"intro-shell": "best"}
    grading.set_policy("c1", "intro-shell", "latest")
    assert grading.policies("c1") == {"intro-shell": "latest"}
    with pytest.raises(LabkitError, match="unknown grade policy 'worst'"):
        grading.set_policy("c1", "intro-shell", "worst")
    with pytest.raises(NotFoundError, match="has no lab 'web'"):
        grading.set_policy("c1", "web", "best")


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


def test_the_cli_exits_3_when_checks_could_not_be_checked_and_keeps_the_old_name(course: tuple[Courses, Grading],
                                                                                lk_settings: Settings) -> None:
    """`labkit grade` exits 3 with one line; `labkit gradebook` is the gradebook and `grades` its hidden alias;
    `course session end` without a terminal and without --yes refuses; `course policy` shows and sets."""
    from click.testing import CliRunner
    from conftest import settings_env

    from labkit.cli import main

    env = {**settings_env(lk_settings), "LABKIT_DEBUG": "0"}

    def run(*args: str) -> tuple[int, str, str]:
        done = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        return done.exit_code, done.stdout, done.stderr

    code, out, err = run("grade", "c1")
    assert code == 3 and "not graded" in out and "FAIL" not in out
    assert [line for line in err.splitlines() if line.startswith("labkit:")] == [
        "labkit: 16 checks could not be checked (2 student labs: alice/intro-shell, bob/intro-shell); their earlier "
        "grades stand"]
    code, book, _ = run("gradebook", "c1", "--json")
    assert code == 0 and json.loads(book)[0]["intro-shell status"].startswith("not graded: 8 of 8 checks")
    assert run("grades", "c1", "--json")[:2] == (0, book)
    _, helped, _ = run("--help")
    assert "gradebook" in helped and " grades " not in helped
    code, out, _ = run("course", "policy", "c1", "intro-shell", "submission")
    assert code == 0 and out == "intro-shell          submission\n"
    assert run("course", "policy", "c1", "--json")[1] == '{\n  "intro-shell": "submission"\n}\n'
    assert run("course", "policy", "c1", "intro-shell", "worst")[0] == 2
    assert run("course", "session", "begin", "c1")[0] == 0
    code, _, err = run("course", "session", "end", "c1")
    assert code == 1 and err.startswith("labkit: error: End the session of c1") and "add --yes" in err
    code, out, _ = run("course", "session", "end", "c1", "--yes")
    assert code == 0 and "0 student labs submitted" in out
