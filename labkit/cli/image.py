"""labkit image: build, list, show, verify and remove base images (thin verbs over labkit.images)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from labkit.cli.app import App, echo_json, json_option
from labkit.cli.progress import StatusLine


@click.group("image")
def command() -> None:
    """Build, list and check base images."""


@command.command("build")
@click.argument("name")
@click.option("--recipes",
              type=click.Path(file_okay=False, path_type=Path), help="Folder of recipes (default: settings).")
@click.option("--if-missing", is_flag=True, help="Keep the newest version when it was built from the same recipe.")
@click.pass_obj
def build(app: App, name: str, recipes: Path | None, if_missing: bool) -> None:
    """Build image NAME from its recipe (copied from the build cache when the recipe is unchanged)."""
    status = StatusLine()
    try:
        record, built = app.images.build(name, recipes, if_missing=if_missing, progress=status)
    finally:
        status.finish()
    click.echo(f"{'built' if built else 'kept'} {record.ref} ({record.size // (1 << 20)} MiB) at {record.path}")


@command.command("list")
@json_option
@click.pass_obj
def list_images(app: App, as_json: bool) -> None:
    """List stored images (with a quick size/mtime check) and the machines on each."""
    rows = [check.to_json() for check in app.images.verify(full=False)]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no images; build one with 'labkit image build tiny'")
        return
    click.echo(f"{'IMAGE':<28} {'SIZE':>8}  {'BUILT':<25} {'BUILDER':<11} {'BACKEND':<8} {'STATUS':<8} MACHINES")
    for row in rows:
        size = f"{int(str(row['size'])) // (1 << 20)}M"
        status = "ok" if row["ok"] else "CHANGED"
        click.echo(f"{row['ref']!s:<28} {size:>8}  {row['built_at']!s:<25} {row['builder']!s:<11} "
                   f"{row['backend']!s:<8} {status:<8} {len(row['machines'])}")  # type: ignore[arg-type]


@command.command("show")
@click.argument("ref", metavar="NAME[:VERSION]")
@json_option
@click.pass_obj
def show(app: App, ref: str, as_json: bool) -> None:
    """Show one image version (the latest when VERSION is left out)."""
    row = app.images.show(ref).to_json()
    if as_json:
        echo_json(row)
        return
    for key in ("ref", "path", "size", "sha256", "recipe_digest", "builder", "backend", "built_at", "mtime_ns",
                "ctime_ns"):
        click.echo(f"{key + ':':<15} {row[key]}")
    click.echo(f"{'machines:':<15} {', '.join(row['machines']) or '-'}")  # type: ignore[arg-type]
    click.echo(f"{'status:':<15} {'ok' if row['ok'] else '; '.join(map(str, row['problems']))}")  # type: ignore[arg-type]


@command.command("warm")
@click.argument("ref", metavar="NAME[:VERSION]")
@click.option("--memory", type=click.IntRange(1, 1 << 20), default=128, show_default=True,
              help="Guest memory in MB of the machines that will start from it (a state fits one size; 128 is a "
                   "lab machine's default).")
@click.pass_obj
def warm(app: App, ref: str, memory: int) -> None:
    """Boot the image once and save it, booted and waiting for its seed, so fresh machines start from there."""
    status = StatusLine()
    try:
        record, state, made = app.images.warm(ref, memory, progress=status)
    finally:
        status.finish()
    size = state.state.stat().st_size // (1 << 20)
    click.echo(f"{'saved' if made else 'kept'} the warm state of {record.ref} for {memory} MB machines "
               f"({size} MiB) at {state.state.parent}")


@command.command("verify")
@click.argument("name", required=False)
@json_option
@click.pass_obj
def verify(app: App, name: str | None, as_json: bool) -> None:
    """Fully check stored images (content hash too); exit 1 when any image changed."""
    checks = app.images.verify(name, full=True)
    if as_json:
        echo_json([check.to_json() for check in checks])
    for check in [] if as_json else checks:
        if not check.problems:
            click.echo(f"{check.record.ref}: ok")
            continue
        click.echo(f"{check.record.ref}: CHANGED: {'; '.join(check.problems)}")
        if check.machines:
            click.echo(f"  overlays broken by this change: {', '.join(check.machines)}")
    if not all(not check.problems for check in checks):
        sys.exit(1)


@command.command("rm")
@click.argument("ref", metavar="NAME:VERSION")
@click.pass_obj
def remove(app: App, ref: str) -> None:
    """Delete one stored image version (refused while machines stand on it)."""
    record = app.images.remove(ref)
    click.echo(f"removed {record.ref}")
