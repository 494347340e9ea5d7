"""Grades are never lost silently, and a submission is graded the way the student left it (issue 11, §1 and §2).

One class on `two-hosts` (an each-session lab with a private lab network), run through the real CLI: alice solves
the lab (11/11), carol never starts a machine. Then: a live grade, a submission (graded live), the stored
submission grades, a regrade from the frozen disks, a session end, a grade after it, and resets with and without
``--discard``. Around every grading path the test counts the processes that belong to this test's LABKIT_HOME
(their command line names it): nothing may be left running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import LABS, make_course, settings_env

from labkit.config import Settings
from labkit.labs.loader import load_lab
from labkit.labs.student import for_student, render_solutions
from labkit.services.courses import Courses
from labkit.services.models import Course

pytestmark = pytest.mark.guest
LABKIT = str(Path(sys.executable).with_name("labkit"))
COURSE = "net1"


@dataclass
class Class:
    courses: Courses
    settings: Settings
    env: dict[str, str]

    def lk(self, *args: str, code: int = 0, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The real CLI, stdin not a terminal; asserts the exit code."""
        done = subprocess.run([LABKIT, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        assert done.returncode == code, f"labkit {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n" \
                                        f"{done.stderr}"
        return done

    def json(self, *args: str, code: int = 0) -> object:
        return json.loads(self.lk(*args, "--json", code=code).stdout)

    def machine(self, student: str, machine: str) -> str:
        return next(t.name for t in self.courses.targets(COURSE, student=student) if t.machine == machine)

    def processes(self) -> dict[int, str]:
        """Processes of this installation: those whose command line names its home (never found by name).

        A UML guest runs each of its own processes as a host process with the kernel's command line; those come
        and go with what runs inside the guest, so only the first of such a line (its parent has another) counts.
        """
        home = str(self.settings.home)
        lines: dict[int, str] = {}
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            lines[int(entry.name)] = line
        return {pid: line for pid, line in lines.items()
                if home in line and lines.get(parents.get(pid, 0)) != line}


@pytest.fixture
def klass(lk_settings: Settings) -> Iterator[Class]:
    courses = make_course(lk_settings, COURSE, [LABS / "two-hosts"],
                          [("alice", "Alice", "a@example.org"), ("carol", "Carol", "c@example.org")])
    env = {**os.environ, **settings_env(lk_settings)}
    env.pop("LABKIT_DEBUG", None)
    yield Class(courses, lk_settings, env)
    for view in courses.machines.status():  # stop by PID whatever a failed test left running
        if view.state != "stopped":
            courses.machines.kill(view.name)
    courses.db.close()


def solve(klass: Class, student: str) -> None:
    """Run the lab's reference solution in the student's running machines (b first: a routes through it)."""
    with klass.courses.db.transaction() as session:
        secret = session.query(Course).filter_by(name=COURSE).one().secret
    lab = load_lab(LABS / "two-hosts")
    scripts = {name: text for name, text, _ in render_solutions(lab, for_student(lab, COURSE, student,
                                                                                 secret).context)}
    for machine in ("b", "a"):
        with klass.courses.machines.open_guest(klass.machine(student, machine)) as guest:
            done = guest.run("sh -s", stdin=scripts[f"{machine}.sh"].encode(), timeout=60)
            assert done.ok, done.err


def book_row(klass: Class, student: str) -> dict[str, object]:
    rows = klass.json("gradebook", COURSE)
    return next(row for row in rows if row["student"] == student)  # type: ignore[union-attr,index]


def test_grades_survive_session_end_and_submissions_keep_their_live_grade(klass: Class) -> None:
    klass.courses.start(COURSE, student="alice")
    solve(klass, "alice")
    running = klass.processes()
    assert len(running) >= 3  # two machines and their lab network's switch, at least

    # A live grade: alice has full marks; carol never started a machine: "not checked", never FAIL or 0.
    done = klass.lk("grade", COURSE, "--verbose", code=3)
    assert klass.processes() == running
    assert "11 / 11" in done.stdout and "FAIL" not in done.stdout
    lines = [line for line in done.stderr.splitlines() if not line.startswith("[grade]")]  # progress lines
    assert len(lines) == 1 and lines[0].startswith("labkit: 6 checks could not be checked (1 student labs: "
                                                   "carol/two-hosts)")
    carol = book_row(klass, "carol")
    assert carol["two-hosts"] is None and str(carol["two-hosts status"]).startswith(
        "not graded: 6 of 6 checks could not be checked: machine a was never started")
    assert book_row(klass, "alice")["two-hosts"] == 11

    # A submission is graded live, at the moment it is made, and keeps that grade.
    done = klass.lk("submit", COURSE, "alice")
    assert klass.processes() == running
    assert "graded 11 / 11" in done.stdout
    [stored] = klass.json("grade", COURSE, "--submissions")  # type: ignore[misc]
    assert stored["grade"]["points"] == 11 and stored["grade"]["complete"]

    # Graded again from its frozen disks, the lab's addresses, routes and service are gone: it differs, and the
    # command says which checks need a running machine. The throwaway machines and their switch are all stopped.
    done = klass.lk("grade", COURSE, "--student", "alice", "--from-disk", "--verbose")
    assert klass.processes() == running, "a from-disk regrade left processes running"
    assert "checks need a running machine (command, port, http)" in done.stdout
    assert "two-hosts:service-address" in done.stdout and "two-hosts:a-fetches" in done.stdout
    regrade = klass.json("grade", COURSE, "--student", "alice", "--from-disk")
    assert regrade["grades"][0]["points"] < 11  # type: ignore[index]
    assert not list((klass.settings.home / "scratch").iterdir())
    assert not [p for p in (klass.settings.run_dir / "net").iterdir() if p.name.startswith("g")]
    [stored] = klass.json("grade", COURSE, "--submissions")  # type: ignore[misc]
    assert stored["grade"]["points"] == 11  # the submission's grade stays what it was when submitted

    # Session end: refused without a terminal unless --yes; then alice's machines are graded live, frozen as a
    # submission, stopped and reset. Nothing of this installation runs afterwards.
    klass.lk("course", "session", "begin", COURSE)
    refused = klass.lk("course", "session", "end", COURSE, code=1)
    assert "add --yes" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert klass.courses.status(COURSE, student="alice")[0]["state"] == "running"
    ended = klass.json("course", "session", "end", COURSE, "--yes")
    assert klass.processes() == {}, "session end left processes running"
    assert ended["reset"] == 4 and [(s["student"], s["points"]) for s in ended["submitted"]] == [  # type: ignore
        ("alice", 11)]
    assert len(klass.json("submissions", COURSE)) == 2  # type: ignore[arg-type]

    # Grading after the reset: nothing can be checked, the command says so and exits 3, and the gradebook keeps
    # alice's 11 (the default policy is best); carol is still "not graded" with the reason.
    done = klass.lk("grade", COURSE, code=3)
    assert "labkit: 12 checks could not be checked" in done.stderr
    alice = book_row(klass, "alice")
    assert alice["two-hosts"] == 11 and str(alice["two-hosts status"]).startswith("best: best of ")
    assert "the last run could not check everything" in str(alice["two-hosts status"])
    assert book_row(klass, "carol")["two-hosts"] is None
    klass.lk("course", "policy", COURSE, "two-hosts", "submission")
    assert book_row(klass, "alice")["two-hosts"] == 11  # the last submission's grade (made at session end)
    klass.lk("course", "policy", COURSE, "two-hosts", "latest")
    assert book_row(klass, "alice")["two-hosts"] == 11  # the latest run that could check everything
    assert klass.json("course", "policy", COURSE) == {"two-hosts": "latest"}
    assert klass.processes() == {}


def test_resets_keep_work_unless_discarded(klass: Class) -> None:
    a, b = klass.machine("alice", "a"), klass.machine("alice", "b")
    klass.courses.start(COURSE, student="alice")
    for name in (a, b):
        with klass.courses.machines.open_guest(name) as guest:
            assert guest.run("echo mine > /root/work.txt && sync").ok
    klass.courses.stop(COURSE, student="alice")

    # course reset without --discard: the student's lab is frozen (and graded) as a submission first
    klass.lk("course", "reset", COURSE, "--student", "alice", "--yes")
    [kept] = klass.json("submissions", COURSE)  # type: ignore[misc]
    assert kept["student"] == "alice" and kept["machines"] == ["a", "b"] and kept["bytes"] > 0
    frozen = sorted(p for p in klass.settings.submissions.rglob("*.cow"))
    assert len(frozen) == 2
    assert all(row["overlay_bytes"] == 0 for row in klass.courses.status(COURSE, student="alice"))

    # vm reset without --discard keeps the old overlay as a snapshot
    klass.courses.start(COURSE, student="alice", machine="a")
    with klass.courses.machines.open_guest(a) as guest:
        assert guest.run("echo again > /root/work.txt && sync").ok
    klass.courses.stop(COURSE, student="alice")
    klass.lk("vm", "reset", a, "--yes")
    [snapshot] = klass.json("vm", "snapshots", a)  # type: ignore[misc]
    assert snapshot["name"].startswith("before-reset-") and snapshot["size"] > 0

    # a restore keeps the disk it replaces too
    klass.courses.start(COURSE, student="alice", machine="a")
    klass.courses.stop(COURSE, student="alice")
    klass.lk("vm", "restore", a, snapshot["name"], "--yes")
    names = [s["name"] for s in klass.json("vm", "snapshots", a)]  # type: ignore[union-attr]
    assert len(names) == 2 and names[1].startswith("before-restore-")

    # with --discard nothing is kept, and the student's submissions are never touched by a reset
    klass.courses.start(COURSE, student="alice", machine="a")
    klass.courses.stop(COURSE, student="alice")
    klass.lk("vm", "restore", a, snapshot["name"], "--yes", "--discard")
    klass.lk("vm", "reset", a, "--yes", "--discard")
    klass.courses.start(COURSE, student="alice", machine="a")
    klass.courses.stop(COURSE, student="alice")
    klass.lk("course", "reset", COURSE, "--student", "alice", "--yes", "--discard")
    assert len(klass.json("vm", "snapshots", a)) == 2  # type: ignore[arg-type]
    assert len(klass.json("submissions", COURSE)) == 1  # type: ignore[arg-type]
    assert all(path.exists() for path in frozen)
    assert klass.processes() == {}
