"""labkit image: build, list, show, verify and remove base images (thin verbs over labkit.images)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from labkit.cli.app import App, echo_json, json_option
from labkit.errors import BadNameError
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageRecord, ImageStore
from labkit.progress import ProgressEvent


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:VERSION``."""
    name, _, version = ref.partition(":")
    if not version:
        return name, None
    if not version.isdigit():
        raise BadNameError(f"image version in {ref!r} must be a number, as in {name}:2")
    return name, int(version)


class StatusLine:
    """Renders build progress as one rewritten line on stderr (one line per step when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_step = ""

    def __call__(self, event: ProgressEvent) -> None:
        if event.total:
            text = f"[{event.step}] {100 * event.done // event.total:3d}% {event.message}"
        else:
            text = f"[{event.step}] {event.message}"
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            click.echo("\r" + text[:width].ljust(width), err=True, nl=False)
        elif event.step != self.last_step:
            click.echo(text, err=True)
        self.last_step = event.step

    def finish(self) -> None:
        if self.tty:
            click.echo("", err=True)


def _row(record: ImageRecord, problems: list[str]) -> dict[str, object]:
    return {**record.to_json(), "ref": record.ref, "ok": not problems, "problems": problems}


@click.group("image")
def command() -> None:
    """Build, list and check base images."""


@command.command("build")
@click.argument("name")
@click.option("--recipes",
              type=click.Path(file_okay=False, path_type=Path), help="Folder of recipes (default: settings).")
@click.pass_obj
def build(app: App, name: str, recipes: Path | None) -> None:
    """Build image NAME from its recipe (copied from the build cache when the recipe is unchanged)."""
    recipe = find_recipe(recipes or app.settings.recipes, name)
    app.settings.ensure()
    status = StatusLine()
    try:
        record = ImageStore(app.settings).build(recipe, progress=status)
    finally:
        status.finish()
    click.echo(f"built {record.ref} ({record.size // (1 << 20)} MiB) at {record.path}")


@command.command("list")
@json_option
@click.pass_obj
def list_images(app: App, as_json: bool) -> None:
    """List stored images (with a quick size/mtime check)."""
    store = ImageStore(app.settings)
    rows = [_row(record, store.verify(record, full=False)) for record in store.list()]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no images; build one with 'labkit image build tiny'")
        return
    click.echo(f"{'IMAGE':<28} {'SIZE':>8}  {'BUILT':<25} {'BUILDER':<11} STATUS")
    for row in rows:
        size = f"{int(str(row['size'])) // (1 << 20)}M"
        status = "ok" if row["ok"] else "CHANGED"
        click.echo(f"{row['ref']!s:<28} {size:>8}  {row['built_at']!s:<25} {row['builder']!s:<11} {status}")


@command.command("show")
@click.argument("ref", metavar="NAME[:VERSION]")
@json_option
@click.pass_obj
def show(app: App, ref: str, as_json: bool) -> None:
    """Show one image version (the latest when VERSION is left out)."""
    store = ImageStore(app.settings)
    record = store.get(*parse_ref(ref))
    row = _row(record, store.verify(record, full=False))
    if as_json:
        echo_json(row)
        return
    for key in ("ref", "path", "size", "sha256", "recipe_digest", "builder", "built_at", "mtime_ns", "ctime_ns"):
        click.echo(f"{key + ':':<15} {row[key]}")
    click.echo(f"{'status:':<15} {'ok' if row['ok'] else '; '.join(map(str, row['problems']))}")


@command.command("verify")
@click.argument("name", required=False)
@json_option
@click.pass_obj
def verify(app: App, name: str | None, as_json: bool) -> None:
    """Fully check stored images (content hash too); exit 1 when any image changed."""
    store = ImageStore(app.settings)
    records = store.list(parse_ref(name)[0]) if name else store.list()
    if name and not records:
        store.get(parse_ref(name)[0])  # raises NotFoundError naming the images there are
    rows = [_row(record, store.verify(record, full=True)) for record in records]
    if as_json:
        echo_json(rows)
    else:
        for row in rows:
            click.echo(f"{row['ref']}: {'ok' if row['ok'] else '; '.join(map(str, row['problems']))}")
    if not all(row["ok"] for row in rows):
        sys.exit(1)


@command.command("rm")
@click.argument("ref", metavar="NAME:VERSION")
@click.pass_obj
def remove(app: App, ref: str) -> None:
    """Delete one stored image version."""
    name, version = parse_ref(ref)
    if version is None:
        raise BadNameError(f"say which version to remove, as in {name}:1")
    store = ImageStore(app.settings)
    record = store.get(name, version)
    store.remove(record)
    click.echo(f"removed {record.ref}")
