"""Grading a class on real tiny guests: per-student answers, partial credit, history, the gradebook, self-check,
and submissions graded again after the machine changed (three students, one lab, one boot each)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LABS, make_course

from labkit.config import Settings
from labkit.labs.loader import load_lab
from labkit.labs.student import for_student, render_solutions
from labkit.services.courses import Courses
from labkit.services.grading import Grading
from labkit.services.models import Course
from labkit.services.submissions import Submissions

pytestmark = pytest.mark.guest


@pytest.fixture
def services(lk_settings: Settings) -> Iterator[tuple[Courses, Grading, Submissions]]:
    courses = make_course(lk_settings, "sec1", [LABS / "intro-shell"],
                          [("alice", "Alice", "a@example.org"), ("bob", "=Bob", "b@example.org"),
                           ("carol", "Carol", "c@x.org")])
    db = courses.db
    yield courses, Grading(lk_settings, db, actor="teacher"), Submissions(lk_settings, db, actor="teacher")
    for view in courses.machines.status():  # stop by PID whatever a failed test left running
        if view.state != "stopped":
            courses.machines.kill(view.name)
    db.close()


def secret_of(courses: Courses) -> str:
    with courses.db.transaction() as session:
        return session.query(Course).filter_by(name="sec1").one().secret


def solution_for(courses: Courses, student: str) -> str:
    lab = load_lab(LABS / "intro-shell")
    scripts = render_solutions(lab, for_student(lab, "sec1", student, secret_of(courses)).context)
    return dict((name, text) for name, text, _ in scripts)["box.sh"]


def run_in(courses: Courses, student: str, script: str) -> None:
    name = courses.targets("sec1", student=student)[0].name
    with courses.machines.open_guest(name) as guest:
        result = guest.run("sh -s", stdin=script.encode(), timeout=60)
        assert result.ok, result.err


def test_grading_a_class(services: tuple[Courses, Grading, Submissions], tmp_path: Path) -> None:
    courses, grading, submissions = services
    courses.start("sec1")

    # alice runs her own solution; bob runs alice's (right steps, wrong values); carol does part of the shared folder.
    alice_solution = solution_for(courses, "alice")
    run_in(courses, "alice", alice_solution)
    run_in(courses, "bob", alice_solution)
    carol = for_student(load_lab(LABS / "intro-shell"), "sec1", "carol", secret_of(courses))
    run_in(courses, "carol", f"mkdir -p /srv/{carol.params['project']} && chmod 2770 /srv/{carol.params['project']}")

    report = grading.grade("sec1")
    by = {g.student: g for g in report.grades}
    assert set(by) == {"alice", "bob", "carol"} and report.kind == "grade" and not report.missing
    assert (by["alice"].points, by["alice"].max_points) == (13, 13)
    assert all(r.transport == "ssh" for r in by["alice"].results if r.check_id != "shared-folder")

    # Per-student expected values: bob did the work with alice's values, so his own checks fail.
    bob = {r.check_id: r for r in by["bob"].results}
    assert bob["root-intact"].passed and not bob["user-exists"].passed and not bob["secret-content"].passed
    assert bob["home"].skipped  # depends on user-exists
    assert by["bob"].points < 13

    # Partial credit from the script check: carol's folder is owned by root with mode 2770 but not the team's group.
    shared = {r.check_id: r for r in by["carol"].results}["shared-folder"]
    assert (shared.points, shared.max_points, shared.passed) == (2, 3, False)
    assert "its group must be" in shared.feedback

    # Self-check: no hidden checks, stored apart from the gradebook.
    mine = grading.self_check("sec1", "bob")
    assert mine.kind == "self-check"
    ids = {r.check_id for r in mine.grades[0].results}
    assert "user-entry" not in ids and "secret-perms" not in ids and "user-exists" in ids

    # History: a second run; the gradebook shows the latest graded run per student.
    run_in(courses, "carol", f"chgrp {carol.params['team']} /srv/{carol.params['project']} 2>/dev/null || "
                             f"(echo {carol.params['team']}:x:3999: >> /etc/group && "
                             f"chgrp {carol.params['team']} /srv/{carol.params['project']})")
    second = grading.grade("sec1", student="carol")
    assert {r.check_id: r for r in second.grades[0].results}["shared-folder"].points == 3
    runs = grading.runs("sec1")
    assert [r["kind"] for r in runs] == ["grade", "self-check", "grade"]
    book = grading.gradebook("sec1", detail=True)
    rows = {row[0]: dict(zip(book.columns, row, strict=True)) for row in book.rows}
    assert rows["alice"]["intro-shell"] == 13 and rows["alice"]["total"] == 13
    assert rows["carol"]["intro-shell:shared-folder"] == 3
    assert rows["bob"]["intro-shell"] == by["bob"].points  # bob's self-check does not count

    # The CSV opens cleanly: BOM, CRLF, a name that looks like a formula is quoted as text.
    from labkit.grading.report import write_csv

    out = tmp_path / "grades.csv"
    write_csv(out, book.columns, book.rows)
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    parsed = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert parsed[0][:4] == ["student", "name", "email", "archived"]
    assert {r[0]: r[1] for r in parsed[1:]}["bob"] == "'=Bob"

    # Submit, then break the machine: the submission is graded as it was submitted (booted from a frozen copy).
    [submitted] = submissions.submit("sec1", "alice")
    run_in(courses, "alice", "rm -rf /home/* && sed -i 's/^root:x:0:/root:x:9:/' /etc/passwd")
    live = {r.check_id: r for r in grading.grade("sec1", student="alice").grades[0].results}
    assert not live["root-intact"].passed and not live["secret-content"].passed and not live["home"].passed
    frozen = grading.grade("sec1", student="alice", submissions=True)
    assert frozen.kind == "submission" and frozen.grades[0].points == 13
    assert frozen.grades[0].source.startswith(f"regrade from the frozen disks of submission {submitted.id} of")
    assert submitted.points == 13 and submitted.not_checked == 0  # graded live when it was made
    assert [s.id for s in submissions.list("sec1", "alice")] == [submitted.id]
    assert not any((courses.settings.home / "scratch").iterdir())  # the throwaway copies are gone
    frozen_files = sorted(p.name for p in courses.settings.submissions.rglob("*") if p.is_file())
    assert frozen_files == ["box.cow", "box.seed"]

    # Stopped machines are graded offline: file checks answer, command checks say the machine must run.
    courses.stop("sec1", student="bob")
    offline = {r.check_id: r for r in grading.grade("sec1", student="bob").grades[0].results}
    assert offline["secret-content"].transport == "offline" and not offline["secret-content"].passed
    assert "must run" in offline["root-intact"].feedback and offline["root-intact"].unchecked
