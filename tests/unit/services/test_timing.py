"""A course lab's time on real SQLite, without booting: settings and their refusals (service and CLI), the start rules
(window, deadline, closed attempt), the sweeper's warning and close with an injected ``now``, exam mode's held-back
results, and admission counting paused machines apart."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_course
from sqlalchemy import select

from labkit.cli import main
from labkit.config import Settings
from labkit.errors import AdmissionError, BadNameError, ConflictError
from labkit.services.course_admission import Limits, Target, admit
from labkit.services.courses import Courses
from labkit.services.grading import Grading
from labkit.services.models import Attempt, Event, Machine, Student, User
from labkit.services.sweeper import Sweeper
from labkit.services.timing import Timing, parse_minutes, parse_moment

LABS = Path(__file__).resolve().parents[3] / "labs"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)  # set again as each test begins: see `_now`


@pytest.fixture(autouse=True)
def _now() -> None:
    """``NOW`` is the real time at the start of each test, not of the module's import: starts read the real clock,
    and a suite may reach this test many minutes after it collected it."""
    global NOW
    NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
MIN = dt.timedelta(minutes=1)


@pytest.fixture
def courses(lk_settings: Settings) -> Iterator[Courses]:
    courses = make_course(lk_settings, "c1", [LABS / "intro-shell"],
                          [("alice", "Alice", "a@example.org"), ("bob", "Bob", "b@example.org")])
    yield courses
    courses.db.close()


def timing(courses: Courses, actor: str = "teacher") -> Timing:
    return Timing(courses.settings, courses.db, actor)


def attempt(courses: Courses, sid: str) -> Attempt | None:
    with courses.db.transaction() as session:
        student = session.scalar(select(Student).where(Student.sid == sid))
        assert student is not None
        found = session.scalar(select(Attempt).where(Attempt.student_id == student.id))
        if found is not None:
            session.expunge(found)
        return found


def test_settings_are_checked_and_recorded(courses: Courses) -> None:
    t = timing(courses)
    row = t.set_time("c1", "intro-shell", opens=NOW, closes=NOW + 60 * MIN, allowance=45, idle=10)
    assert (row["allowance_minutes"], row["idle_minutes"]) == (45, 10)
    with pytest.raises(BadNameError, match=r"would close .* before it opens"):
        t.set_time("c1", "intro-shell", closes=NOW - MIN)
    with pytest.raises(BadNameError, match="cannot be negative"):
        t.set_time("c1", "intro-shell", allowance=-5)
    assert t.show("c1")[0]["closes_at"] == (NOW + 60 * MIN).isoformat()  # nothing half-written
    assert t.set_time("c1", "intro-shell", idle=5, clear=True) == {
        "lab": "intro-shell", "opens_at": None, "closes_at": None, "allowance_minutes": None, "idle_minutes": 5,
        "exam": False, "results_released_at": None}
    assert [parse_minutes(text, "x") for text in ("90", "90m", "1h30m", "2h")] == [90, 90, 90, 120]
    for bad in ("-5m", "soon", "1h30x", ""):
        with pytest.raises(BadNameError):
            parse_minutes(bad, "--allowance")
    assert parse_moment("2026-12-08T09:00+01:00", "--opens") == dt.datetime(2026, 12, 8, 8, 0, tzinfo=dt.UTC)
    with courses.db.transaction() as session:
        assert len(session.scalars(select(Event).where(Event.action == "lab-time")).all()) == 2


def test_the_cli_says_one_clear_line(cli_env: dict[str, str], courses: Courses) -> None:
    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["course", *args], env=cli_env)
        return result.exit_code, result.output.strip()

    assert run("time", "c1", "intro-shell", "--opens", "2026-12-08T10:00Z", "--closes", "2026-12-08T09:00+00:00") == (
        1, "labkit: error: the window of intro-shell would close (2026-12-08T09:00:00+00:00) before it opens "
           "(2026-12-08T10:00:00+00:00)")
    code, out = run("time", "c1", "intro-shell", "--allowance", "-10m")
    assert code == 1 and out == "labkit: error: --allowance cannot be negative: '-10m'"
    code, out = run("time", "c1", "intro-shell", "--closes", "tomorrow")
    assert code == 1 and out.startswith("labkit: error: --closes 'tomorrow' is not a date and time") and "\n" not in out
    code, out = run("time", "c1", "intro-shell", "--allowance", "1h30m", "--idle", "15m")
    assert code == 0 and "allowance 90 min, idle pause 15 min, exam off" in out, out
    assert run("exam", "c1", "intro-shell", "on")[1].endswith("exam on, results held back")
    assert "results released 20" in run("release", "c1", "intro-shell")[1]
    code, out = run("exam-status", "c1", "intro-shell")
    assert code == 0 and [line.split()[:2] for line in out.splitlines()[1:]] == [["alice", "no"], ["bob", "no"]]


def test_starts_are_refused_outside_the_student_s_time(courses: Courses) -> None:
    t = timing(courses)
    t.set_time("c1", "intro-shell", opens=NOW + 10 * MIN)
    with pytest.raises(ConflictError, match=r"lab intro-shell opens at .*: its machines start from then"):
        courses.start("c1", student="alice")
    rows = courses.start("c1")  # a class-wide start leaves out who may not start, without failing
    assert [row["state"] for row in rows] == ["stopped", "stopped"] and attempt(courses, "alice") is None
    t.set_time("c1", "intro-shell", opens=NOW - 60 * MIN, allowance=30)
    with courses.db.transaction() as session:  # alice's clock began 40 minutes ago
        t.begin(session, "c1", [("alice", "intro-shell")], NOW - 40 * MIN)
        t.begin(session, "c1", [("alice", "intro-shell")], NOW)  # only the first start sets it
    began = attempt(courses, "alice")
    assert began is not None and began.began_at == NOW - 40 * MIN
    with pytest.raises(ConflictError, match="your time on lab intro-shell ended at"):
        courses.start("c1", student="alice")
    with courses.db.transaction() as session:
        assert t.admit(session, "c1", [("alice", "intro-shell"), ("bob", "intro-shell")], NOW).keys() == {
            ("alice", "intro-shell")}
    assert t.countdown("c1", "alice", "intro-shell", NOW).state == "over"
    waiting = t.countdown("c1", "bob", "intro-shell", NOW)
    assert (waiting.state, waiting.deadline) == ("waiting", None)


def test_the_sweeper_warns_then_closes_and_the_student_can_change_nothing(courses: Courses) -> None:
    t = timing(courses)
    t.set_time("c1", "intro-shell", allowance=30)
    with courses.db.transaction() as session:
        t.begin(session, "c1", [("alice", "intro-shell"), ("bob", "intro-shell")], NOW)
        alice = session.scalar(select(Student).where(Student.sid == "alice"))
        assert alice is not None
        user = User(username="alice-web", role="student")
        session.add(user)
        session.flush()
        alice.user_id = user.id
        bob_attempt = session.scalar(select(Attempt).join(Student).where(Student.sid == "bob"))
        assert bob_attempt is not None
        bob_attempt.extra_minutes = 20  # the other helper's extension: his deadline moves
    sweeper = Sweeper(courses.settings, courses.db)
    assert sweeper.sweep(NOW + 10 * MIN).to_json() == {"warned": [], "closed": [], "submitted": [], "paused": [],
                                                       "failed": []}
    assert t.countdown("c1", "alice", "intro-shell", NOW + 10 * MIN).remaining_seconds == 20 * 60
    assert sweeper.sweep(NOW + 26 * MIN).warned == ["c1/alice/intro-shell"]
    assert sweeper.sweep(NOW + 27 * MIN).warned == []  # once
    assert t.countdown("c1", "alice", "intro-shell", NOW + 27 * MIN).state == "warning"
    report = sweeper.sweep(NOW + 30 * MIN)
    assert report.closed == ["c1/alice/intro-shell"] and report.failed == []
    closed = attempt(courses, "alice")
    assert closed is not None and closed.closed_reason == "deadline" and closed.closed_at == NOW + 30 * MIN
    assert attempt(courses, "bob").closed_at is None  # type: ignore[union-attr]
    assert sweeper.sweep(NOW + 31 * MIN).closed == []
    machine = courses.targets("c1", student="alice")[0].name
    mine = courses.machines.__class__(courses.settings, courses.db, "alice-web")
    for action in (lambda: mine.reset(machine), lambda: mine.snapshot(machine, "s1"), lambda: mine.start(machine)):
        with pytest.raises(ConflictError, match=r"your time on lab intro-shell has ended .your time ran out"):
            action()
    courses.machines.snapshot(machine, "kept-by-teacher")  # the instructor still may
    with pytest.raises(ConflictError, match="has ended"):
        courses.start("c1", student="alice")
    assert t.countdown("c1", "alice", "intro-shell").state == "closed"
    with courses.db.transaction() as session:  # as while the sweeper still freezes or stops it
        session.scalars(select(Machine).where(Machine.name == machine)).one().state = "stopping"
    assert t.countdown("c1", "alice", "intro-shell").state == "over"
    with courses.db.transaction() as session:
        assert [e.target for e in session.scalars(select(Event).where(Event.action == "lab-close"))] == [
            "c1/alice/intro-shell"]


def test_exam_results_are_held_back_until_released(courses: Courses) -> None:
    t = timing(courses)
    t.set_exam("c1", "intro-shell", True)
    grading = Grading(courses.settings, courses.db, "alice-web")
    with pytest.raises(ConflictError, match="intro-shell is an exam: there is no self-check until"):
        grading.self_check("c1", "alice", "intro-shell")
    grading_teacher = Grading(courses.settings, courses.db, "teacher")
    grading_teacher.grade("c1")  # the machines are stopped: graded offline, results stored
    assert grading_teacher.latest("c1", "alice") != []
    assert grading_teacher.latest("c1", "alice", include_hidden=False) == []  # the student's view
    assert t.results_hidden("c1", "intro-shell")
    t.release("c1", "intro-shell")
    assert not t.results_hidden("c1", "intro-shell")
    assert grading_teacher.latest("c1", "alice", include_hidden=False) != []
    t.set_exam("c1", "intro-shell", False)
    with pytest.raises(ConflictError, match="not in exam mode"):
        t.release("c1", "intro-shell")


def test_paused_machines_count_in_memory_but_not_in_the_running_limit(courses: Courses) -> None:
    views = courses.machines.status(names=[t.name for t in courses.targets("c1")])
    alice, bob = (courses.targets("c1", student=sid)[0] for sid in ("alice", "bob"))
    paused = [v if v.name != alice.name else type(v)(**{**v.__dict__, "state": "paused"}) for v in views]
    limits = Limits(200, 1, {alice.name: "alice", bob.name: "bob"})
    second = Target("alice", "intro-shell", "other", "c1-other", 64, 0)
    limits_with = Limits(200, 1, {**limits.owners, "c1-other": "alice"})
    views_with = [*paused, type(views[0])(**{**views[0].__dict__, "name": "c1-other", "state": "stopped"})]
    # alice's paused machine does not count as running: she may start another one under a limit of 1
    assert admit(courses.settings.run_dir, "c1", [second], views_with, limits_with, {}) == [second]
    # but it holds its memory, and a refusal says so
    held = next(v.memory_mb for v in views if v.name == alice.name)
    with pytest.raises(AdmissionError, match=f"; {held} MB of it by 1 paused machines"):
        admit(courses.settings.run_dir, "c1", [bob], paused, Limits(held + bob.memory_mb - 1, 4, limits.owners), {})


def test_an_exam_submit_is_final(courses: Courses) -> None:
    from labkit.services.exams import Exams

    timing(courses).set_exam("c1", "intro-shell", True)
    exams = Exams(courses.settings, courses.db, "alice-web")
    [submitted] = exams.submit("c1", "alice", "intro-shell")  # the machine never ran: graded from its disk
    assert submitted.student == "alice" and submitted.lab == "intro-shell"
    closed = attempt(courses, "alice")
    assert closed is not None and closed.closed_reason == "submitted"
    with pytest.raises(ConflictError, match=r"your exam intro-shell has ended .submitted at"):
        exams.submit("c1", "alice", "intro-shell")
    with pytest.raises(ConflictError, match=r"has ended .you submitted it"):
        courses.start("c1", student="alice")
    rows = {row["student"]: row for row in exams.status("c1", "intro-shell")}
    assert rows["alice"]["closed"] == "submitted" and rows["alice"]["submitted_at"]
    assert rows["bob"]["closed"] is None and rows["bob"]["submitted_at"] is None
    # outside exam mode a Submit is the ordinary, repeatable one
    timing(courses).set_exam("c1", "intro-shell", False)
    assert len(exams.submit("c1", "bob", "intro-shell")) == 1 and attempt(courses, "bob") is None
