"""Rendering progress events of long work (image builds, provisioning, class starts) on stderr."""

from __future__ import annotations

import shutil
import sys

import click

from labkit.progress import ProgressEvent


class StatusLine:
    """Renders progress as one rewritten line on stderr (one line per step when stderr is not a terminal)."""

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

    def __enter__(self) -> StatusLine:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.finish()
