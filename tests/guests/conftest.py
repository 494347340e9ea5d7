"""Fixtures of the tests that drive a runtime backend directly: the tiny image's file, a seed disk for the SLIRP
network, and a short run root whose machines are ended by PID afterwards (helpers: backend_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.images.seed import SeedSpec, build_seed
from labkit.images.store import ImageRecord

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
