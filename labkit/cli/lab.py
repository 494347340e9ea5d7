"""``labkit lab``: validate a lab folder, show what it holds, and render it for one student (thin verbs over
labkit.labs)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import click

from labkit.atomic import write_atomic
from labkit.cli.app import App, echo_json, json_option
from labkit.errors import ConflictError, StateError
from labkit.names import check_name

if TYPE_CHECKING:
    # The verbs import labkit.labs (and so Jinja2) themselves: ``labkit --help`` stays light (labkit/cli/__init__.py).
    from labkit.labs import Lab, LabProblem

pass_app = click.make_pass_decorator(App)

#: values in a preview differ from a real course's unless the instructor passes that course's secret
PREVIEW_COURSE = "preview"
PREVIEW_SECRET = "labkit-preview-secret-not-for-courses"

lab_argument = click.argument("path", type=click.Path(exists=True, path_type=Path))


@click.group("lab")
def command() -> None:
    """Check, inspect and preview lab folders (labs/<lab>/lab.toml), and run one for yourself (lab up)."""


def _known_images(app: App) -> dict[str, str] | None:
    """Names and ``name:version`` refs of the built images, each with its backend; None when none is built (the
    image check is skipped, and machines that name no backend get labkit's default)."""
    from labkit.images.store import ImageStore

    return ImageStore(app.settings).known_refs() or None


def _problem_json(problem: LabProblem) -> dict[str, object]:
    return {"file": problem.file, "line": problem.line, "key": problem.key, "message": problem.message,
            "text": str(problem)}


@command.command("validate")
@lab_argument
@json_option
@pass_app
def validate(app: App, path: Path, as_json: bool) -> None:
    """Report every problem of the lab at PATH (a folder or its lab.toml) as FILE:LINE: message; exit 1 if any.
    Warnings (a visible check that depends on a hidden one) go to stderr and do not change the exit code."""
    from labkit.labs.loader import lab_warnings, validate_lab

    known = _known_images(app)
    problems = validate_lab(path, known_images=known)
    warnings = [] if problems else lab_warnings(path, known_images=known)
    if as_json:
        echo_json({"path": str(path), "ok": not problems, "images_checked": known is not None,
                   "problems": [_problem_json(p) for p in problems],
                   "warnings": [_problem_json(w) for w in warnings]})
    else:
        if known is None:
            click.echo("note: no images are built, so image names were not checked", err=True)
        for problem in problems:
            click.echo(str(problem))
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        if problems:
            click.echo(f"{len(problems)} problem(s) in {path}", err=True)
        else:
            click.echo(f"ok: {path}")
    if problems:
        sys.exit(1)


def _summary(lab: Lab) -> dict[str, object]:
    """What an instructor wants to see of a lab, as plain values (templates shown as written)."""
    return {
        "id": lab.id,
        "title": lab.title,
        "version": lab.version,
        "reset_policy": lab.reset_policy,
        "instructions": lab.instructions,
        "machines": {
            name: {"image": str(m.image), "memory": m.memory, "forwards": list(m.forwards),
                   "networks": dict(m.networks), "depends_on": list(m.depends_on), "startup": list(m.startup),
                   "files": m.files}
            for name, m in lab.machines.items()
        },
        "start_order": lab.start_order(),
        "networks": {name: {"subnet": n.subnet} for name, n in lab.networks.items()},
        "params": {name: {"kind": p.kind, **dict(p.options)} for name, p in lab.params.items()},
        "checks": [
            {"id": c.id, "kind": c.kind, "title": c.title, "machine": c.machine, "points": c.points,
             "hidden": c.hidden, "baseline_pass": c.baseline_pass, "depends_on": list(c.depends_on), "step": c.step}
            for c in lab.checks
        ],
        "steps": [{"id": s.id, "title": s.title, "checks": [c.id for c in lab.step_checks(s.id)]} for s in lab.steps],
        "points": {"total": sum(c.points for c in lab.checks),
                   "visible": sum(c.points for c in lab.checks if not c.hidden)},
    }


def _words(values: object) -> str:
    return ", ".join(str(v) for v in values) or "-"  # type: ignore[attr-defined]


@command.command("show")
@lab_argument
@json_option
@pass_app
def show(app: App, path: Path, as_json: bool) -> None:
    """Show the machines, networks, parameters and checks of the lab at PATH."""
    from labkit.labs import load_lab

    summary = _summary(load_lab(path))
    if as_json:
        echo_json(summary)
        return
    click.echo(f"{summary['id']} (version {summary['version']}): {summary['title']}")
    click.echo(f"reset policy: {summary['reset_policy']}   instructions: {summary['instructions']}")
    click.echo("machines:")
    for name, m in summary["machines"].items():  # type: ignore[attr-defined]
        nets = _words(f"{net}={address}" for net, address in m["networks"].items())
        click.echo(f"  {name}: image {m['image']}, {m['memory']} MB, forwards {_words(m['forwards'])}, "
                   f"networks {nets}, depends on {_words(m['depends_on'])}")
    click.echo(f"start order: {' then '.join('[' + ', '.join(w) + ']' for w in summary['start_order'])}")  # type: ignore
    if summary["networks"]:
        click.echo("networks:")
        for name, n in summary["networks"].items():  # type: ignore[attr-defined]
            click.echo(f"  {name}: subnet {n['subnet']}")
    if summary["params"]:
        click.echo("params:")
        for name, p in summary["params"].items():  # type: ignore[attr-defined]
            options = " ".join(f"{k}={v!r}" for k, v in p.items() if k != "kind")
            click.echo(f"  {name}: {p['kind']} {options}".rstrip())
    if summary["steps"]:
        click.echo("steps:")
        for number, step in enumerate(summary["steps"], start=1):  # type: ignore[arg-type]
            click.echo(f"  {number}. {step['id']}: {step['title']} (checks: {_words(step['checks'])})")
    points = summary["points"]
    click.echo(f"checks ({points['total']:g} points, {points['visible']:g} visible to students):")  # type: ignore
    for c in summary["checks"]:  # type: ignore[attr-defined]
        flags = [flag for flag in ("hidden", "baseline_pass") if c[flag]]
        where = f" on {c['machine']}" if c["machine"] else ""
        click.echo(f"  {c['id']:<20} {c['kind']:<8} {c['points']:>4g} pt{where}"
                   f"{'  [' + ', '.join(flags) + ']' if flags else ''}  {c['title']}")


def _write(dest: Path, text: str, mode: int = 0o644) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, text, mode)


