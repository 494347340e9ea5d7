"""Grading runs: run the labs' checks against students' machines and store every result as new rows.

What the stored rows add up to (the gradebook, its policies, a student's latest grade) is derived in
`labkit.services.gradebook`; this module only runs checks and writes results, so the slow, guest-facing work (SSH,
offline disks, throwaway machines) stays apart from the queries. `Grading` still answers the gradebook's questions
by handing them to `Grades`, so the CLI and the web app use one object for both.

A run grades many students in parallel (a bounded pool; each student's machines are opened once, so every check of
one guest reuses one SSH connection). Each student's results are stored as soon as they are known, as new rows of
the run: results are never changed, and a grade is a query over the runs, never a counter (style guide 8). A check
labkit could not look at is "not checked" (`CheckResult.unchecked`), never failed.

Submissions are frozen copies of a student's overlays (`labkit.services.submissions`), graded live at the moment
they are made (`SUBMIT` runs: that is the submission's grade). Grading them again from the frozen disks (`REGRADE`)
boots throwaway copies, so what only lived in the running machine (addresses, routes, started services) is gone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.config import Settings
from labkit.errors import ConflictError, GuestUnavailableError, LabkitError, NotFoundError
from labkit.grading.checks import NEEDS_RUNNING
from labkit.grading.result import CheckResult
from labkit.grading.runner import grade, total
from labkit.images.store import ImageStore
from labkit.labs.loader import load_lab
from labkit.labs.model import Lab
from labkit.labs.student import for_student
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.gradebook import (
    GRADED_KINDS,
    LIVE,
    REGRADE,
    SELF_CHECK,
    SUBMISSION,
    SUBMIT,
    BookEntry,
    Gradebook,
    Grades,
    StudentGrade,
    SubmissionGrade,
    submission_label,
)
from labkit.services.lookup import course_by_name
from labkit.services.machines import Machines
from labkit.services.models import GradeResult, GradeRun, Submission
from labkit.services.roster import check_student_id
from labkit.services.scratch import scratch_guests
from labkit.services.submissions import frozen_overlay

#: Students graded at once. Every guest gets one SSH connection, far below sshd's MaxStartups.
DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class RunReport:
    """What one grading run did. ``missing`` lists student/lab pairs with nothing to grade (no submission)."""

    run_id: int
    kind: str
    started_at: dt.datetime
    finished_at: dt.datetime
    grades: list[StudentGrade]
    missing: list[str] = field(default_factory=list)
    #: checks (lab:check) that need a running machine, graded here from frozen disks: they may differ
    needs_running: list[str] = field(default_factory=list)

    @property
    def not_checked(self) -> int:
        """Checks of this run labkit could not look at, over every student."""
        return sum(g.not_checked for g in self.grades)


@dataclass(frozen=True)
class _Job:
    """One student's lab to grade: where its machines are and the values its checks are rendered with."""

    student_pk: int
    sid: str
    lab_pk: int
    lab: Lab
    params: dict[str, object]
    context: dict[str, object]
    #: lab machine name -> labkit machine name
    machines: dict[str, str]
    submission: Submission | None = None


class UnavailableGuest:
    """Stands in for a machine that could not be opened: every call says why, so its checks are "not checked"."""

    running = False

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        self.forwards: dict[int, int] = {}
        self.ssh = None
        self.last_transport: str | None = None

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def refuse(*_args: Any, **_kwargs: Any) -> Any:
            raise GuestUnavailableError(self.reason)

        return refuse

    def close(self) -> None:
        pass


