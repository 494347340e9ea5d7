"""Fixtures of the guest tests: the tiny image's file, a seed disk for the SLIRP network, and a short run root whose
machines are ended by PID afterwards (helpers: backend_helpers.py); and the Machines service over an installation
with one image built."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.seed import SeedSpec, build_seed
from labkit.images.store import ImageRecord, ImageStore
from labkit.services.db import Database
from labkit.services.machines import Machines

from .backend_helpers import run_root


@pytest.fixture(scope="session")
def guest_image(tiny_image: ImageRecord) -> Path:
    """The tiny BusyBox + Dropbear image (tests/conftest.py), used read-only as every test machine's backing file."""
    return tiny_image.path


@pytest.fixture(scope="session")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seed disk giving eth0 the SLIRP contract's address and route (the same under UML and QEMU)."""
    return build_seed(SeedSpec(hostname="guest"), tmp_path_factory.mktemp("seed") / "seed.img")


@pytest.fixture
def root() -> Iterator[Path]:
    """A short run root; whatever its machines still run afterwards is ended by PID (backend_helpers.run_root)."""
    with run_root("lkb") as path:
        yield path


@contextmanager
def machines_on(settings: Settings, recipe: str, actor: str) -> Iterator[Machines]:
    """The Machines service of ``settings`` with image ``recipe`` built; afterwards whatever a failed test left running
    is stopped by PID (the service's kill) and the database closed."""
    ImageStore(settings).build(find_recipe(settings.recipes, recipe))
    db = Database(settings)
    try:
        service = Machines(settings, db, actor=actor)
        yield service
        for view in service.status():
            if view.state != "stopped":
                service.kill(view.name)
    finally:
        db.close()