def render_preview(lab: Lab, course: str, student: str, secret: str,
                   outdir: Path) -> tuple[list[str], dict[str, object]]:
    """Write everything one student gets into the new folder ``outdir``; return the files written and the values."""
    from labkit.labs.render import (
        render_check,
        render_forwards,
        render_instructions,
        render_machine_files,
        render_startup,
    )
    from labkit.labs.student import SOLUTION_FOLDER, for_student, render_solutions

    mine = for_student(lab, course, student, secret)
    params, context = mine.params, mine.context
    written = ["instructions.md"]
    _write(outdir / "instructions.md", render_instructions(lab, context))
    forwards: dict[str, list[int]] = {}
    for name, machine in lab.machines.items():
        base = PurePosixPath("machines") / name
        written += [str(base / "files" / t) for t in render_machine_files(lab, name, context, outdir / base / "files")]
        for script, text in render_startup(lab, name, context):
            _write(outdir / base / "startup" / script, text, 0o755)
            written.append(str(base / "startup" / script))
        forwards[name] = list(render_forwards(machine, context))
    for script, text, executable in render_solutions(lab, context):
        _write(outdir / SOLUTION_FOLDER / script, text, 0o755 if executable else 0o644)
        written.append(f"{SOLUTION_FOLDER}/{script}")
    values: dict[str, object] = {
        "lab": lab.id, "course": course, "student": student, "params": params,
        "networks": context.get("networks", {}), "addresses": context.get("addresses", {}), "forwards": forwards,
    }
    _write(outdir / "values.json", json.dumps(values, indent=2, sort_keys=True) + "\n")
    checks = [
        {"id": c.id, "kind": c.kind, "title": c.title, "machine": c.machine, "points": c.points, "hidden": c.hidden,
         "baseline_pass": c.baseline_pass, "depends_on": list(c.depends_on), **render_check(c, context, i)}
        for i, c in enumerate(lab.checks)
    ]
    _write(outdir / "checks.json", json.dumps(checks, indent=2, sort_keys=True) + "\n")
    written += ["values.json", "checks.json"]
    return written, values


