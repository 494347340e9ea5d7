"""Grading a course: run the labs' checks against students' machines, keep every result, and derive the grades.

A run grades many students in parallel (a bounded pool; each student's machines are opened once, so every check of
one guest reuses one SSH connection). Each student's results are stored as soon as they are known, as new rows of
the run: results are never changed, and a grade is a query over the runs (the latest one that graded that student's
lab), never a counter (style guide 8). A failure grading one student becomes that student's failed checks; the
others go on.

Submissions are frozen copies of a student's overlays (`labkit.services.submissions`); grading them reads the
copies offline, so a fixed or added check can be run again on exactly what was submitted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.config import Settings
from labkit.errors import GuestError, LabkitError, NotFoundError
from labkit.grading.result import CheckResult
from labkit.grading.runner import grade, total
from labkit.images.store import ImageStore
from labkit.labs.loader import load_lab
from labkit.labs.model import Lab
from labkit.labs.student import for_student
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.lookup import course_by_name
from labkit.services.machines import Machines
from labkit.services.models import Course, GradeResult, GradeRun, Submission
from labkit.services.roster import check_student_id
from labkit.services.scratch import scratch_guests

#: Run kinds. Only "grade" and "submission" runs count in the gradebook; self-checks are the students' own.
LIVE, SUBMISSION, SELF_CHECK = "grade", "submission", "self-check"
GRADED_KINDS = (LIVE, SUBMISSION)
#: Students graded at once. Every guest gets one SSH connection, far below sshd's MaxStartups.
DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class StudentGrade:
    """One student's result in one lab: the points, every check's result, and what was graded."""

    student: str
    lab: str
    points: float
    max_points: float
    results: list[CheckResult]
    graded_at: dt.datetime
    #: "live", "submission of <time>", or "self-check"
    source: str
    titles: dict[str, str] = field(default_factory=dict)
    hidden: frozenset[str] = frozenset()

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.passed)


@dataclass(frozen=True)
class RunReport:
    """What one grading run did. ``missing`` lists student/lab pairs with nothing to grade (no submission)."""

    run_id: int
    kind: str
    started_at: dt.datetime
    finished_at: dt.datetime
    grades: list[StudentGrade]
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Gradebook:
    """Students × labs (and checks with ``detail``), as rows of plain values for CSV and tables."""

    columns: list[str]
    rows: list[list[object]]


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
    """Stands in for a machine that could not be opened: every call says why, so its checks fail with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        self.forwards: dict[int, int] = {}
        self.ssh = None
        self.last_transport: str | None = None

    def __getattr__(self, method: str) -> Callable[..., Any]:
        def refuse(*_args: Any, **_kwargs: Any) -> Any:
            raise GuestError(self.reason)

        return refuse

    def close(self) -> None:
        pass


