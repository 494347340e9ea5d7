"""``labkit lab test``: prove a lab's checks before a class meets them.

For each seed a throwaway student gets the lab in a throwaway course: provisioned, booted and graded untouched
(every check not marked ``baseline_pass`` must fail, or it passes for everyone), then the lab's ``solution/`` scripts
run in the machines and a second grading must give full marks. The course and its machines are purged at the end,
whatever happened.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from labkit.config import Settings
from labkit.errors import LabFormatError, LabkitError
from labkit.images.store import ImageStore
from labkit.labs.loader import load_lab
from labkit.labs.model import Lab
from labkit.labs.student import for_student, render_solutions
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.services.audit import current_actor
from labkit.services.courses import Courses
from labkit.services.db import Database
from labkit.services.gradebook import StudentGrade
from labkit.services.grading import Grading
from labkit.services.models import Course

#: Seconds one solution script may run.
SOLUTION_TIMEOUT = 300.0


@dataclass(frozen=True)
class SeedResult:
    """One throwaway student: what went wrong at each step (empty lists: the step passed)."""

    seed: int
    student: str
    params: dict[str, object]
    #: checks that passed on untouched machines (or baseline_pass checks that failed there)
    baseline: list[str] = field(default_factory=list)
    #: solution scripts that failed, with their exit code and output tail
    solution: list[str] = field(default_factory=list)
    #: checks without full marks after the solution ran
    after: list[str] = field(default_factory=list)
    points: float = 0.0
    max_points: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.baseline or self.solution or self.after)


@dataclass(frozen=True)
class LabTestReport:
    lab: str
    seeds: list[SeedResult]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.seeds) and all(seed.ok for seed in self.seeds)


class LabTester:
    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()
        self.courses = Courses(settings, db, self.actor)
        self.grading = Grading(settings, db, self.actor)

    def test(self, path: Path, seeds: int = 3, progress: Reporter = silent) -> LabTestReport:
        if not 1 <= seeds <= 20:
            raise LabFormatError(f"--seeds must be between 1 and 20, not {seeds}")
        lab = load_lab(path, ImageStore(self.settings).known_refs())
        course = f"labtest-{secrets.token_hex(4)}"
        students = [f"seed-{n}" for n in range(1, seeds + 1)]
        self.courses.create(course, [path])
        try:
            self.courses.enrol(course, students)
            progress(ProgressEvent("lab-test", 0, 4, "provisioning"))
            self.courses.provision(course)
            progress(ProgressEvent("lab-test", 1, 4, "booting"))
            self.courses.start(course)
            progress(ProgressEvent("lab-test", 2, 4, "grading untouched machines"))
            baseline = {g.student: g for g in self.grading.grade(course).grades}
            progress(ProgressEvent("lab-test", 3, 4, "running the solution"))
            secret = self._secret(course)
            solved = {s: self._solve(course, lab, s, secret) for s in students}
            after = {g.student: g for g in self.grading.grade(course).grades}
            progress(ProgressEvent("lab-test", 4, 4, "done"))
            return LabTestReport(lab.id, [self._judge(lab, n, s, secret, course, baseline.get(s), solved[s],
                                                      after.get(s)) for n, s in enumerate(students, start=1)])
        except LabkitError as err:
            return LabTestReport(lab.id, [], f"{type(err).__name__}: {err}")
        finally:
            self.courses.remove(course, purge=True)

    def _secret(self, course: str) -> str:
        with self.db.transaction() as session:
            return str(session.scalar(select(Course.secret).where(Course.name == course)))

    def _solve(self, course: str, lab: Lab, student: str, secret: str) -> list[str]:
        """Run the student's rendered solution scripts (``solution/<machine>.sh``), machines in start order."""
        context = for_student(lab, course, student, secret).context
        scripts = {Path(name).stem.split(".")[0]: text for name, text, _ in render_solutions(lab, context)}
        if not scripts:
            return [f"lab {lab.id} has no solution/ scripts (solution/<machine>.sh or .sh.j2)"]
        problems = [f"solution/{m}.sh names no machine of the lab" for m in scripts if m not in lab.machines]
        targets = {t.machine: t.name for t in self.courses.targets(course, student=student)}
        for machine in [m for wave in lab.start_order() for m in wave if m in scripts]:
            try:
                with self.courses.machines.open_guest(targets[machine]) as guest:
                    result = guest.run("sh -s", timeout=SOLUTION_TIMEOUT, stdin=scripts[machine].encode())
            except LabkitError as err:
                problems.append(f"solution/{machine}.sh could not run: {err}")
                continue
            if not result.ok:
                tail = (result.stdout + result.stderr).decode("utf-8", "replace")[-400:]
                problems.append(f"solution/{machine}.sh exited with {result.exit_code}: {tail.strip()}")
        return problems

    @staticmethod
    def _judge(lab: Lab, seed: int, student: str, secret: str, course: str, baseline: StudentGrade | None,
               solved: list[str], after: StudentGrade | None) -> SeedResult:
        params = for_student(lab, course, student, secret).params
        expect_pass = {c.id for c in lab.checks if c.baseline_pass}
        wrong_at_start = [] if baseline else ["not graded"]
        for r in baseline.results if baseline else []:
            if r.check_id in expect_pass and not r.passed:
                wrong_at_start.append(f"{r.check_id} (baseline_pass) failed on untouched machines: {r.feedback}")
            elif r.check_id not in expect_pass and r.passed:
                wrong_at_start.append(f"{r.check_id} passed on untouched machines: it passes for everyone")
        short = [] if after else ["not graded"]
        for r in after.results if after else []:
            if r.points < r.max_points:
                short.append(f"{r.check_id}: {r.points:g}/{r.max_points:g} after the solution: {r.feedback}")
        return SeedResult(seed, student, params, wrong_at_start, solved, short,
                          after.points if after else 0.0, after.max_points if after else 0.0)
