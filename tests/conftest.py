"""Shared fixtures: settings for a short temporary LABKIT_HOME, and a built tiny image for the whole session.

Images are built through the real store; the build cache lives in a persistent folder (``LABKIT_TEST_CACHE``, default
``/var/tmp/labkit-test-cache-<uid>``) so the Debian image is built once per machine and tiny in about a second.
Homes are made with short names under /tmp because UNIX socket paths must stay under 108 bytes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageRecord, ImageStore
from labkit.services.courses import Courses
from labkit.services.db import Database

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "base_images"
LABS = REPO / "labs"
TEST_CACHE = Path(os.environ.get("LABKIT_TEST_CACHE") or f"/var/tmp/labkit-test-cache-{os.getuid()}")


def make_short_dir(prefix: str = "lk") -> Path:
    """A new folder with a short path (for UNIX sockets); the caller removes it.

    The name never holds "_" or ",": UML's slirp transport turns "_" into a space and splits on ",", so a slirp
    wrapper script in such a folder cannot be started.
    """
    while True:
        path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        if "_" not in path and "," not in path:
            return Path(path)
        os.rmdir(path)


def make_settings(home: Path, cache: Path | None = None, recipes: Path = RECIPES) -> Settings:
    """Settings for an installation in ``home`` (run dir inside it, shared test build cache unless given)."""
    settings = Settings(
        home=home,
        db_url=f"sqlite:///{home / 'labkit.db'}",
        recipes=recipes,
        cache=cache or TEST_CACHE,
        run_dir=home / "run",
    )
    settings.ensure()
    return settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The LABKIT_* variables that make `Settings.from_env` (and so the CLI) give ``settings``."""
    return {
        "LABKIT_HOME": str(settings.home),
        "LABKIT_DB": settings.db_url,
        "LABKIT_RECIPES": str(settings.recipes),
        "LABKIT_CACHE": str(settings.cache),
        "LABKIT_RUN": str(settings.run_dir),
    }


def make_course(settings: Settings, name: str, labs: Iterable[Path], students: Iterable[tuple[str, str, str]],
                actor: str = "teacher", provision: bool = True) -> Courses:
    """Course ``name`` on ``labs`` with ``students`` (id, name, email) on its roster and (unless ``provision`` is
    false) their machines provisioned, the tiny image built first, over a new `Database` of ``settings``: the caller
    closes ``courses.db``."""
    ImageStore(settings).build(find_recipe(settings.recipes, "tiny"))
    courses = Courses(settings, Database(settings), actor=actor)
    courses.create(name, list(labs))
    roster = settings.home / f"roster-{name}.csv"
    roster.write_text("id,name,email\n" + "".join(f"{sid},{full},{email}\n" for sid, full, email in students))
    courses.import_roster(name, roster)
    if provision:
        courses.provision(name)
    return courses


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary folder under /tmp, removed afterwards."""
    path = make_short_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def lk_settings(short_tmp: Path) -> Settings:
    """Settings for a fresh installation in a short temporary home (shared build cache)."""
    return make_settings(short_tmp / "home")


@pytest.fixture(scope="session")
def session_settings() -> Iterator[Settings]:
    """One installation shared by the whole test session."""
    home = make_short_dir("lks")
    yield make_settings(home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_image(session_settings: Settings) -> ImageRecord:
    """The tiny recipe built (or copied from the test cache) into the session installation."""
    return ImageStore(session_settings).build(find_recipe(RECIPES, "tiny"))


@pytest.fixture
def settings_factory(short_tmp: Path) -> Callable[..., Settings]:
    """``settings_factory(name, cache=None)`` -> Settings for another installation inside ``short_tmp``."""

    def factory(name: str = "home", cache: Path | None = None) -> Settings:
        return make_settings(short_tmp / name, cache=cache)

    return factory


@pytest.fixture
def qemu_recipes(tmp_path: Path) -> Path:
    """A recipes folder whose tiny says ``backend = "qemu"``: built like tiny, but its machines default to QEMU."""
    folder = tmp_path / "recipes"
    shutil.copytree(RECIPES / "tiny", folder / "tiny")
    recipe = folder / "tiny" / "recipe.toml"
    text = recipe.read_text()
    assert 'builder = "busybox"\n' in text
    recipe.write_text(text.replace('builder = "busybox"\n', 'builder = "busybox"\nbackend = "qemu"\n', 1))
    return folder


@pytest.fixture
def cli_env(lk_settings: Settings) -> dict[str, str]:
    """Environment for click's CliRunner so the CLI uses ``lk_settings``."""
    return settings_env(lk_settings)
