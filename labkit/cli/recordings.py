"""``labkit recordings list|export|prune``: the console recordings of students' machines (docs/operations.md)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from pathlib import Path

import click

from labkit.cli.app import App, echo_json, json_option
from labkit.errors import NotFoundError

pass_app = click.make_pass_decorator(App)


def _recordings(app: App):  # type: ignore[no-untyped-def]
    from labkit.services.recordings import Recordings

    return Recordings(app.settings, app.db)


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group("recordings")
def command() -> None:
    """Console recordings (asciicast v2) of students' machines."""


@command.command("list")
@click.argument("course")
@click.argument("student")
@json_option
@pass_app
def list_(app: App, course: str, student: str, as_json: bool) -> None:
    """List STUDENT's console recordings in COURSE, per machine, newest first."""
    machines = _recordings(app).of_student(course, student)
    if as_json:
        echo_json([dataclasses.asdict(m) for m in machines])
        return
    for machine in machines:
        click.echo(f"{machine.lab}/{machine.machine} ({machine.name}): {len(machine.recordings)} recordings")
        for r in machine.recordings:
            click.echo(f"  {r.id}  {_when(r.started_at)}  {r.duration:7.1f} s  {r.size:>9} B  {r.source}:{r.user}"
                       + ("  truncated" if r.truncated else "") + ("  watching" if r.read_only else ""))


@command.command("export")
@click.argument("course")
@click.argument("student")
@click.argument("machine")
@click.argument("recording", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the .cast file (asciinema play FILE replays it).")
@pass_app
def export(app: App, course: str, student: str, machine: str, recording: str | None, output: Path) -> None:
    """Copy one recording (default: the newest) of STUDENT's MACHINE (the lab's machine name, or LAB/MACHINE)."""
    recordings = _recordings(app)
    lab, _, name = machine.rpartition("/")
    found = [m for m in recordings.of_student(course, student) if m.machine == name and lab in ("", m.lab)]
    if len(found) != 1:
        known = ", ".join(f"{m.lab}/{m.machine}" for m in recordings.of_student(course, student)) or "none"
        raise NotFoundError(f"{student} has {'several machines' if found else 'no machine'} {machine!r} in "
                            f"{course}; machines: {known}")
    target = found[0]
    if recording is None:
        if not target.recordings:
            raise NotFoundError(f"machine {target.lab}/{target.machine} of {student} has no recordings")
        recording = target.recordings[0].id
    shutil.copyfile(recordings.path(target.name, recording), output)
    click.echo(f"wrote {output} ({recording})")


@command.command("prune")
@pass_app
def prune(app: App) -> None:
    """Apply the retention policy (LABKIT_RECORDINGS_KEEP_DAYS, LABKIT_RECORDINGS_KEEP_MB) to every machine now."""
    removed = _recordings(app).prune()
    click.echo(f"removed {len(removed)} recordings")
