"""``labkit course``: a class of students on one or more labs."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import click

from labkit.cli.app import App, echo_json, json_option
from labkit.cli.progress import StatusLine
from labkit.errors import LabkitError, NotFoundError

pass_app = click.make_pass_decorator(App)
selection = [
    click.option("--student", help="Only this student (roster id)."),
    click.option("--machine", help="Only this lab machine (e.g. a)."),
    click.option("--lab", help="Only this lab (its id)."),
]


def select(function):  # type: ignore[no-untyped-def]
    for option in reversed(selection):
        function = option(function)
    return function


@click.group("course")
def command() -> None:
    """Courses: labs bound to a roster, provisioned and run as a class."""


@command.command("create")
@click.argument("name")
@click.option("--lab", "labs", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A lab folder (repeat for several labs).")
@click.option("--memory-budget", type=int, help="MB of host memory the class may use (default: 3/4 of the host).")
@click.option("--max-running", default=4, show_default=True, help="Machines one student may run at once.")
@click.option("--owner", help="The instructor (web user) who owns the course in the web app.")
@click.option("--no-owner", is_flag=True, help="No owner: a course run only from the command line (give it one later "
                                                 "with 'labkit course owner').")
@json_option
@pass_app
def create(app: App, name: str, labs: tuple[Path, ...], memory_budget: int | None, max_running: int,
           owner: str | None, no_owner: bool, as_json: bool) -> None:
    """Create course NAME with one or more labs, owned by instructor --owner (or explicitly --no-owner)."""
    from labkit.cli.user import accounts

    if owner and no_owner:
        raise click.UsageError("give --owner USER or --no-owner, not both")
    if not owner and not no_owner:
        # A course without an owner is visible to no instructor in the web app: say so rather than surprise.
        raise click.UsageError(f"say who owns course {name} in the web app: --owner USER (an instructor account, "
                               f"made with 'labkit user create USER --role instructor'), or --no-owner for a course "
                               f"run only from the command line")
    if owner:
        try:
            accounts(app).check_owner(owner)
        except NotFoundError as err:
            raise NotFoundError(f"{err}; make the instructor first: labkit user create {owner} --role instructor") \
                from err
    summary = app.courses.create(name, list(labs), memory_budget, max_running)
    if owner:
        accounts(app).set_course_owner(name, owner)
    if as_json:
        echo_json(summary | {"owner": owner})
    else:
        click.echo(f"created course {name} with labs {', '.join(lab['id'] for lab in summary['labs'])}"  # type: ignore
                   + (f", owned by {owner}" if owner else ", with no owner (only the command line manages it)"))


@command.command("show")
@click.argument("name")
@json_option
@pass_app
def show(app: App, name: str, as_json: bool) -> None:
    """Show a course: labs, students, budget."""
    summary = app.courses.show(name)
    if as_json:
        echo_json(summary)
        return
    click.echo(f"course:          {summary['name']}")
    click.echo(f"students:        {summary['students']} ({summary['archived_students']} archived)")
    click.echo(f"memory budget:   {summary['memory_budget_mb']} MB")
    click.echo(f"max running:     {summary['max_running_per_student']} machines a student")
    click.echo("labs:")
    for lab in summary["labs"]:  # type: ignore[attr-defined]
        click.echo(f"  {lab['id']:<16} version {lab['version']:<4} {lab['reset_policy']:<13} "
                   f"{'provisioned' if lab['provisioned'] else 'not provisioned':<16} {lab['path']}")


@command.command("rm")
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete every student machine with the students' work.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def rm(app: App, name: str, purge: bool, yes: bool) -> None:
    """Delete course NAME (refused while it has student machines, unless --purge)."""
    if purge and not yes:
        click.confirm(f"Delete course {name} and every student's machines and work?", abort=True)
    app.courses.remove(name, purge=purge)
    click.echo(f"removed course {name}")


@command.command("roster")
@click.argument("name")
@click.argument("csv_file", type=click.Path(path_type=Path))
@click.option("--purge", is_flag=True, help="Delete the machines (work) of students no longer on the roster.")
@json_option
@pass_app
def roster(app: App, name: str, csv_file: Path, purge: bool, as_json: bool) -> None:
    """Import a roster CSV (id,name,email): adds new students, archives missing ones (kept unless --purge)."""
    report = app.courses.import_roster(name, csv_file, purge=purge)
    if as_json:
        echo_json(dataclasses.asdict(report))
        return
    for what, sids in dataclasses.asdict(report).items():
        click.echo(f"{what}: {len(sids)}" + (f" ({', '.join(sids[:20])}{' ...' if len(sids) > 20 else ''})"
                                             if sids else ""))
    if report.held:
        from labkit.cli.user import accounts

        for held in accounts(app).held(name):
            click.echo(f"held {held.sid}: {held.reason}", err=True)


@command.command("owner")
@click.argument("name")
@click.argument("user")
@pass_app
def owner(app: App, name: str, user: str) -> None:
    """Make instructor USER the owner of course NAME in the web app."""
    from labkit.cli.user import accounts

    accounts(app).set_course_owner(name, user)
    click.echo(f"course {name} is owned by {user}")


@command.command("links")
@click.argument("name")
@click.option("--student", "students", multiple=True,
              help="Only this student; a new link even if they have a password (repeat for several).")
@click.option("--csv", "csv_file", type=click.Path(path_type=Path), help="Also write the links to this CSV file.")
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True,
              help="The web app's address as the students reach it.")
@json_option
@pass_app
def links(app: App, name: str, students: tuple[str, ...], csv_file: Path | None, base_url: str,
          as_json: bool) -> None:
    """One-time set-password links (valid 7 days) for the roster students who cannot log in yet."""
    from labkit.cli.user import show_links

    show_links(app, name, list(students) or None, csv_file, base_url, as_json)


@command.command("students")
@click.argument("name")
@json_option
@pass_app
def students(app: App, name: str, as_json: bool) -> None:
    """List the roster."""
    rows = app.courses.students(name)
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['id']:<20} {row['name']!s:<30} {row['email']!s:<30} {'archived' if row['archived'] else ''}")


@command.command("provision")
@click.argument("name")
@click.option("--upgrade", is_flag=True, help="Render seeds again for a changed lab (students' overlays are kept).")
@click.option("--workers", default=8, show_default=True, help="Parallel workers.")
@json_option
@pass_app
def provision(app: App, name: str, upgrade: bool, workers: int, as_json: bool) -> None:
    """Create every student's machines (idempotent: a second run only does what is missing)."""
    with StatusLine() as status:
        report = app.courses.provision(name, upgrade=upgrade, workers=workers, progress=status)
    echo_json(dataclasses.asdict(report)) if as_json else click.echo(
        f"provisioned {name}: {report.created} created, {report.upgraded} upgraded, {report.kept} already there")


