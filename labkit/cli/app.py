"""The object every CLI verb receives: settings, plus lazily opened database and backend."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from labkit.config import Settings

if TYPE_CHECKING:
    from labkit.services.courses import Courses
    from labkit.services.db import Database
    from labkit.services.images import Images
    from labkit.services.machines import Machines
    from labkit.services.sqlite_status import StatusReader

T = TypeVar("T")


@dataclass
class App:
    """Shared state of one CLI invocation."""

    settings: Settings
    _closers: list[Any] = field(default_factory=list)

    @classmethod
    def from_env(cls) -> App:
        return cls(settings=Settings.from_env())

    _db: Database | None = None

    @property
    def db(self) -> Database:
        """The database, opened (and migrated) on first use only, so ``--help`` stays fast."""
        if self._db is None:
            from labkit.services.db import Database

            self._db = Database(self.settings)
            self.on_close(self._db.close)
        return self._db

    @property
    def courses(self) -> Courses:
        from labkit.services.courses import Courses

        return Courses(self.settings, self.db)

    @property
    def images(self) -> Images:
        from labkit.services.images import Images

        return Images(self.settings, self.db)

    @property
    def machines(self) -> Machines:
        from labkit.services.machines import Machines

        return Machines(self.settings, self.db)

    def status_reader(self) -> StatusReader | None:
        """A read-only reader of a SQLite database for the status commands, which then import no SQLAlchemy; None
        when the ORM path has to answer (another database, none yet, a schema to migrate). See
        `labkit.services.sqlite_status`."""
        from labkit.services.sqlite_status import StatusReader

        return StatusReader.open(self.settings)

    def read_status(self, fast: Callable[[StatusReader], tuple[T, list[str]]], orm: Callable[[], T]) -> T:
        """A status view: ``fast`` on the read-only SQLite reader when there is one, else ``orm``. The machines whose
        records ``fast`` found out of date go to the machine service, which writes them as the ORM path would."""
        reader = self.status_reader()
        if reader is None:
            return orm()
        try:
            value, stale = fast(reader)
        finally:
            reader.close()
        if stale:
            self.machines.write_back(stale)
        return value

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
