"""The grades a course has, derived from the stored grading runs: the gradebook, its policies, pass rates.

Kept apart from running the checks (`labkit.services.grading`) because it is a different job: runs only ever add
rows (results are never changed), and everything here is a query over those immutable rows, never a counter
(style guide 8). Reading grades needs no machine, guest or SSH connection, so this module imports none.

Grades are never lost silently. A check labkit could not look at (the machine is stopped and the check needs it
running, it was never started, it cannot be reached) is "not checked" (`CheckResult.unchecked`), never failed, and
a student's result holding one is not a grade: it never replaces an earlier grade, and the gradebook says "not
graded" with the reason when there is no other. Which of the complete grades the gradebook shows is the course
lab's policy (`POLICIES`): the best, the latest, or the latest submission's (`choose`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.errors import BadNameError, NotFoundError
from labkit.grading.result import CheckResult, unchecked_reasons
from labkit.grading.runner import total
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.lookup import course_by_name
from labkit.services.models import Course, CourseLab, GradeResult, GradeRun, Student, Submission
from labkit.services.roster import check_student_id

#: Run kinds: a live grade, a submission's grade made when it was submitted, a regrade of a submission from its
#: frozen disks ("submission": the name older runs have), and the students' own self-checks (never a grade).
LIVE, SUBMIT, REGRADE, SELF_CHECK = "grade", "submit", "submission", "self-check"
SUBMISSION = REGRADE
GRADED_KINDS = (LIVE, SUBMIT, REGRADE)
#: Gradebook policies of a course lab: which complete grade counts. "best" is the default: a later run can only
#: raise a student's grade, so neither a reset machine nor a stopped one, nor a grader's mistake, costs marks.
POLICIES = ("best", "latest", "submission")
DEFAULT_POLICY = "best"


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
    kind: str = LIVE
    run_id: int = 0
    submission_id: int | None = None

    @property
    def passed(self) -> int:
        return sum(1 for r in self.results if r.passed)

    @property
    def not_checked(self) -> int:
        """How many checks labkit could not look at (0: this is a grade)."""
        return sum(1 for r in self.results if r.unchecked is not None)

    @property
    def complete(self) -> bool:
        """Every check was checked: only then is this a grade that may count."""
        return bool(self.results) and self.not_checked == 0

    @property
    def why_not_graded(self) -> str:
        """One line: how many checks could not be checked and why ("" when complete)."""
        if self.complete:
            return ""
        if not self.results:
            return "no checks were run"
        return (f"{self.not_checked} of {len(self.results)} checks could not be checked: "
                + "; ".join(unchecked_reasons(self.results)))


@dataclass(frozen=True)
class SubmissionGrade:
    """A submission and the grade stored when it was made (None: it has none)."""

    id: int
    student: str
    lab: str
    created_at: dt.datetime
    grade: StudentGrade | None


@dataclass(frozen=True)
class BookEntry:
    """What the gradebook shows for one student in one lab: the grade its policy chose, or why there is none."""

    student: str
    lab: str
    policy: str
    grade: StudentGrade | None
    #: "best of 3 grades: live of 2026-12-07 14:02:11 UTC", or "not graded: 2 of 6 checks could not be checked: ..."
    note: str
    #: the check ids of the latest run (the gradebook's detail columns, graded or not)
    checks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Gradebook:
    """Students × labs (and checks with ``detail``), as rows of plain values for CSV and tables."""

    columns: list[str]
    rows: list[list[object]]


class Grades:
    """``labkit grades``, the gradebook pages, ``labkit course policy``: the grades derived from the stored runs."""

    def __init__(self, db: Database, actor: str | None = None) -> None:
        self.db = db
        self.actor = actor or current_actor()

    def latest(self, course: str, student: str, include_hidden: bool = True,
               kinds: Sequence[str] = GRADED_KINDS) -> list[StudentGrade]:
        """The student's latest result of ``kinds`` in each lab (labs never graded are left out); it may hold checks
        that could not be checked (`StudentGrade.complete`)."""
        check_student_id(student)
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            one = next((s for s in course_row.students if s.sid == student), None)
            if one is None:
                raise NotFoundError(f"course {course} has no student {student!r}")
            history = self._history(session, course_row, kinds, one.id, include_hidden)
            return [grades[-1] for _, grades in sorted(history.items())]

    def _history(self, session: Session, course: Course, kinds: Sequence[str], student_pk: int | None = None,
                 include_hidden: bool = True) -> dict[tuple[str, str], list[StudentGrade]]:
        """For every (student, lab): the results of every run of ``kinds`` that graded it, oldest first."""
        query = (select(GradeResult, GradeRun).join(GradeRun).where(GradeRun.course_id == course.id,
                                                                    GradeRun.kind.in_(kinds)))
        if student_pk is not None:
            query = query.where(GradeResult.student_id == student_pk)
        runs: dict[tuple[int, int, int], tuple[GradeRun, list[GradeResult]]] = {}
        for result, run in session.execute(query.order_by(GradeRun.id, GradeResult.id)):
            runs.setdefault((result.student_id, result.course_lab_id, run.id), (run, []))[1].append(result)
        sids = {s.id: s.sid for s in course.students}
        labs = {cl.id: cl.lab_id for cl in course.labs}
        submission_ids = {rows[0].submission_id for run, rows in runs.values() if rows[0].submission_id}
        submissions = {row.id: row for row in session.scalars(select(Submission).where(
            Submission.id.in_(submission_ids)))} if submission_ids else {}
        history: dict[tuple[str, str], list[StudentGrade]] = {}
        for (student_id, lab_id, _), (run, rows) in sorted(runs.items(), key=lambda kv: kv[0][2]):
            shown = [row for row in rows if include_hidden or not row.hidden]
            results = [_result(row) for row in shown]
            points, max_points = total(results)
            submission_id = rows[0].submission_id
            source = "live" if run.kind == LIVE else "self-check" if run.kind == SELF_CHECK else \
                submission_label(submissions.get(submission_id) if submission_id else None, run.kind)
            history.setdefault((sids[student_id], labs[lab_id]), []).append(StudentGrade(
                sids[student_id], labs[lab_id], points, max_points, results, run.started_at, source,
                {row.check_id: row.title for row in shown}, frozenset(row.check_id for row in shown if row.hidden),
                run.kind, run.id, submission_id))
        return history

    def _book(self, session: Session, course: Course) -> dict[tuple[str, str], BookEntry]:
        """Every graded (student, lab) of the course: the grade its lab's policy chooses, or why there is none."""
        policies = {cl.lab_id: cl.grade_policy or DEFAULT_POLICY for cl in course.labs}
        return {key: choose(grades, policies.get(key[1], DEFAULT_POLICY))
                for key, grades in self._history(session, course, GRADED_KINDS).items()}

    def gradebook(self, course: str, detail: bool = False) -> Gradebook:
        """Every student (archived ones too, marked) × lab: the grade the lab's policy chooses (empty: not graded),
        and a status column saying which grade it is, or why there is none; with ``detail`` one column per check."""
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            book = self._book(session, course_row)
            labs = course_row.labs
            check_columns: dict[str, list[str]] = {}
            for course_lab in labs:
                ids: dict[str, None] = {}
                for (_, lab_id), entry in book.items():
                    if lab_id == course_lab.lab_id:
                        ids.update(dict.fromkeys(entry.checks))
                        ids.update(dict.fromkeys(r.check_id for r in entry.grade.results) if entry.grade else {})
                check_columns[course_lab.lab_id] = list(ids)
            columns = ["student", "name", "email", "archived"]
            for course_lab in labs:
                columns += [course_lab.lab_id, f"{course_lab.lab_id} max", f"{course_lab.lab_id} status"]
                if detail:
                    columns += [f"{course_lab.lab_id}:{check}" for check in check_columns[course_lab.lab_id]]
            columns += ["total", "max"]
            rows: list[list[object]] = []
            for s in course_row.students:
                row: list[object] = [s.sid, s.name, s.email, "yes" if s.archived_at else ""]
                points = max_points = 0.0
                for course_lab in labs:
                    entry = book.get((s.sid, course_lab.lab_id))
                    g = entry.grade if entry else None
                    policy = course_lab.grade_policy or DEFAULT_POLICY
                    row += [g.points if g else None, g.max_points if g else None,
                            entry.note if entry else f"{policy}: never graded"]
                    if g:
                        points, max_points = points + g.points, max_points + g.max_points
                    if detail:
                        by_check = {r.check_id: r.points for r in g.results} if g else {}
                        row += [by_check.get(check) for check in check_columns[course_lab.lab_id]]
                row += [points, max_points]
                rows.append(row)
            return Gradebook(columns, rows)

    def entries(self, course: str) -> list[BookEntry]:
        """The gradebook's choice for every graded (student, lab), graded or not."""
        with self.db.transaction() as session:
            return [entry for _, entry in sorted(self._book(session, course_by_name(session, course)).items())]

    def pass_rates(self, course: str, lab: str | None = None) -> list[dict[str, object]]:
        """Per check, over every student's grade in the gradebook: how many passed out of how many were graded."""
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            rates: dict[tuple[str, str], dict[str, object]] = {}
            for entry in self._book(session, course_row).values():
                g = entry.grade
                if g is None or (lab is not None and g.lab != lab):
                    continue
                for r in g.results:
                    found = rates.setdefault((g.lab, r.check_id), {"lab": g.lab, "check": r.check_id,
                                                                   "title": g.titles.get(r.check_id, r.check_id),
                                                                   "passed": 0, "graded": 0})
                    found["graded"] = int(found["graded"]) + 1  # type: ignore[call-overload]
                    found["passed"] = int(found["passed"]) + int(r.passed)  # type: ignore[call-overload]
            for found in rates.values():
                found["rate"] = round(int(found["passed"]) / int(found["graded"]), 3)  # type: ignore[call-overload]
            return list(rates.values())

    def policies(self, course: str) -> dict[str, str]:
        """lab id -> its gradebook policy."""
        with self.db.transaction() as session:
            return {cl.lab_id: cl.grade_policy or DEFAULT_POLICY for cl in course_by_name(session, course).labs}

    def set_policy(self, course: str, lab: str, policy: str) -> None:
        """Choose which complete grade the gradebook shows for ``lab`` (recorded; the runs stay as they are)."""
        if policy not in POLICIES:
            raise BadNameError(f"unknown grade policy {policy!r}; choose one of {', '.join(POLICIES)}")
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            found = session.scalar(select(CourseLab).where(CourseLab.course_id == course_row.id,
                                                           CourseLab.lab_id == lab))
            if found is None:
                raise NotFoundError(f"course {course} has no lab {lab!r} (labs: "
                                    f"{', '.join(cl.lab_id for cl in course_row.labs)})")
            before, found.grade_policy = found.grade_policy, policy
            record(session, self.actor, "grade-policy", f"{course}/{lab}", f"{before} -> {policy}")

    def submission_grades(self, course: str, lab: str | None = None,
                          student: str | None = None) -> list[SubmissionGrade]:
        """Every submission (of ``lab``, of ``student``) with the grade stored when it was made (None: it has
        none, e.g. made before labkit graded submissions, or its lab has no checks). Oldest first."""
        if student is not None:
            check_student_id(student)
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            query = (select(Submission, Student, CourseLab).join(Student, Submission.student_id == Student.id)
                     .join(CourseLab, Submission.course_lab_id == CourseLab.id)
                     .where(Student.course_id == course_row.id).order_by(Submission.id))
            if lab is not None:
                query = query.where(CourseLab.lab_id == lab)
            if student is not None:
                query = query.where(Student.sid == student)
            found = list(session.execute(query))
            grades = {g.submission_id: g for grades in self._history(session, course_row, (SUBMIT,)).values()
                      for g in grades}
            return [SubmissionGrade(submission.id, student_row.sid, course_lab.lab_id, submission.created_at,
                                    grades.get(submission.id)) for submission, student_row, course_lab in found]

    def runs(self, course: str, limit: int = 20) -> list[dict[str, object]]:
        """The latest grading runs of the course, newest first (the history)."""
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            found = session.scalars(select(GradeRun).where(GradeRun.course_id == course_row.id)
                                    .order_by(GradeRun.id.desc()).limit(limit))
            return [{"id": run.id, "kind": run.kind, "actor": run.actor, "lab": run.lab_filter,
                     "student": run.student_filter, "started_at": run.started_at.isoformat(),
                     "finished_at": run.finished_at.isoformat() if run.finished_at else None,
                     "results": len(run.results),
                     "not_checked": sum(1 for r in run.results if r.unchecked is not None)} for run in found]


