"""labkit cow: inspect, create, merge and rebase UML COW overlays (thin verbs over `labkit.overlays.umlcow`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from labkit.cli.app import echo_json, json_option
from labkit.errors import OverlayError
from labkit.overlays import umlcow

_file = click.Path(path_type=Path, dir_okay=False)


@click.group("cow")
def command() -> None:
    """UML copy-on-write overlays (ubd COW files)."""


def _describe(path: Path) -> dict[str, Any]:
    header = umlcow.read_header(path)
    sectors = umlcow.count_allocated(path)
    problem: str | None = None
    try:
        umlcow.check_backing(header, header.backing_file)
    except OverlayError as err:
        problem = str(err)
    return {
        "path": str(path),
        **dataclasses.asdict(header),
        "allocated_sectors": sectors,
        "allocated_bytes": sectors * umlcow.SECTOR,
        "backing_ok": problem is None,
        "backing_problem": problem,
    }


@command.command("info")
@click.argument("path", type=_file)
@json_option
def info(path: Path, as_json: bool) -> None:
    """Show the header of the COW file PATH, how much it holds, and whether its backing file still matches."""
    facts = _describe(path)
    if as_json:
        echo_json(facts)
        return
    click.echo(f"path:         {facts['path']}")
    click.echo(f"format:       {facts['variant']} (version {facts['version']})")
    click.echo(f"backing file: {facts['backing_file']}")
    click.echo(f"size:         {facts['size']} bytes")
    click.echo(f"mtime:        {facts['mtime']}")
    click.echo(f"allocated:    {facts['allocated_sectors']} sectors ({facts['allocated_bytes']} bytes)")
    click.echo(f"backing:      {'ok' if facts['backing_ok'] else facts['backing_problem']}")


@command.command("create")
@click.argument("base", type=_file)
@click.argument("path", type=_file)
def create(base: Path, path: Path) -> None:
    """Create an empty COW file PATH on top of the base image BASE."""
    header = umlcow.write_cow(path, base)
    click.echo(f"Created {path} on {header.backing_file} ({header.size} bytes).")


@command.command("merge")
@click.argument("path", type=_file)
@click.argument("output", type=_file)
@click.option("--base", type=_file, default=None, help="Use this backing file instead of the one in the header.")
def merge(path: Path, output: Path, base: Path | None) -> None:
    """Write OUTPUT, a raw image of the base with PATH's changes applied; the base is not touched."""
    umlcow.merge(path, output, base)
    click.echo(f"Wrote {output}.")


@command.command("rebase")
@click.argument("path", type=_file)
@click.argument("new_base", type=_file)
def rebase(path: Path, new_base: Path) -> None:
    """Point PATH at NEW_BASE after the base image moved (its size and mtime must match the header)."""
    header = umlcow.rebase(path, new_base)
    click.echo(f"{path} now uses {header.backing_file}.")
