"""``labkit lab``: validate a lab folder, show what it holds, and render it for one student (thin verbs over
labkit.labs)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path, PurePosixPath

import click

from labkit.atomic import write_atomic
from labkit.cli.app import App, echo_json, json_option
from labkit.errors import ConflictError, LabFormatError
from labkit.labs import Lab, LabProblem, load_lab, student_params, validate_lab
from labkit.labs.render import (
    TEMPLATE_SUFFIX,
    lab_path,
    render_check,
    render_forwards,
    render_instructions,
    render_machine_files,
    render_startup,
    render_text,
    template_context,
)
from labkit.labs.topology import plan_topology
from labkit.names import check_name

pass_app = click.make_pass_decorator(App)

#: where a lab keeps the scripts that solve it (one per machine, ``.j2`` ones rendered per student)
SOLUTION_FOLDER = "solution"
#: values in a preview differ from a real course's unless the instructor passes that course's secret
PREVIEW_COURSE = "preview"
PREVIEW_SECRET = "labkit-preview-secret-not-for-courses"

lab_argument = click.argument("path", type=click.Path(exists=True, path_type=Path))


@click.group("lab")
def command() -> None:
    """Check, inspect and preview lab folders (labs/<lab>/lab.toml)."""


def _known_images(app: App) -> set[str] | None:
    """Names and ``name:version`` refs of the built images; None when none is built (the image check is skipped)."""
    from labkit.images.store import ImageStore

    records = ImageStore(app.settings).list()
    if not records:
        return None
    return {record.name for record in records} | {f"{record.name}:{record.version}" for record in records}


def _problem_json(problem: LabProblem) -> dict[str, object]:
    return {"file": problem.file, "line": problem.line, "key": problem.key, "message": problem.message,
            "text": str(problem)}


@command.command("validate")
@lab_argument
@json_option
@pass_app
def validate(app: App, path: Path, as_json: bool) -> None:
    """Report every problem of the lab at PATH (a folder or its lab.toml) as FILE:LINE: message; exit 1 if any."""
    known = _known_images(app)
    problems = validate_lab(path, known_images=known)
    if as_json:
        echo_json({"path": str(path), "ok": not problems, "images_checked": known is not None,
                   "problems": [_problem_json(p) for p in problems]})
    else:
        if known is None:
            click.echo("note: no images are built, so image names were not checked", err=True)
        for problem in problems:
            click.echo(str(problem))
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
             "hidden": c.hidden, "baseline_pass": c.baseline_pass, "depends_on": list(c.depends_on)}
            for c in lab.checks
        ],
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


def render_solutions(lab: Lab, context: dict[str, object]) -> list[tuple[str, str, bool]]:
    """The lab's ``solution/`` scripts for one student as (name, text, executable): ``.j2`` files rendered (suffix
    dropped), others as they are. An absent folder gives an empty list."""
    assert lab.folder is not None
    folder, why = lab_path(lab.folder, SOLUTION_FOLDER)
    if folder is None:
        raise LabFormatError(why or "bad solution folder", str(lab.folder / SOLUTION_FOLDER))
    if not folder.is_dir():
        return []
    scripts = []
    for path in sorted(folder.iterdir()):
        rel = f"{SOLUTION_FOLDER}/{path.name}"
        real, why = lab_path(lab.folder, rel)
        if real is None or not real.is_file():
            raise LabFormatError(why or f"{rel} is not a file", str(lab.folder / rel))
        text = real.read_text(encoding="utf-8")
        name = path.name
        if name.endswith(TEMPLATE_SUFFIX):
            text, name = render_text(text, context, rel, str(lab.folder / rel)), name[: -len(TEMPLATE_SUFFIX)]
        scripts.append((name, text, bool(real.stat().st_mode & 0o111) or name.endswith(".sh")))
    return scripts


def render_preview(lab: Lab, course: str, student: str, secret: str,
                   outdir: Path) -> tuple[list[str], dict[str, object]]:
    """Write everything one student gets into the new folder ``outdir``; return the files written and the values."""
    params = student_params(lab, course, student, secret)
    topology = plan_topology(lab, template_context(lab, params, course, student))
    context = template_context(lab, params, course, student, topology)
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