def choose(grades: Sequence[StudentGrade], policy: str) -> BookEntry:
    """The grade ``policy`` picks out of one student's graded runs of one lab (oldest first).

    Only complete grades count (every check was checked): a run that could not check everything never replaces a
    grade. ``best``: the most points (the later one on a tie); ``latest``: the last; ``submission``: the last
    submission's grade (of the submissions whose grade is complete).
    """
    last = grades[-1]
    checks = tuple(r.check_id for r in last.results)
    complete = [g for g in grades if g.complete]
    if policy == "submission":
        complete = [g for g in complete if g.kind == SUBMIT]
    if not complete:
        incomplete = [g for g in grades if not g.complete and (policy != "submission" or g.kind == SUBMIT)]
        why = incomplete[-1].why_not_graded if incomplete else "no submission was graded"
        return BookEntry(last.student, last.lab, policy, None, f"not graded: {why}", checks)
    if policy == "best":
        chosen = max(reversed(complete), key=lambda g: g.points)  # reversed: the latest wins a tie
        how = f"best of {len(complete)} grades"
    else:
        chosen = complete[-1]
        how = "latest grade" if policy == "latest" else "latest submission"
    note = f"{policy}: {how}: {chosen.source} (run {chosen.run_id}, {chosen.graded_at:%Y-%m-%d %H:%M:%S} UTC)"
    if grades[-1] is not chosen and not grades[-1].complete:
        note += f"; the last run could not check everything ({grades[-1].why_not_graded})"
    return BookEntry(chosen.student, chosen.lab, policy, chosen, note, checks)


def submission_label(submission: Submission | None, kind: str = SUBMIT) -> str:
    """Where a submission grade came from, for `StudentGrade.source` (the submission may since be deleted)."""
    how = "submission" if kind == SUBMIT else "regrade from the frozen disks of submission"
    if submission is None:
        return f"{how} (since deleted)"
    return f"{how} {submission.id} of {submission.created_at:%Y-%m-%d %H:%M:%S} UTC"


def _result(row: GradeResult) -> CheckResult:
    return CheckResult(row.check_id, row.passed, row.points, row.max_points, row.feedback, row.evidence,
                       row.transport, row.duration, row.skipped_reason, row.unchecked)