class Grading:
    """``labkit grade``, ``labkit check``, submitting: grading runs (and, through `Grades`, what they add up to)."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()
        self.machines = Machines(settings, db, self.actor)
        self.grades = Grades(db, self.actor)
        #: (lab, check) -> check kind, of the labs planned so far
        self._kinds: dict[tuple[str, str], str] = {}

    # ---- running checks ----------------------------------------------------------------------------------------
    def grade(self, course: str, lab: str | None = None, student: str | None = None, submissions: bool = False,
              workers: int = DEFAULT_WORKERS, progress: Reporter = silent) -> RunReport:
        """Grade every (or one) student's labs: the live machines, or with ``submissions`` the latest submission of
        each student again from its frozen disks (a regrade; `submission_grades` gives the grades stored when they
        were submitted). Hidden checks are included."""
        kind = REGRADE if submissions else LIVE
        report = self._run(course, kind, lab, student, True, workers, progress)
        if kind != REGRADE:
            return report
        needs = sorted({f"{g.lab}:{r.check_id}" for g in report.grades for r in g.results
                        if self._kinds.get((g.lab, r.check_id)) in NEEDS_RUNNING})
        return dataclasses.replace(report, needs_running=needs)

    def measure(self, course: str, student: str, lab: str) -> tuple[_Job, list[CheckResult]] | None:
        """Every check (hidden ones too) of ``student``'s lab on the machines as they are now, not stored: what a
        submission keeps as its grade (`store_submission_grade`). None when the lab has no checks."""
        jobs, _ = self._plan(course, LIVE, lab, student)
        if not jobs or not jobs[0].lab.checks:
            return None
        return jobs[0], self._grade_job(jobs[0], True)

    def store_submission_grade(self, session: Session, course_pk: int, submission: Submission, job: _Job,
                               results: Sequence[CheckResult]) -> None:
        """Keep ``results`` (from `measure`) as the grade of ``submission``: a run of its own, in the caller's
        transaction, so a submission and its grade are stored together."""
        run = GradeRun(course_id=course_pk, kind=SUBMIT, actor=self.actor, lab_filter=job.lab.id,
                       student_filter=job.sid, finished_at=dt.datetime.now(dt.UTC))
        session.add(run)
        session.flush()
        session.add_all(self._rows(run.id, job, results, submission.id))

    def self_check(self, course: str, student: str, lab: str | None = None, step: str | None = None) -> RunReport:
        """A student's own check of their live machines: only the checks that are not hidden; with ``step`` (of
        ``lab``), only that guide step's checks (`labkit.labs.model.Lab.step_checks`). Refused on an exam lab until
        the instructor releases its results (`labkit.services.timing`)."""
        if step is not None and lab is None:
            raise NotFoundError("a step's self-check needs its lab")
        with self.db.transaction() as session:
            held = sorted(cl.lab_id for cl in course_by_name(session, course).labs
                          if cl.exam and cl.results_released_at is None and (lab is None or cl.lab_id == lab))
        if held:
            raise ConflictError(f"lab {', '.join(held)} is an exam: there is no self-check until your instructor "
                                "releases the results")
        return self._run(course, SELF_CHECK, lab, student, False, DEFAULT_WORKERS, silent, step)

    def _run(self, course: str, kind: str, lab: str | None, student: str | None, include_hidden: bool,
             workers: int, progress: Reporter, step: str | None = None) -> RunReport:
        if student is not None:
            check_student_id(student)
        jobs, missing = self._plan(course, kind, lab, student)
        for job in jobs if step is not None else ():
            job.lab.step(step)  # an unknown step is refused before a run is recorded
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            run = GradeRun(course_id=course_row.id, kind=kind, actor=self.actor, lab_filter=lab,
                           student_filter=student)
            session.add(run)
            session.flush()
            run_id, started_at = run.id, run.started_at
        grades: list[StudentGrade] = []
        progress(ProgressEvent("grade", 0, len(jobs), f"{len(jobs)} student labs"))
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs) or 1))) as pool:
            futures = {pool.submit(self._grade_job, job, include_hidden, step): job for job in jobs}
            for done, future in enumerate(as_completed(futures), start=1):
                job = futures[future]
                results = future.result()  # _grade_job turns every failure into failed results
                grades.append(self._store(run_id, job, results, kind))
                progress(ProgressEvent("grade", done, len(jobs), f"{job.sid}/{job.lab.id}"))
        with self.db.transaction() as session:
            run = session.get(GradeRun, run_id)
            assert run is not None
            run.finished_at = dt.datetime.now(dt.UTC)
            finished_at = run.finished_at
            missed = sum(g.not_checked for g in grades)
            record(session, self.actor, kind, course, f"run {run_id}: {len(grades)} student labs"
                   + (f", lab {lab}" if lab else "") + (f", student {student}" if student else "")
                   + (f", {missed} checks not checked" if missed else ""))
        grades.sort(key=lambda g: (g.student, g.lab))
        return RunReport(run_id, kind, started_at, finished_at, grades, missing)

    def _plan(self, course: str, kind: str, lab: str | None,
              student: str | None) -> tuple[list[_Job], list[str]]:
        known = ImageStore(self.settings).known_refs()
        jobs: list[_Job] = []
        missing: list[str] = []
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            labs = [cl for cl in course_row.labs if lab is None or cl.lab_id == lab]
            if not labs:
                have = ", ".join(cl.lab_id for cl in course_row.labs)
                raise NotFoundError(f"course {course} has no lab {lab!r} (labs: {have})")
            students = [s for s in course_row.students
                        if s.archived_at is None and (student is None or s.sid == student)]
            if student is not None and not students:
                raise NotFoundError(f"course {course} has no student {student!r}")
            for course_lab in labs:
                loaded = load_lab(Path(course_lab.path), known)
                self._kinds.update({(loaded.id, c.id): c.kind for c in loaded.checks})
                for s in students:
                    machines = {a.machine: a.vm.name for a in s.assignments if a.course_lab_id == course_lab.id}
                    if not machines:
                        missing.append(f"{s.sid}/{course_lab.lab_id}: not provisioned")
                        continue
                    submission = None
                    if kind == SUBMISSION:
                        submission = _latest_submission(session, s.id, course_lab.id)
                        if submission is None:
                            missing.append(f"{s.sid}/{course_lab.lab_id}: no submission")
                            continue
                        session.expunge(submission)
                    mine = for_student(loaded, course_row.name, s.sid, course_row.secret)
                    jobs.append(_Job(s.id, s.sid, course_lab.id, loaded, mine.params, mine.context, machines,
                                     submission))
        if not jobs and student is not None:
            raise NotFoundError(f"nothing to grade for {student} in course {course}: " + "; ".join(missing))
        return jobs, missing

    def _grade_job(self, job: _Job, include_hidden: bool, step: str | None = None) -> list[CheckResult]:
        """One student's lab (only ``step``'s checks when given); never raises (a failure fails that student's checks
        with the reason)."""
        selected = job.lab.step_checks(step) if step is not None else None
        checks = job.lab.checks if selected is None else selected
        try:
            with ExitStack() as stack:
                guests = self._guests(stack, job)
                return grade(job.lab, selected, guests, job.params, job.context, include_hidden=include_hidden)
        except Exception as err:  # the last resort: one student's trouble never stops the run, and is not theirs
            reason = f"labkit could not grade this lab: {type(err).__name__}: {err}"
            return [CheckResult(c.id, False, 0.0, float(c.points), reason, reason, "", 0.0, unchecked=reason)
                    for c in checks if include_hidden or not c.hidden]

    def _guests(self, stack: ExitStack, job: _Job) -> dict[str, Any]:
        """Guest handles for the job's machines, closed with ``stack``.

        Live machines are opened as they are (running: SSH or console; stopped: offline). A submission is read
        offline when every check of the lab only reads files; otherwise its frozen disks boot as throwaway copies
        (`labkit.services.scratch`), so commands, ports and scripts see exactly what was submitted.
        """
        submission = job.submission
        if submission is None:
            return {machine: stack.enter_context(closing(self._open_live(machine, name)))
                    for machine, name in job.machines.items()}
        if all(check.kind == "file" for check in job.lab.checks):
            return {machine: stack.enter_context(closing(_frozen_guest(submission, machine)))
                    for machine in submission.disks}
        order = [machine for wave in job.lab.start_order() for machine in wave]
        return stack.enter_context(scratch_guests(self.settings, submission.disks, order, f"g{submission.id}"))

    def _open_live(self, machine: str, name: str) -> Any:
        try:
            view = self.machines.status(name)[0]
            if view.state == "stopped" and not view.overlay_bytes:
                # an empty overlay: never started since it was made or reset; its disk is the lab's, not the work
                return UnavailableGuest(name, f"machine {machine} was never started (since its last reset): "
                                              "there is no work to grade")
            return self.machines.open_guest(name)
        except LabkitError as err:
            return UnavailableGuest(name, f"machine {machine} cannot be reached: {err}")

    def _rows(self, run_id: int, job: _Job, results: Sequence[CheckResult],
              submission_id: int | None) -> list[GradeResult]:
        checks = {c.id: c for c in job.lab.checks}
        rows = []
        for r in results:
            definition = checks.get(r.check_id)
            rows.append(GradeResult(
                run_id=run_id, student_id=job.student_pk, course_lab_id=job.lab_pk, submission_id=submission_id,
                check_id=r.check_id, title=definition.title if definition else r.check_id,
                hidden=bool(definition and definition.hidden), passed=r.passed, points=r.points,
                max_points=r.max_points, feedback=r.feedback, evidence=r.evidence, transport=r.transport,
                duration=r.duration, skipped_reason=r.skipped_reason, unchecked=r.unchecked))
        return rows

    def _store(self, run_id: int, job: _Job, results: Sequence[CheckResult], kind: str) -> StudentGrade:
        with self.db.transaction() as session:
            session.add_all(self._rows(run_id, job, results, job.submission.id if job.submission else None))
        points, max_points = total(results)
        source = {LIVE: "live", SELF_CHECK: "self-check"}.get(kind) or submission_label(job.submission, kind)
        return StudentGrade(job.sid, job.lab.id, points, max_points, list(results), dt.datetime.now(dt.UTC), source,
                            {c.id: c.title for c in job.lab.checks}, frozenset(c.id for c in job.lab.checks
                                                                                 if c.hidden),
                            kind, run_id, job.submission.id if job.submission else None)

    # ---- grades, derived: `Grades` answers; kept here so one object serves ``labkit grade`` and the web pages ----
    def latest(self, course: str, student: str, include_hidden: bool = True,
               kinds: Sequence[str] = GRADED_KINDS) -> list[StudentGrade]:
        return self.grades.latest(course, student, include_hidden, kinds)

    def gradebook(self, course: str, detail: bool = False) -> Gradebook:
        return self.grades.gradebook(course, detail)

    def entries(self, course: str) -> list[BookEntry]:
        return self.grades.entries(course)

    def pass_rates(self, course: str, lab: str | None = None) -> list[dict[str, object]]:
        return self.grades.pass_rates(course, lab)

    def policies(self, course: str) -> dict[str, str]:
        return self.grades.policies(course)

    def set_policy(self, course: str, lab: str, policy: str) -> None:
        self.grades.set_policy(course, lab, policy)

    def submission_grades(self, course: str, lab: str | None = None,
                          student: str | None = None) -> list[SubmissionGrade]:
        return self.grades.submission_grades(course, lab, student)

    def runs(self, course: str, limit: int = 20) -> list[dict[str, object]]:
        return self.grades.runs(course, limit)


def _latest_submission(session: Session, student_pk: int, lab_pk: int) -> Submission | None:
    return session.scalar(select(Submission).where(Submission.student_id == student_pk,
                                                   Submission.course_lab_id == lab_pk)
                          .order_by(Submission.id.desc()).limit(1))


def _frozen_guest(submission: Submission, machine: str) -> Any:
    """A read-only Guest on the submitted copy of one machine's overlay."""
    from labkit.guest import Guest
    from labkit.guest.offline import OfflineTransport

    disk = submission.disks[machine]
    return Guest(f"{disk.get('vm', machine)} (submitted)", None, None,
                 offline=OfflineTransport(machine, Path(str(disk["overlay"])), frozen_overlay(disk)))