def _size(count: object) -> str:
    if not isinstance(count, int):
        return "-"
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count} {unit}"
        count //= 1024
    return f"{count} GiB"


def _table(views: list[dict[str, object]]) -> None:
    """One line a student machine under a header; MACHINE is the name every `labkit vm` command takes."""
    header = ("STUDENT", "LAB", "LAB MACHINE", "MACHINE", "STATE", "UP", "OVERLAY", "FORWARDS (host:guest)")
    rows = [(str(v["student"]), str(v["lab"]), str(v["machine"]), str(v["name"]), str(v["state"]),
             f"{v['uptime']:.0f}s" if v.get("uptime") is not None else "-", _size(v.get("overlay_bytes")),
             " ".join(map(str, v["forwards"])))  # type: ignore[call-overload]
            for v in views]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


@command.command("start")
@click.argument("name")
@select
@pass_app
def start(app: App, name: str, student: str | None, machine: str | None, lab: str | None) -> None:
    """Start the class's machines (in depends_on order, the rest in parallel), within the memory budget. With
    --machine, the machines it depends on start too (first)."""
    with StatusLine() as status:
        rows = app.courses.start(name, student, machine, lab, progress=status)
    _table(rows)


@command.command("stop")
@click.argument("name")
@select
@pass_app
def stop(app: App, name: str, student: str | None, machine: str | None, lab: str | None) -> None:
    """Shut the class's machines down cleanly."""
    with StatusLine() as status:
        rows = app.courses.stop(name, student, machine, lab, progress=status)
    _table(rows)


@command.command("reset")
@click.argument("name")
@select
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--discard", is_flag=True, help="Do not keep the students' work as a submission first: it is lost.")
@pass_app
def reset(app: App, name: str, student: str | None, machine: str | None, lab: str | None, yes: bool,
          discard: bool) -> None:
    """Give stopped student machines fresh overlays. Each student's lab is first frozen and graded as a submission
    (machines never started are left out), unless --discard."""
    if not yes:
        who = f"student {student}" if student else "every student"
        kept = "Their changes are lost." if discard else "Their work is kept as a submission first."
        click.confirm(f"Reset the machines of {who} in {name}? {kept}", abort=True)
    with StatusLine() as status:
        rows = app.courses.reset(name, student, machine, lab, progress=status, discard=discard)
    _table(rows)


