"""The ``labkit`` command: ``labkit <noun> <verb>`` (style guide 10, after hatch and click's ``repo`` example).

The root group puts an `App` into ``ctx.obj``. Each noun lives in its own module with thin verbs that call the
layers below.
A `LabkitError` becomes one line on stderr and exit code 1; ``LABKIT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys

import click

from labkit.cli.app import App
from labkit.errors import LabkitError


class LabkitGroup(click.Group):
    """A click group that turns labkit's own errors into one clear line."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except LabkitError as err:
            if os.environ.get("LABKIT_DEBUG") == "1":
                raise
            click.echo(f"labkit: error: {err}", err=True)
            sys.exit(1)


@click.group(cls=LabkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="labkit")
@click.pass_context
def main(ctx: click.Context) -> None:
    """labkit: training labs on unprivileged User-Mode Linux guests."""
    ctx.obj = App.from_env()
    ctx.call_on_close(ctx.obj.close)


def _register() -> None:
    # Explicit list, no string-built imports (style guide 3).
    from labkit.cli import course, demo, doctor, grade, image, lab, overlay, serve, user, vm

    for module in (image, overlay, vm, lab, course, doctor, user, serve, demo):
        main.add_command(module.command)
    main.add_command(overlay.alias)
    for verb in grade.commands:
        main.add_command(verb)


_register()