class Grading:
    """``labkit grade``, ``labkit grades``, ``labkit check``: grading runs and the grades derived from them."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()
        self.machines = Machines(settings, db, self.actor)

    # ---- running checks ----------------------------------------------------------------------------------------
    def grade(self, course: str, lab: str | None = None, student: str | None = None, submissions: bool = False,
              workers: int = DEFAULT_WORKERS, progress: Reporter = silent) -> RunReport:
        """Grade every (or one) student's labs: the live machines, or with ``submissions`` the latest submission of
        each student offline. Hidden checks are included."""
        kind = SUBMISSION if submissions else LIVE
        return self._run(course, kind, lab, student, True, workers, progress)

    def self_check(self, course: str, student: str, lab: str | None = None) -> RunReport:
        """A student's own check of their live machines: only the checks that are not hidden."""
        return self._run(course, SELF_CHECK, lab, student, False, DEFAULT_WORKERS, silent)

    def _run(self, course: str, kind: str, lab: str | None, student: str | None, include_hidden: bool,
             workers: int, progress: Reporter) -> RunReport:
        if student is not None:
            check_student_id(student)
        jobs, missing = self._plan(course, kind, lab, student)
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
            futures = {pool.submit(self._grade_job, job, include_hidden): job for job in jobs}
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
            record(session, self.actor, kind, course, f"run {run_id}: {len(grades)} student labs"
                   + (f", lab {lab}" if lab else "") + (f", student {student}" if student else ""))
        grades.sort(key=lambda g: (g.student, g.lab))
        return RunReport(run_id, kind, started_at, finished_at, grades, missing)

    def _plan(self, course: str, kind: str, lab: str | None,
              student: str | None) -> tuple[list[_Job], list[str]]:
        known = {image.name for image in ImageStore(self.settings).list()}
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

    def _grade_job(self, job: _Job, include_hidden: bool) -> list[CheckResult]:
        """One student's lab; never raises (a failure fails that student's checks with the reason)."""
        try:
            with ExitStack() as stack:
                guests = self._guests(stack, job)
                return grade(job.lab, None, guests, job.params, job.context, include_hidden=include_hidden)
        except Exception as err:  # the last resort: one student's trouble never stops the run
            reason = f"labkit could not grade this lab: {type(err).__name__}: {err}"
            return [CheckResult(c.id, False, 0.0, float(c.points), reason, reason, "", 0.0)
                    for c in job.lab.checks if include_hidden or not c.hidden]

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
            return self.machines.open_guest(name)
        except LabkitError as err:
            return UnavailableGuest(name, f"machine {machine} cannot be reached: {err}")

    def _store(self, run_id: int, job: _Job, results: Sequence[CheckResult], kind: str) -> StudentGrade:
        checks = {c.id: c for c in job.lab.checks}
        with self.db.transaction() as session:
            for r in results:
                definition = checks.get(r.check_id)
                session.add(GradeResult(
                    run_id=run_id, student_id=job.student_pk, course_lab_id=job.lab_pk,
                    submission_id=job.submission.id if job.submission else None, check_id=r.check_id,
                    title=definition.title if definition else r.check_id,
                    hidden=bool(definition and definition.hidden), passed=r.passed, points=r.points,
                    max_points=r.max_points, feedback=r.feedback, evidence=r.evidence, transport=r.transport,
                    duration=r.duration, skipped_reason=r.skipped_reason))
        points, max_points = total(results)
        source = {LIVE: "live", SELF_CHECK: "self-check"}.get(kind) or _submission_label(job.submission)
        return StudentGrade(job.sid, job.lab.id, points, max_points, list(results), dt.datetime.now(dt.UTC), source,
                            {c.id: c.title for c in job.lab.checks}, frozenset(c.id for c in job.lab.checks
                                                                                 if c.hidden))

    # ---- grades, derived ---------------------------------------------------------------------------------------
    def latest(self, course: str, student: str, include_hidden: bool = True,
               kinds: Sequence[str] = GRADED_KINDS) -> list[StudentGrade]:
        """The student's latest graded result in each lab (labs never graded are left out)."""
        check_student_id(student)
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            one = next((s for s in course_row.students if s.sid == student), None)
            if one is None:
                raise NotFoundError(f"course {course} has no student {student!r}")
            return list(self._latest_grades(session, course_row, kinds, one.id, include_hidden))

    def _latest_grades(self, session: Session, course: Course, kinds: Sequence[str], student_pk: int | None = None,
                       include_hidden: bool = True) -> Iterator[StudentGrade]:
        """For every (student, lab): the results of the latest run of ``kinds`` that graded it."""
        query = (select(GradeResult, GradeRun).join(GradeRun).where(GradeRun.course_id == course.id,
                                                                    GradeRun.kind.in_(kinds)))
        if student_pk is not None:
            query = query.where(GradeResult.student_id == student_pk)
        latest: dict[tuple[int, int], tuple[GradeRun, list[GradeResult]]] = {}
        for result, run in session.execute(query.order_by(GradeRun.id, GradeResult.id)):
            key = (result.student_id, result.course_lab_id)
            if key not in latest or latest[key][0].id != run.id:
                latest[key] = (run, [])
            latest[key][1].append(result)
        sids = {s.id: s.sid for s in course.students}
        labs = {cl.id: cl.lab_id for cl in course.labs}
        for (student_id, lab_id), (run, rows) in sorted(latest.items(), key=lambda kv: (sids[kv[0][0]],
                                                                                      labs[kv[0][1]])):
            shown = [row for row in rows if include_hidden or not row.hidden]
            results = [_result(row) for row in shown]
            points, max_points = total(results)
            submission = session.get(Submission, shown[0].submission_id) if shown and shown[0].submission_id else None
            source = "live" if run.kind == LIVE else "self-check" if run.kind == SELF_CHECK else \
                _submission_label(submission)
            yield StudentGrade(sids[student_id], labs[lab_id], points, max_points, results, run.started_at, source,
                               {row.check_id: row.title for row in shown},
                               frozenset(row.check_id for row in shown if row.hidden))

    def gradebook(self, course: str, detail: bool = False) -> Gradebook:
        """Every student (archived ones too, marked) × lab: the latest grade; with ``detail`` one column per check."""
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            grades = {(g.student, g.lab): g for g in self._latest_grades(session, course_row, GRADED_KINDS)}
            labs = course_row.labs
            check_columns: dict[str, list[str]] = {}
            for course_lab in labs:
                ids: dict[str, None] = {}
                for (_, lab_id), g in grades.items():
                    if lab_id == course_lab.lab_id:
                        ids.update(dict.fromkeys(r.check_id for r in g.results))
                check_columns[course_lab.lab_id] = list(ids)
            columns = ["student", "name", "email", "archived"]
            for course_lab in labs:
                columns += [course_lab.lab_id, f"{course_lab.lab_id} max"]
                if detail:
                    columns += [f"{course_lab.lab_id}:{check}" for check in check_columns[course_lab.lab_id]]
            columns += ["total", "max"]
            rows: list[list[object]] = []
            for s in course_row.students:
                row: list[object] = [s.sid, s.name, s.email, "yes" if s.archived_at else ""]
                points = max_points = 0.0
                for course_lab in labs:
                    g = grades.get((s.sid, course_lab.lab_id))
                    row += [g.points if g else None, g.max_points if g else None]
                    if g:
                        points, max_points = points + g.points, max_points + g.max_points
                    if detail:
                        by_check = {r.check_id: r.points for r in g.results} if g else {}
                        row += [by_check.get(check) for check in check_columns[course_lab.lab_id]]
                row += [points, max_points]
                rows.append(row)
            return Gradebook(columns, rows)

    def pass_rates(self, course: str, lab: str | None = None) -> list[dict[str, object]]:
        """Per check, over every student's latest grade: how many passed out of how many were graded."""
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            rates: dict[tuple[str, str], dict[str, object]] = {}
            for g in self._latest_grades(session, course_row, GRADED_KINDS):
                if lab is not None and g.lab != lab:
                    continue
                for r in g.results:
                    entry = rates.setdefault((g.lab, r.check_id), {"lab": g.lab, "check": r.check_id,
                                                                   "title": g.titles.get(r.check_id, r.check_id),
                                                                   "passed": 0, "graded": 0})
                    entry["graded"] = int(entry["graded"]) + 1  # type: ignore[call-overload]
                    entry["passed"] = int(entry["passed"]) + int(r.passed)  # type: ignore[call-overload]
            for entry in rates.values():
                entry["rate"] = round(int(entry["passed"]) / int(entry["graded"]), 3)  # type: ignore[call-overload]
            return list(rates.values())

    def runs(self, course: str, limit: int = 20) -> list[dict[str, object]]:
        """The latest grading runs of the course, newest first (the history)."""
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            found = session.scalars(select(GradeRun).where(GradeRun.course_id == course_row.id)
                                    .order_by(GradeRun.id.desc()).limit(limit))
            return [{"id": run.id, "kind": run.kind, "actor": run.actor, "lab": run.lab_filter,
                     "student": run.student_filter, "started_at": run.started_at.isoformat(),
                     "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                     "results": len(run.results)} for run in found]



def _latest_submission(session: Session, student_pk: int, lab_pk: int) -> Submission | None:
    return session.scalar(select(Submission).where(Submission.student_id == student_pk,
                                                   Submission.course_lab_id == lab_pk)
                          .order_by(Submission.id.desc()).limit(1))


def _submission_label(submission: Submission | None) -> str:
    if submission is None:
        return "submission (since deleted)"
    return f"submission of {submission.created_at:%Y-%m-%d %H:%M:%S} UTC"


def _frozen_guest(submission: Submission, machine: str) -> Any:
    """A read-only Guest on the submitted copy of one machine's overlay."""
    from labkit.guest import Guest
    from labkit.guest.offline import OfflineTransport

    disk = submission.disks[machine]
    return Guest(f"{disk.get('vm', machine)} (submitted)", None, None,
                 offline=OfflineTransport(machine, Path(str(disk["overlay"])), Path(str(disk["image"]))))


def _result(row: GradeResult) -> CheckResult:
    return CheckResult(row.check_id, row.passed, row.points, row.max_points, row.feedback, row.evidence,
                       row.transport, row.duration, row.skipped_reason)