@command.command("render")
@lab_argument
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--student", required=True, help="The student id whose values to use.")
@click.option("--course", default=PREVIEW_COURSE, show_default=True, help="The course id the values derive from.")
@click.option("--secret", default=None, envvar="LABKIT_COURSE_SECRET",
              help="The course's secret (default: a fixed preview secret, so values differ from any real course).")
@json_option
@pass_app
def render(app: App, path: Path, outdir: Path, student: str, course: str, secret: str | None, as_json: bool) -> None:
    """Render the lab at PATH for one student into OUTDIR (absent or empty): instructions, every machine's files and
    startup scripts, the solution, the values (values.json) and the checks with their expected values (checks.json)."""
    from labkit.labs import load_lab

    check_name(student, "student id")
    check_name(course, "course id")
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise ConflictError(f"output folder {outdir} is not empty; give a new or empty folder")
    lab = load_lab(path)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    # Render into a sibling folder and move it into place, so a template error leaves no half-written preview.
    staging = Path(tempfile.mkdtemp(prefix=".lab-render-", dir=outdir.parent))
    try:
        written, values = render_preview(lab, course, student, secret or PREVIEW_SECRET, staging)
        staging.chmod(0o755)
        if outdir.exists():
            outdir.rmdir()
        staging.rename(outdir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    if as_json:
        echo_json({"outdir": str(outdir), "files": written, "preview_secret": secret is None, **values})
        return
    if secret is None:
        click.echo("note: values come from a preview secret; pass --secret to see a course's real values", err=True)
    click.echo(f"rendered {lab.id} for {student} (course {course}) into {outdir}:")
    for name in written:
        click.echo(f"  {name}")


@command.command("test")
@lab_argument
@click.option("--seeds", default=3, show_default=True, help="Throwaway students, each with their own values.")
@json_option
@pass_app
def test(app: App, path: Path, seeds: int, as_json: bool) -> None:
    """Test the lab at PATH before class: for each seed, untouched machines must fail every check (except
    baseline_pass ones), and after the solution/ scripts ran they must get full marks. Exits 1 on any failure."""
    from labkit.cli.progress import StatusLine
    from labkit.services.labtest import LabTester

    with StatusLine() as status:
        report = LabTester(app.settings, app.db).test(path, seeds, progress=status)
    if as_json:
        echo_json({"lab": report.lab, "ok": report.ok, "error": report.error,
                   "seeds": [{**dataclasses.asdict(s), "ok": s.ok} for s in report.seeds]})
    else:
        _print_lab_test(report)
    if not report.ok:
        sys.exit(1)


def _print_lab_test(report) -> None:  # type: ignore[no-untyped-def]
    if report.error:
        click.echo(f"lab {report.lab}: the test could not run: {report.error}")
        return
    click.echo(f"{'seed':<5} {'student':<10} {'untouched':<10} {'solution':<9} {'after':<6} points")
    for s in report.seeds:
        def word(problems: list[str]) -> str:
            return "ok" if not problems else "FAIL"

        click.echo(f"{s.seed:<5} {s.student:<10} {word(s.baseline):<10} {word(s.solution):<9} {word(s.after):<6} "
                   f"{s.points:g}/{s.max_points:g}")
    for s in report.seeds:
        for problem in s.baseline + s.solution + s.after:
            click.echo(f"  {s.student}: {problem}")
        if not s.ok:
            click.echo(f"  {s.student}'s values: {json.dumps(s.params, sort_keys=True)}")
    click.echo(f"lab {report.lab}: {'PASSED' if report.ok else 'FAILED'}")


# ---- lab up: a lab from its folder for one person (labkit.services.labup) ------------------------------------------
folder_argument = click.argument("path", type=click.Path(path_type=Path))


def _lab_up(app: App):  # type: ignore[no-untyped-def]
    from labkit.services.labup import LabUp

    return LabUp(app.settings, app.db)


def _print_up(up, verb: str) -> None:  # type: ignore[no-untyped-def]
    running = sum(m.state == "running" for m in up.machines)
    click.echo(f"lab {up.lab} {verb}: {running} of {len(up.machines)} machines running (seed {up.seed}, "
               f"course {up.course}, from {up.path})")
    for m in up.machines:
        click.echo(f"  {m.machine}: {m.state}")
        if m.state == "running":
            click.echo(f"    console: {m.console}")
            if m.ssh:
                click.echo(f"    ssh:     {m.ssh}")


def _up_json(up) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {"lab": up.lab, "course": up.course, "path": up.path, "seed": up.seed,
            "machines": [{**dataclasses.asdict(m), "console": m.console} for m in up.machines]}


@command.command("up")
@folder_argument
@click.option("--seed", type=click.IntRange(0), default=None,
              help="Whose values the lab's parameters get (default: the seed it is up with, else 1).")
@click.option("--console", "console", type=click.Choice(["tmux"]), default=None,
              help="Open one tmux window per machine running 'labkit vm console NAME'.")
@json_option
@pass_app
def up(app: App, path: Path, seed: int | None, console: str | None, as_json: bool) -> None:
    """Boot the machines of the lab at PATH for you (in depends_on order, in parallel where allowed) and show how to
    reach each one's console and SSH. Again when it is up: nothing changes, the same is shown."""
    from labkit.cli.progress import StatusLine

    try:
        with StatusLine() as status:
            result = _lab_up(app).up(path, seed, progress=status)
    except KeyboardInterrupt:
        raise StateError(f"interrupted; the machines that started are recorded: 'labkit lab ps' lists them, "
                            f"'labkit lab down {path}' stops them") from None
    if as_json:
        echo_json(_up_json(result))
    else:
        _print_up(result, "is up")
    if console == "tmux":
        from labkit.cli.tmux import open_consoles

        click.echo(open_consoles(result.lab, [(m.machine, m.name) for m in result.machines if m.state == "running"]))


@command.command("down")
@folder_argument
@pass_app
def down(app: App, path: Path) -> None:
    """Stop the machines of the lab at PATH cleanly (their disks stay: 'lab up' boots them again)."""
    _print_up(_lab_up(app).down(path), "is down")


@command.command("crash")
@folder_argument
@pass_app
def crash(app: App, path: Path) -> None:
    """Kill the machines of the lab at PATH at once, without a clean shutdown."""
    _print_up(_lab_up(app).crash(path), "crashed")


@command.command("clean")
@folder_argument
@pass_app
def clean(app: App, path: Path) -> None:
    """Delete everything 'lab up' made for the lab at PATH (its machines, their disks and grades): the next
    'lab up' starts from fresh disks. The machines must be stopped first."""
    course = _lab_up(app).clean(path)
    click.echo(f"removed course {course} with its machines" if course else f"nothing to clean for {path}")


@command.command("ps")
@json_option
@pass_app
def ps(app: App, as_json: bool) -> None:
    """List the labs you brought up with 'lab up' and their machines' states."""
    labs = _lab_up(app).ps()
    if as_json:
        echo_json([_up_json(up) for up in labs])
        return
    if not labs:
        click.echo("no labs are up: labkit lab up PATH")
    for lab in labs:
        click.echo(f"{lab.lab}  (seed {lab.seed}, {lab.path})")
        for m in lab.machines:
            click.echo(f"  {m.machine:<16} {m.state:<9} {m.name}")


@command.command("check")
@folder_argument
@json_option
@pass_app
def check(app: App, path: Path, as_json: bool) -> None:
    """Run the checks of the lab at PATH (hidden ones too) on its running machines: score and feedback."""
    from labkit.cli.grade import _grade_json, _print_checks

    report = _lab_up(app).check(path)
    if as_json:
        echo_json([_grade_json(g) for g in report.grades])
        return
    for g in report.grades:
        click.echo(f"{g.lab}: {g.points:g} of {g.max_points:g} points")
        _print_checks(g, show_evidence=False)