@command.command("policy")
@click.argument("name")
@click.argument("lab", required=False)
@click.argument("policy", required=False, type=click.Choice(["best", "latest", "submission"]))
@json_option
@pass_app
def policy(app: App, name: str, lab: str | None, policy: str | None, as_json: bool) -> None:
    """Show or set which grade the gradebook counts for LAB: best (the default), latest, or submission (the
    latest submission's grade). Only grades whose checks could all be checked count."""
    from labkit.services.grading import Grading

    grading = Grading(app.settings, app.db)
    if lab is not None and policy is not None:
        grading.set_policy(name, lab, policy)
    elif lab is not None:
        raise click.UsageError("give the policy too: labkit course policy COURSE LAB best|latest|submission")
    policies = grading.policies(name)
    if as_json:
        echo_json(policies)
        return
    for lab_id, chosen in policies.items():
        click.echo(f"{lab_id:<20} {chosen}")


@command.command("extend", context_settings={"ignore_unknown_options": True})  # "-5" reaches the check of MINUTES
@click.argument("name")
@click.argument("student")
@click.argument("lab")
@click.argument("minutes")
@json_option
@pass_app
def extend(app: App, name: str, student: str, lab: str, minutes: str, as_json: bool) -> None:
    """Give STUDENT MINUTES more on LAB of course NAME (added to any extra time they have; recorded in the audit
    log). It pushes back both their time allowance and the lab's close for them alone."""
    from labkit.services.extra_time import ExtraTime

    granted = ExtraTime(app.db).extend(name, student, lab, minutes)
    if as_json:
        echo_json(granted.as_dict())
        return
    ends = f"; their time now ends {granted.deadline:%Y-%m-%d %H:%M} UTC" if granted.deadline else ""
    click.echo(f"{student} has {granted.added} more minutes on {lab} ({granted.extra_minutes} extra in all){ends}")


@command.command("status")
@click.argument("name")
@select
@json_option
@pass_app
def status(app: App, name: str, student: str | None, machine: str | None, lab: str | None, as_json: bool) -> None:
    """Every student machine (or those selected): its labkit name, state, uptime, overlay size, forwards."""
    rows = app.read_status(lambda reader: reader.course_status(name, student, machine, lab),
                           lambda: app.courses.status(name, student, machine, lab))
    if as_json:
        echo_json(rows)
    elif not rows:
        click.echo(f"course {name} has no provisioned machines yet")
    else:
        _table(rows)


@command.group("session")
def session() -> None:
    """Teaching sessions: begin, and end (submits and resets each-session labs; stops every machine)."""


@session.command("begin")
@click.argument("name")
@json_option
@pass_app
def session_begin(app: App, name: str, as_json: bool) -> None:
    result = app.courses.session_begin(name)
    echo_json(result) if as_json else click.echo(f"session {result['session']} of {name} begun")


@session.command("end")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
@pass_app
def session_end(app: App, name: str, yes: bool, as_json: bool) -> None:
    """End the session: every student's machines of each-session labs are graded live and frozen as a submission,
    every machine stops, then the each-session labs are reset."""
    if not yes:
        plan = app.courses.session_plan(name)
        question = (f"End the session of {name}? {plan['running']} of {plan['machines']} machines are running and "
                    f"will stop; {plan['reset']} machines of each-session labs "
                    f"({', '.join(plan['reset_labs']) or 'none'}) will be graded, frozen as submissions and "  # type: ignore[arg-type]
                    "reset.")
        if not sys.stdin.isatty():
            raise LabkitError(f"{question.split('?')[0]} needs a confirmation, and there is no terminal to ask on: "
                              "add --yes")
        click.confirm(question, abort=True)
    with StatusLine() as progress:
        result = app.courses.session_end(name, progress=progress)
    if as_json:
        echo_json(result)
        return
    click.echo(f"session of {name} ended: {result['stopped']} machines stopped, "
               f"{len(result['submitted'])} student labs submitted, {result['reset']} machines reset"  # type: ignore[arg-type]
               + (f"; kept (persist): {', '.join(result['kept'])}" if result["kept"] else ""))  # type: ignore[arg-type]
    for line in result["not_reset"]:  # type: ignore[attr-defined]
        click.echo(f"  not reset (could not be submitted): {line}", err=True)


