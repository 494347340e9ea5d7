"""``labkit overlay``: inspect, create, flatten and rebase overlay files of any registered kind (``labkit cow`` is the
same group under its old name).

Verbs work through the `Overlay` interface only: a file's kind comes from its suffix (``.cow`` ...), else from the
first kind that can read it, or from ``--kind``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from labkit.cli.app import echo_json, json_option
from labkit.errors import OverlayError
from labkit.overlays import OVERLAYS, Overlay, get_overlay, overlay_of_file

_file = click.Path(path_type=Path, dir_okay=False)
_kind = click.option("--kind", type=click.Choice(sorted(OVERLAYS)), default=None,
                     help="The overlay kind (default: from the file name's suffix, else from its content).")


@click.group("overlay")
def command() -> None:
    """Copy-on-write overlay files (UML COW, ...), whatever their kind."""


def _overlay(path: Path, kind: str | None) -> Overlay:
    return get_overlay(kind) if kind else overlay_of_file(path)


def _describe(path: Path, kind: str | None) -> dict[str, Any]:
    overlay = _overlay(path, kind)
    facts = dataclasses.asdict(overlay.info(path))
    problem = overlay.backing_problem(path)
    return {
        **{key: str(value) if isinstance(value, Path) else value for key, value in facts.items() if key != "details"},
        **dict(facts["details"]),
        "backing_ok": problem is None,
        "backing_problem": problem,
    }


@command.command("info")
@click.argument("path", type=_file)
@_kind
@json_option
def info(path: Path, kind: str | None, as_json: bool) -> None:
    """Show what the overlay PATH says about itself, how much it holds, and whether its base still matches."""
    facts = _describe(path, kind)
    if as_json:
        echo_json(facts)
        return
    click.echo(f"path:         {facts['path']}")
    click.echo(f"kind:         {facts['kind']}")
    click.echo(f"backing file: {facts['backing_file']}")
    click.echo(f"size:         {facts['virtual_size']} bytes")
    click.echo(f"allocated:    {facts['allocated_bytes']} bytes (the file takes {facts['file_bytes']} on disk)")
    shown = {"path", "kind", "backing_file", "virtual_size", "allocated_bytes", "file_bytes", "backing_ok",
             "backing_problem"}
    for key, value in facts.items():
        if key not in shown:
            click.echo(f"{key + ':':<14}{value}")
    click.echo(f"backing:      {'ok' if facts['backing_ok'] else facts['backing_problem']}")


@command.command("create")
@click.argument("base", type=_file)
@click.argument("path", type=_file)
@_kind
def create(base: Path, path: Path, kind: str | None) -> None:
    """Create an empty overlay PATH on top of the base image BASE (its kind from PATH's suffix, or --kind)."""
    if kind is None:
        suffixes = {get_overlay(k).suffix: k for k in sorted(OVERLAYS)}
        kind = next((k for suffix, k in suffixes.items() if suffix and path.name.endswith(suffix)), None)
        if kind is None:
            known = ", ".join(f"{s} ({k})" for s, k in suffixes.items())
            raise OverlayError(f"cannot tell the overlay kind of {path.name}: end it with {known}, or give --kind")
    made = get_overlay(kind).create(base, path)
    click.echo(f"Created {path} ({made.kind}) on {made.backing_file} ({made.virtual_size} bytes).")


@command.command("flatten")
@click.argument("path", type=_file)
@click.argument("output", type=_file)
@_kind
def flatten(path: Path, output: Path, kind: str | None) -> None:
    """Write OUTPUT, a raw image of the base with PATH's changes applied; neither is touched."""
    _overlay(path, kind).flatten(path, output)
    click.echo(f"Wrote {output}.")


@command.command("rebase")
@click.argument("path", type=_file)
@click.argument("new_base", type=_file)
@_kind
def rebase(path: Path, new_base: Path, kind: str | None) -> None:
    """Point PATH at NEW_BASE after the base image moved (it must be the same image)."""
    made = _overlay(path, kind).rebase(path, new_base)
    click.echo(f"{path} now uses {made.backing_file}.")


#: ``labkit cow ...``: the group's name before overlays had kinds, kept for scripts (``merge`` is ``flatten``)
alias = click.Group("cow", commands={**command.commands, "merge": flatten}, hidden=True,
                    help="Old name of 'labkit overlay'.")
