"""The Alembic migrations build exactly the schema the models describe, and opening a database migrates it."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from labkit.config import Settings
from labkit.services.db import Database
from labkit.services.models import Base


def settings_for(tmp_path: Path) -> Settings:
    return Settings.from_env({"LABKIT_HOME": str(tmp_path / "home"), "LABKIT_CACHE": str(tmp_path / "cache")})


def test_migrations_match_models(tmp_path: Path) -> None:
    db = Database(settings_for(tmp_path))
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    db.close()
    assert diff == []


def test_opening_twice_is_harmless_and_tables_exist(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    Database(settings).close()
    db = Database(settings)
    assert {"images", "machines", "snapshots", "events", "alembic_version"} <= set(inspect(db.engine).get_table_names())
    db.close()
    assert (settings.home / "labkit.db").exists()
    assert oct(settings.home.stat().st_mode & 0o777) == "0o700"