# ---- time and exams ------------------------------------------------------------------------------------------------
def _time_line(row: dict[str, object]) -> str:
    parts = [f"opens {row['opens_at'] or '-'}", f"closes {row['closes_at'] or '-'}",
             f"allowance {row['allowance_minutes'] or '-'} min", f"idle pause {row['idle_minutes'] or '-'} min",
             f"exam {'on' if row['exam'] else 'off'}"]
    if row["exam"]:
        parts.append(f"results released {row['results_released_at']}" if row["results_released_at"]
                     else "results held back")
    return f"{row['lab']:<20} " + ", ".join(parts)


@command.command("time")
@click.argument("name")
@click.argument("lab", required=False)
@click.option("--opens", metavar="ISO", help="When students may start (ISO 8601, e.g. 2026-12-08T09:00; without an "
                                             "offset: the server's local time); 'none' removes it.")
@click.option("--closes", metavar="ISO", help="When the lab closes: machines are stopped (exam: frozen and "
                                              "submitted); 'none' removes it.")
@click.option("--allowance", metavar="DURATION", help="Time each student has from their first start (90m, 1h30m); "
                                                      "'none' removes it.")
@click.option("--idle", metavar="DURATION", help="Pause machines without console input or SSH session for this "
                                                 "long (15m); 'none' removes it.")
@click.option("--clear", is_flag=True, help="Remove every time setting not given with this command.")
@json_option
@pass_app
def time_(app: App, name: str, lab: str | None, opens: str | None, closes: str | None, allowance: str | None,
          idle: str | None, clear: bool, as_json: bool) -> None:
    """Show or set LAB's time window, per-student allowance and idle pause (all labs shown without LAB)."""
    from labkit.services.timing import Timing, parse_minutes, parse_moment

    timing = Timing(app.settings, app.db)
    changes: dict[str, object] = {}
    for key, text, parse in (("opens", opens, parse_moment), ("closes", closes, parse_moment),
                             ("allowance", allowance, parse_minutes), ("idle", idle, parse_minutes)):
        if text is not None:
            changes[key] = None if text.strip().lower() == "none" else parse(text, f"--{key}")
    if (changes or clear) and lab is None:
        raise click.UsageError("name the lab to change: labkit course time COURSE LAB --closes ...")
    rows = [timing.set_time(name, lab, clear=clear, **changes)] if (changes or clear) and lab else \
        timing.show(name, lab)
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(_time_line(row))


@command.command("exam")
@click.argument("name")
@click.argument("lab")
@click.argument("mode", type=click.Choice(["on", "off"]))
@json_option
@pass_app
def exam(app: App, name: str, lab: str, mode: str, as_json: bool) -> None:
    """Turn LAB's exam mode on or off: no self-check or feedback until 'labkit course release', no outbound network
    or host reach from the next start, frozen and submitted at the deadline or the student's Submit."""
    from labkit.services.timing import Timing

    row = Timing(app.settings, app.db).set_exam(name, lab, mode == "on")
    echo_json(row) if as_json else click.echo(_time_line(row))


@command.command("release")
@click.argument("name")
@click.argument("lab")
@json_option
@pass_app
def release(app: App, name: str, lab: str, as_json: bool) -> None:
    """Release the results of exam LAB: students see their grades and feedback."""
    from labkit.services.timing import Timing

    row = Timing(app.settings, app.db).release(name, lab)
    echo_json(row) if as_json else click.echo(_time_line(row))


@command.command("exam-status")
@click.argument("name")
@click.argument("lab")
@json_option
@pass_app
def exam_status(app: App, name: str, lab: str, as_json: bool) -> None:
    """Who is in LAB (a machine running), their deadline and time left, and who has submitted."""
    from labkit.services.exams import Exams

    rows = Exams(app.settings, app.db).status(name, lab)
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'student':<16} {'in':<4} {'left':>8}  {'deadline':<26} {'closed':<10} submitted")
    for row in rows:
        left = row["remaining_seconds"]
        shown = "-" if left is None else f"{int(left) // 60}:{int(left) % 60:02d}"  # type: ignore[call-overload]
        click.echo(f"{row['student']:<16} {'yes' if row['in'] else 'no':<4} {shown:>8}  {row['deadline'] or '-':<26} "
                   f"{row['closed'] or '-':<10} {row['submitted_at'] or '-'}")


@command.command("sweep")
@json_option
@pass_app
def sweep(app: App, as_json: bool) -> None:
    """One round of the sweeper (labkit serve runs it every few seconds): warn students near their deadline, stop
    (exam: freeze and submit) at the deadline, pause idle machines."""
    from labkit.services.sweeper import Sweeper

    report = Sweeper(app.settings, app.db).sweep()
    if as_json:
        echo_json(report.to_json())
        return
    for what, items in report.to_json().items():
        for item in items:
            click.echo(f"{what:<10} {item}", err=what == "failed")
