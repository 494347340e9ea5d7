"""The ``labkit`` command: ``labkit <noun> <verb>`` (style guide 10, after hatch and click's ``repo`` example).

The root group puts an `App` into ``ctx.obj``. Each noun lives in its own module with thin verbs that call the
layers below.
A `LabkitError` becomes one line on stderr and exit code 1; ``LABKIT_DEBUG=1`` shows the traceback instead.

A snappy CLI (docs/benchmarks.md, "A snappy CLI"): the root group imports a command's module only when that command
runs (`COMMANDS`), and a command module imports the heavy layers (the services and their SQLAlchemy models, lab
templates with Jinja2, guests with paramiko and pexpect, the web app) inside the verbs that use them, mostly through
`App`; so ``labkit --help`` imports none of them and ``labkit lab validate`` no database. The status commands read a
SQLite database through `sqlite3`, without SQLAlchemy (`App.read_status`). tests/unit/core/test_cli_imports.py guards
this.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import signal
import sys
from typing import Any

import click

from labkit.cli.app import App
from labkit.errors import LabkitError

#: Every top-level command: its name, the module that defines it and the name of the click command there (an explicit
#: table, no string-built imports: style guide 3). Hidden ones are the old names kept for scripts.
COMMANDS: dict[str, tuple[str, str]] = {
    "image": ("labkit.cli.image", "command"),
    "overlay": ("labkit.cli.overlay", "command"),
    "cow": ("labkit.cli.overlay", "alias"),
    "vm": ("labkit.cli.vm", "command"),
    "lab": ("labkit.cli.lab", "command"),
    "course": ("labkit.cli.course", "command"),
    "checkpoint": ("labkit.cli.checkpoint", "command"),
    "doctor": ("labkit.cli.doctor", "command"),
    "user": ("labkit.cli.user", "command"),
    "serve": ("labkit.cli.serve", "command"),
    "demo": ("labkit.cli.demo", "command"),
    "grade": ("labkit.cli.grade", "grade"),
    "gradebook": ("labkit.cli.grade", "gradebook"),
    "grades": ("labkit.cli.grade", "grades"),
    "check": ("labkit.cli.grade", "check"),
    "submit": ("labkit.cli.grade", "submit"),
    "submissions": ("labkit.cli.grade", "submissions"),
    "capture": ("labkit.cli.capture", "command"),
    "recordings": ("labkit.cli.recordings", "command"),
}


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C: Python's own KeyboardInterrupt, after telling the waits for starting machines to give up
    (`labkit.runtime.base.end_waits`): the threads that start machines side by side then end, so the command ends now,
    wherever in it the interrupt lands, instead of at exit when those threads are joined. The runtime is only asked
    when this command loaded it: otherwise nothing waits."""
    base = sys.modules.get("labkit.runtime.base")
    if base is not None:
        base.end_waits()
    raise KeyboardInterrupt


class LabkitGroup(click.Group):
    """The root group: loads each command from `COMMANDS` on first use, and turns labkit's own errors into one clear
    line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute = COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        # At exit Python's finalization would walk every object left (SQLAlchemy and the models alone are tens of
        # thousands): about 100 ms of a 400 ms ``labkit vm status`` here. A command has finished by then and cleans up
        # what it opened itself (`App.close`), so the heap goes to the permanent generation, which no collection visits.
        atexit.register(gc.freeze)
        signal.signal(signal.SIGINT, _interrupted)
        return super().main(*args, **kwargs)

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
