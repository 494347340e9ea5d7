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

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.errors import BadNameError, NotFoundError
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.grade_choice import (
    DEFAULT_POLICY,
    GRADED_KINDS,
    LIVE,
    POLICIES,
    REGRADE,
    SELF_CHECK,
    SUBMISSION,
    SUBMIT,
    BookEntry,
    Gradebook,
    StudentGrade,
    SubmissionGrade,
    book_of,
    choose,
    gradebook_table,
    history_of,
    submission_label,
)
from labkit.services.lookup import course_by_name
from labkit.services.models import Course, CourseLab, GradeResult, GradeRun, Student, Submission
from labkit.services.roster import check_student_id


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
            history = self._history(session, course_row, kinds, _student_pk(course_row, student), include_hidden)
            # the student's view (no hidden checks) shows nothing of an exam lab until its results are released
            held = {cl.lab_id for cl in course_row.labs if cl.exam and cl.results_released_at is None}
            return [grades[-1] for (_, lab), grades in sorted(history.items())
                    if include_hidden or lab not in held]

    def history(self, course: str, student: str, lab: str, include_hidden: bool = True,
                kinds: Sequence[str] = GRADED_KINDS) -> list[StudentGrade]:
        """Every result of ``kinds`` the student has in ``lab``, oldest first (a step's self-check holds only that
        step's checks: the workspace shows each check's newest result)."""
        check_student_id(student)
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            history = self._history(session, course_row, kinds, _student_pk(course_row, student), include_hidden)
            return next((grades for (_sid, lab_id), grades in history.items() if lab_id == lab), [])

    def _history(self, session: Session, course: Course, kinds: Sequence[str], student_pk: int | None = None,
                 include_hidden: bool = True) -> dict[tuple[str, str], list[StudentGrade]]:
        """For every (student, lab): the results of every run of ``kinds`` that graded it, oldest first."""
        query = (select(GradeResult, GradeRun).join(GradeRun).where(GradeRun.course_id == course.id,
                                                                    GradeRun.kind.in_(kinds)))
        if student_pk is not None:
            query = query.where(GradeResult.student_id == student_pk)
        pairs = [(result, run) for result, run in session.execute(query.order_by(GradeRun.id, GradeResult.id))]

        def submissions_of(ids: set[int]) -> dict[int, Submission]:
            return {row.id: row for row in session.scalars(select(Submission).where(Submission.id.in_(ids)))}

        return history_of(pairs, {s.id: s.sid for s in course.students}, {cl.id: cl.lab_id for cl in course.labs},
                          submissions_of, include_hidden)

    def _book(self, session: Session, course: Course) -> dict[tuple[str, str], BookEntry]:
        """Every graded (student, lab) of the course: the grade its lab's policy chooses, or why there is none."""
        return book_of(self._history(session, course, GRADED_KINDS),
                       {cl.lab_id: cl.grade_policy or DEFAULT_POLICY for cl in course.labs})

    def gradebook(self, course: str, detail: bool = False) -> Gradebook:
        """Every student (archived ones too, marked) × lab: the grade the lab's policy chooses (empty: not graded),
        and a status column saying which grade it is, or why there is none; with ``detail`` one column per check."""
        with self.db.transaction() as session:
            course_row = course_by_name(session, course)
            return gradebook_table([(cl.lab_id, cl.grade_policy) for cl in course_row.labs],
                                   [(s.sid, s.name, s.email, s.archived_at is not None) for s in course_row.students],
                                   self._book(session, course_row), detail)

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


__all__ = ["DEFAULT_POLICY", "GRADED_KINDS", "LIVE", "POLICIES", "REGRADE", "SELF_CHECK", "SUBMISSION", "SUBMIT",
           "BookEntry", "Gradebook", "Grades", "StudentGrade", "SubmissionGrade", "choose", "submission_label"]


def _student_pk(course: Course, student: str) -> int:
    """The row id of ``student`` in ``course``; NotFoundError if the course has no such student."""
    one = next((s for s in course.students if s.sid == student), None)
    if one is None:
        raise NotFoundError(f"course {course.name} has no student {student!r}")
    return one.id
