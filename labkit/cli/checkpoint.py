"""``labkit checkpoint``: one student's whole lab saved and brought back under one name (thin verbs over
`labkit.services.lab_checkpoints`; students do the same from their workspace)."""

from __future__ import annotations

import click

from labkit.cli.app import App, echo_json, json_option
from labkit.cli.progress import StatusLine

pass_app = click.make_pass_decorator(App)

where = [click.argument("course"), click.argument("student"), click.argument("lab")]


def _where(function):  # type: ignore[no-untyped-def]
    for decorator in reversed(where):
        function = decorator(function)
    return function


def _service(app: App):  # type: ignore[no-untyped-def]
    from labkit.services.lab_checkpoints import LabCheckpoints

    return LabCheckpoints(app.settings, app.db)


@click.group("checkpoint")
def command() -> None:
    """Save and restore a student's whole lab as one named checkpoint (a snapshot of that name on every machine)."""


@command.command("list")
@_where
@json_option
@pass_app
def list_(app: App, course: str, student: str, lab: str, as_json: bool) -> None:
    """The checkpoints of STUDENT's LAB in COURSE, oldest first; one that some machine lacks cannot be restored."""
    points = _service(app).checkpoints(course, student, lab)
    if as_json:
        echo_json([{"name": p.name, "created_at": p.created_at.isoformat(), "machines": list(p.machines),
                    "missing": list(p.missing), "complete": p.complete} for p in points])
        return
    for point in points:
        note = "" if point.complete else f"  (incomplete: {', '.join(point.missing)} lack it)"
        click.echo(f"{point.name}  {point.created_at:%Y-%m-%d %H:%M}  {', '.join(point.machines)}{note}")


@command.command("take")
@_where
@click.argument("name")
@pass_app
def take(app: App, course: str, student: str, lab: str, name: str) -> None:
    """Save every machine of the lab as checkpoint NAME (all or nothing; running machines keep running)."""
    with StatusLine() as status:
        point = _service(app).take(course, student, lab, name, progress=status)
    click.echo(f"checkpoint {point.name} taken: {', '.join(point.machines)}")


@command.command("restore")
@_where
@click.argument("name")
@click.option("--start", is_flag=True, help="Start the lab again afterwards (in depends_on order).")
@pass_app
def restore(app: App, course: str, student: str, lab: str, name: str, start: bool) -> None:
    """Bring every machine of the lab back to checkpoint NAME (the lab is stopped first; each replaced disk is kept
    as a before-restore snapshot). Refused, with nothing changed, when a machine lacks NAME."""
    with StatusLine() as status:
        rows = _service(app).restore(course, student, lab, name, start=start, progress=status)
    click.echo(f"back at {name}: " + ", ".join(f"{row['machine']} {row['state']}" for row in rows))
