"""Grades derived from stored grading rows, as plain functions: which grade counts (`choose`), a student's history,
the gradebook's table.

No database import: the grades service (`labkit.services.gradebook`) hands these its ORM rows, and ``labkit
gradebook`` on a SQLite database (`labkit.services.sqlite_status`) plain rows with the same names, so both print the
same gradebook.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from labkit.grading.result import CheckResult, total, unchecked_reasons

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


class ResultFacts(Protocol):
    """What the grades need of a stored check result (`GradeResult`, or a plain row with these names)."""

    id: int
    student_id: int
    course_lab_id: int
    submission_id: int | None
    check_id: str
    title: str
    hidden: bool
    passed: bool
    points: float
    max_points: float
    feedback: str
    evidence: str
    transport: str
    duration: float
    skipped_reason: str | None
    unchecked: str | None


class RunFacts(Protocol):
    """What the grades need of a grading run (`GradeRun`, or a plain row)."""

    id: int
    kind: str
    started_at: dt.datetime


class SubmissionFacts(Protocol):
    """What a grade's source names of a submission (`Submission`, or a plain row)."""

    id: int
    created_at: dt.datetime


def history_of(pairs: Iterable[tuple[ResultFacts, RunFacts]], sids: Mapping[int, str], labs: Mapping[int, str],
               submissions_of: Callable[[set[int]], Mapping[int, SubmissionFacts]],
               include_hidden: bool = True) -> dict[tuple[str, str], list[StudentGrade]]:
    """For every (student, lab): one grade per run, oldest first, from ``pairs`` of (result, run) ordered by run and
    result; ``submissions_of`` gives the submissions of the ids it is asked for."""
    runs: dict[tuple[int, int, int], tuple[RunFacts, list[ResultFacts]]] = {}
    for result, run in pairs:
        runs.setdefault((result.student_id, result.course_lab_id, run.id), (run, []))[1].append(result)
    submission_ids = {rows[0].submission_id for run, rows in runs.values() if rows[0].submission_id}
    submissions = submissions_of(submission_ids) if submission_ids else {}
    history: dict[tuple[str, str], list[StudentGrade]] = {}
    for (student_id, lab_id, _), (run, rows) in sorted(runs.items(), key=lambda kv: kv[0][2]):
        shown = [row for row in rows if include_hidden or not row.hidden]
        results = [result_of(row) for row in shown]
        points, max_points = total(results)
        submission_id = rows[0].submission_id
        source = "live" if run.kind == LIVE else "self-check" if run.kind == SELF_CHECK else \
            submission_label(submissions.get(submission_id) if submission_id else None, run.kind)
        history.setdefault((sids[student_id], labs[lab_id]), []).append(StudentGrade(
            sids[student_id], labs[lab_id], points, max_points, results, run.started_at, source,
            {row.check_id: row.title for row in shown}, frozenset(row.check_id for row in shown if row.hidden),
            run.kind, run.id, submission_id))
    return history


def book_of(history: Mapping[tuple[str, str], Sequence[StudentGrade]],
            policies: Mapping[str, str]) -> dict[tuple[str, str], BookEntry]:
    """Every graded (student, lab): the grade its lab's policy (lab id -> policy) chooses, or why there is none."""
    return {key: choose(grades, policies.get(key[1], DEFAULT_POLICY)) for key, grades in history.items()}


def gradebook_table(labs: Sequence[tuple[str, str | None]], students: Sequence[tuple[str, str, str, bool]],
                    book: Mapping[tuple[str, str], BookEntry], detail: bool = False) -> Gradebook:
    """The gradebook of ``labs`` (lab id, grade policy; in the course's order) × ``students`` (id, name, email,
    archived; in roster-id order) from ``book``; with ``detail`` one column per check."""
    check_columns: dict[str, list[str]] = {}
    for lab, _ in labs:
        ids: dict[str, None] = {}
        for (_, lab_id), entry in book.items():
            if lab_id == lab:
                ids.update(dict.fromkeys(entry.checks))
                ids.update(dict.fromkeys(r.check_id for r in entry.grade.results) if entry.grade else {})
        check_columns[lab] = list(ids)
    columns = ["student", "name", "email", "archived"]
    for lab, _ in labs:
        columns += [lab, f"{lab} max", f"{lab} status"]
        if detail:
            columns += [f"{lab}:{check}" for check in check_columns[lab]]
    columns += ["total", "max"]
    rows: list[list[object]] = []
    for sid, name, email, archived in students:
        row: list[object] = [sid, name, email, "yes" if archived else ""]
        points = max_points = 0.0
        for lab, grade_policy in labs:
            entry = book.get((sid, lab))
            g = entry.grade if entry else None
            policy = grade_policy or DEFAULT_POLICY
            row += [g.points if g else None, g.max_points if g else None,
                    entry.note if entry else f"{policy}: never graded"]
            if g:
                points, max_points = points + g.points, max_points + g.max_points
            if detail:
                by_check = {r.check_id: r.points for r in g.results} if g else {}
                row += [by_check.get(check) for check in check_columns[lab]]
        row += [points, max_points]
        rows.append(row)
    return Gradebook(columns, rows)


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


def submission_label(submission: SubmissionFacts | None, kind: str = SUBMIT) -> str:
    """Where a submission grade came from, for `StudentGrade.source` (the submission may since be deleted)."""
    how = "submission" if kind == SUBMIT else "regrade from the frozen disks of submission"
    if submission is None:
        return f"{how} (since deleted)"
    return f"{how} {submission.id} of {submission.created_at:%Y-%m-%d %H:%M:%S} UTC"


def result_of(row: ResultFacts) -> CheckResult:
    return CheckResult(row.check_id, row.passed, row.points, row.max_points, row.feedback, row.evidence,
                       row.transport, row.duration, row.skipped_reason, row.unchecked)
