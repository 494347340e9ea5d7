"""``labkit grade``, ``gradebook`` (alias ``grades``), ``check``, ``submit``, ``submissions``: grading a class and
what comes out of it.

``labkit grade`` exits 3 (`NOT_CHECKED_EXIT`) when some checks could not be checked (a machine stopped, never
started or unreachable): those students' earlier grades stand, and one line on stderr says how many.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from labkit.cli.app import App, echo_json, json_option
from labkit.cli.progress import StatusLine
from labkit.grading.report import write_csv

pass_app = click.make_pass_decorator(App)
#: exit code of `labkit grade` when some checks could not be checked (nothing else went wrong)
NOT_CHECKED_EXIT = 3
csv_option = click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
                          help="Also write the table to this CSV file (UTF-8, opens in a spreadsheet).")


def _grading(app: App):  # type: ignore[no-untyped-def]
    from labkit.services.grading import Grading

    return Grading(app.settings, app.db)


def _submissions(app: App):  # type: ignore[no-untyped-def]
    from labkit.services.submissions import Submissions

    return Submissions(app.settings, app.db)


def _grade_json(grade) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {"student": grade.student, "lab": grade.lab, "points": grade.points, "max_points": grade.max_points,
            "graded_at": grade.graded_at.isoformat(), "source": grade.source, "complete": grade.complete,
            "not_checked": grade.not_checked, "not_graded_because": grade.why_not_graded or None,
            "checks": [{**dataclasses.asdict(r), "title": grade.titles.get(r.check_id, r.check_id),
                        "hidden": r.check_id in grade.hidden} for r in grade.results]}


@click.command("grade")
@click.argument("course")
@click.option("--lab", help="Only this lab (its id).")
@click.option("--student", help="Only this student (roster id).")
@click.option("--submissions", is_flag=True, help="Report each submission's grade, stored when it was submitted "
              "(nothing is run).")
@click.option("--from-disk", is_flag=True, help="Grade the latest submissions again from their frozen disks (booted "
              "as throwaway copies): checks that need a running machine may differ from the submission's grade.")
@click.option("--workers", default=8, show_default=True, help="Students graded at once.")
@csv_option
@click.option("--verbose", "-v", is_flag=True, help="Show every check, not only the totals.")
@json_option
@pass_app
def grade(app: App, course: str, lab: str | None, student: str | None, submissions: bool, from_disk: bool,
          workers: int, csv_path: Path | None, verbose: bool, as_json: bool) -> None:
    """Grade COURSE: run every check (hidden ones too) for every student and store the results as a new run.

    Checks that could not be checked (machine stopped, never started, unreachable) are "not checked", not failed;
    such a student's earlier grade stands, and the command exits 3.
    """
    if submissions and not from_disk:
        _stored_submission_grades(app, course, lab, student, csv_path, verbose, as_json)
        return
    with StatusLine() as status:
        report = _grading(app).grade(course, lab, student, from_disk, workers, progress=status)
    if csv_path is not None:
        write_csv(csv_path, ["run", "student", "lab", "check", "title", "hidden", "passed", "points", "max_points",
                             "not_checked", "transport", "seconds", "feedback"],
                  [[report.run_id, g.student, g.lab, r.check_id, g.titles.get(r.check_id, ""),
                    r.check_id in g.hidden, r.passed, r.points, r.max_points, r.unchecked or "", r.transport,
                    round(r.duration, 2), r.feedback] for g in report.grades for r in g.results])
    if as_json:
        echo_json({"run": report.run_id, "kind": report.kind, "started_at": report.started_at.isoformat(),
                   "finished_at": report.finished_at.isoformat(), "missing": report.missing,
                   "not_checked": report.not_checked, "needs_running": report.needs_running,
                   "grades": [_grade_json(g) for g in report.grades]})
    else:
        seconds = (report.finished_at - report.started_at).total_seconds()
        click.echo(f"run {report.run_id}: graded {len(report.grades)} student labs in {seconds:.1f} s")
        for g in report.grades:
            _print_total(g)
            if verbose:
                _print_checks(g, show_evidence=False)
        for line in report.missing:
            click.echo(f"  not graded: {line}")
        if report.needs_running:
            click.echo(f"  note: {len(report.needs_running)} checks need a running machine (command, port, http): "
                       f"{', '.join(report.needs_running)}. From the frozen disks they see a fresh boot, without "
                       "the addresses, routes and services the student set up by hand, so they may differ from "
                       "each submission's grade ('labkit grade --submissions').")
    if report.not_checked:
        students = sorted({f"{g.student}/{g.lab}" for g in report.grades if g.not_checked})
        click.echo(f"labkit: {report.not_checked} checks could not be checked ({len(students)} student labs: "
                   f"{', '.join(students[:10])}{' ...' if len(students) > 10 else ''}); their earlier grades "
                   "stand", err=True)
        sys.exit(NOT_CHECKED_EXIT)


def _print_total(g) -> None:  # type: ignore[no-untyped-def]
    if g.complete:
        click.echo(f"  {g.student:<20} {g.lab:<16} {g.points:>6g} / {g.max_points:<6g} "
                   f"{g.passed}/{len(g.results)} checks passed  ({g.source})")
    else:
        click.echo(f"  {g.student:<20} {g.lab:<16} {'not graded':>15}  {g.why_not_graded}  ({g.source})")


def _stored_submission_grades(app: App, course: str, lab: str | None, student: str | None, csv_path: Path | None,
                              verbose: bool, as_json: bool) -> None:
    """`labkit grade --submissions`: each submission with the grade stored when it was made."""
    found = _grading(app).submission_grades(course, lab, student)
    if csv_path is not None:
        write_csv(csv_path, ["submission", "student", "lab", "submitted_at", "points", "max_points", "status"],
                  [[s.id, s.student, s.lab, f"{s.created_at:%Y-%m-%d %H:%M:%S}",
                    s.grade.points if s.grade and s.grade.complete else None,
                    s.grade.max_points if s.grade else None,
                    ("graded" if s.grade.complete else s.grade.why_not_graded) if s.grade else "no grade stored"]
                   for s in found])
    if as_json:
        echo_json([{"submission": s.id, "student": s.student, "lab": s.lab, "created_at": s.created_at.isoformat(),
                    "grade": _grade_json(s.grade) if s.grade else None} for s in found])
        return
    if not found:
        click.echo(f"  no submissions in {course}" + (f" lab {lab}" if lab else "")
                   + (f" from {student}" if student else ""))
    for s in found:
        if s.grade is None:
            click.echo(f"  submission {s.id:<5} {s.created_at:%Y-%m-%d %H:%M:%S} UTC  {s.student:<20} {s.lab:<16} "
                       "no grade stored (made before submissions were graded, or the lab has no checks)")
            continue
        click.echo(f"  submission {s.id:<5} {s.created_at:%Y-%m-%d %H:%M:%S} UTC", nl=False)
        _print_total(s.grade)
        if verbose:
            _print_checks(s.grade, show_evidence=False)


def _print_checks(grade, show_evidence: bool) -> None:  # type: ignore[no-untyped-def]
    for r in grade.results:
        mark = "----" if r.unchecked else "PASS" if r.passed else ("part" if r.points > 0 else "FAIL")
        hidden = " (hidden)" if r.check_id in grade.hidden else ""
        click.echo(f"      {mark}  {r.points:g}/{r.max_points:g}  {grade.titles.get(r.check_id, r.check_id)}{hidden}")
        click.echo(f"            {r.feedback}")
        if show_evidence and r.evidence:
            click.echo("            " + r.evidence.replace("\n", "\n            "))


@click.command("gradebook")
@click.argument("course")
@csv_option
@click.option("--detail", is_flag=True, help="One column per check as well as the lab totals.")
@click.option("--runs", "show_runs", is_flag=True, help="List the grading runs (the history) instead.")
@json_option
@pass_app
def gradebook(app: App, course: str, csv_path: Path | None, detail: bool, show_runs: bool, as_json: bool) -> None:
    """The gradebook of COURSE: each student's grade in each lab, chosen by the lab's policy (best, latest or
    submission; 'labkit course policy'), and a status column saying which grade it is or why there is none."""
    if show_runs:
        runs = app.read_status(lambda reader: (reader.grade_runs(course), []), lambda: _grading(app).runs(course))
        if as_json:
            echo_json(runs)
            return
        for run in runs:
            click.echo(f"  run {run['id']:<5} {run['kind']:<11} {run['started_at']}  by {run['actor']:<12} "
                       f"{run['results']} results" + (f" ({run['not_checked']} not checked)"
                                                      if run["not_checked"] else "")
                       + (f"  lab {run['lab']}" if run["lab"] else "")
                       + (f"  student {run['student']}" if run["student"] else ""))
        return
    book = app.read_status(lambda reader: (reader.gradebook(course, detail), []),
                           lambda: _grading(app).gradebook(course, detail))
    if csv_path is not None:
        write_csv(csv_path, book.columns, book.rows)
        click.echo(f"wrote {len(book.rows)} students to {csv_path}", err=True)
    if as_json:
        echo_json([dict(zip(book.columns, row, strict=True)) for row in book.rows])
        return
    if csv_path is None:
        widths = [max(len(str(c)), *(len(_show(r[i])) for r in book.rows)) if book.rows else len(c)
                  for i, c in enumerate(book.columns)]
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(book.columns, widths, strict=True)).rstrip())
        for row in book.rows:
            click.echo("  ".join(_show(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _show(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


@click.command("check")
@click.argument("course")
@click.argument("student")
@click.option("--lab", help="Only this lab (its id).")
@json_option
@pass_app
def check(app: App, course: str, student: str, lab: str | None, as_json: bool) -> None:
    """Self-check: run the checks a student may see (not the hidden ones) on STUDENT's machines, with feedback."""
    report = _grading(app).self_check(course, student, lab)
    if as_json:
        echo_json({"run": report.run_id, "grades": [_grade_json(g) for g in report.grades]})
        return
    for g in report.grades:
        click.echo(f"{g.lab}: {g.points:g} of {g.max_points:g} points from the checks you can see")
        _print_checks(g, show_evidence=False)


