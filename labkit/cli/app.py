"""The object every CLI verb receives: settings, plus lazily opened database and backend."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import click

from labkit.config import Settings


@dataclass
class App:
    """Shared state of one CLI invocation."""

    settings: Settings
    _closers: list[Any] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> App:
        return cls(settings=Settings.from_env())

    def close(self) -> None:
        for closer in reversed(self._closers):
            closer()
        self._closers.clear()

    def on_close(self, closer: Any) -> None:
        self._closers.append(closer)


def echo_json(value: Any) -> None:
    """Print ``value`` as JSON for ``--json`` (paths and enums as strings)."""
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
