"""Opening the database: one engine per installation, schema brought to the newest Alembic revision on open."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker

from labkit.atomic import locked
from labkit.config import Settings
from labkit.errors import DatabaseError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Revisions are numbered 0001, 0002, ... so the newest is the largest file name prefix.
HEAD = max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    # Transactions are begun by us (below), not by the driver, so that they can take the write lock up front.
    dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL syncs at checkpoints, not at every commit: a crash of labkit loses nothing, a power cut may
    # lose the last transactions but never corrupts the database (SQLite's documented trade-off).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


#: Connections kept per engine: the web server runs one thread per request (32 by default) and each may hold one.
POOL_SIZE, POOL_OVERFLOW = 8, 40


def make_engine(settings: Settings, writer: bool = True) -> Engine:
    """The engine of the database; ``writer=False`` gives one whose transactions only read."""
    engine = create_engine(settings.db_url, pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        # BEGIN IMMEDIATE: several labkit processes and threads write at once (a class starting in parallel). A
        # transaction that reads first and writes later could fail at once with "database is locked" when it tries
        # to upgrade its lock; taking the write lock at BEGIN makes it wait (busy_timeout) instead. Reading
        # transactions begin plainly: in WAL mode they never wait for a writer, nor make one wait.
        begin = "BEGIN IMMEDIATE" if writer else "BEGIN"
        event.listen(engine, "begin", lambda connection: connection.exec_driver_sql(begin))
    return engine


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):
        return None


def upgrade(settings: Settings, engine: Engine) -> None:
    """Bring the schema to head. A lock file keeps two labkit processes from migrating at once.

    Alembic is imported only when there is something to do: every CLI call opens the database, and most find it current.
    """
    settings.ensure()
    if current_revision(engine) == HEAD:
        return
    from alembic import command

    with locked(settings.home / ".migrate.lock"), engine.begin() as connection:
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


class Database:
    """The session factory of one installation."""

    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings)
        upgrade(settings, self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.reader = make_engine(settings, writer=False)
        self._readers = sessionmaker(self.reader, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        try:
            with self._sessions() as session, session.begin():
                yield session
        except OperationalError as err:
            raise self._error(err) from err

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session that only reads (one consistent snapshot) and is rolled back at the end, whatever was changed
        in it: pages and status views use it, so many readers never queue behind each other or behind a writer."""
        try:
            with self._readers() as session:
                session.begin()
                try:
                    yield session
                finally:
                    session.rollback()
        except OperationalError as err:
            raise self._error(err) from err

    @contextmanager
    def read_rows(self) -> Iterator[Connection]:
        """Like `read`, without the ORM: plain rows on a connection. For the reads that every page view makes (the
        user, their jobs), where building ORM objects costs three times as much as the query itself."""
        try:
            with self.reader.connect() as connection, connection.begin() as transaction:
                try:
                    yield connection
                finally:
                    transaction.rollback()
        except OperationalError as err:
            raise self._error(err) from err

    def _error(self, err: OperationalError) -> DatabaseError:
        return DatabaseError(f"the database {self.engine.url.render_as_string()} could not be used: {err.orig}")

    def close(self) -> None:
        self.engine.dispose()
        self.reader.dispose()