@click.command("submit")
@click.argument("course")
@click.argument("student")
@click.option("--lab", help="Only this lab (its id); default: every lab of the course.")
@json_option
@pass_app
def submit(app: App, course: str, student: str, lab: str | None, as_json: bool) -> None:
    """Grade STUDENT's machines as they are and freeze them as a submission with that grade (running machines are
    graded live, then paused for the copy, then go on)."""
    views = _submissions(app).submit(course, student, lab)
    if as_json:
        echo_json([dataclasses.asdict(v) for v in views])
        return
    for v in views:
        graded = ("" if v.points is None else f"; not graded: {v.graded_note}" if v.not_checked
                  else f"; graded {v.points:g} / {v.max_points:g}")
        click.echo(f"submitted {v.lab} for {v.student} at {v.created_at:%Y-%m-%d %H:%M:%S} UTC "
                   f"(submission {v.id}: {', '.join(v.machines)}{graded})")


@click.command("submissions")
@click.argument("course")
@click.option("--student", help="Only this student (roster id).")
@json_option
@pass_app
def submissions(app: App, course: str, student: str | None, as_json: bool) -> None:
    """List the submissions of COURSE."""
    views = _submissions(app).list(course, student)
    if as_json:
        echo_json([dataclasses.asdict(v) for v in views])
        return
    for v in views:
        click.echo(f"  {v.id:<5} {v.student:<20} {v.lab:<16} {v.created_at:%Y-%m-%d %H:%M:%S} UTC  "
                   f"{', '.join(v.machines)}  {v.bytes // 1024} KiB")


grades = click.Command("grades", callback=gradebook.callback, params=gradebook.params, hidden=True,
                       help="The old name of 'labkit gradebook' (kept as an alias).")

commands = [grade, gradebook, grades, check, submit, submissions]
