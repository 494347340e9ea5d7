"""``labkit lab test`` on real guests: every shipped lab passes, a broken copy fails, and nothing is left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import settings_env
from sqlalchemy import select

from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.db import Database
from labkit.services.models import Course, Machine

pytestmark = pytest.mark.guest
LABS = Path(__file__).resolve().parents[2] / "labs"


def lab_test(settings: Settings, lab: Path, seeds: int) -> subprocess.CompletedProcess[str]:
    labkit = Path(sys.executable).with_name("labkit")
    return subprocess.run([str(labkit), "lab", "test", str(lab), "--seeds", str(seeds)],
                          env={**os.environ, **settings_env(settings)}, capture_output=True, text=True,
                          timeout=500)


def assert_nothing_left(settings: Settings) -> None:
    db = Database(settings)
    try:
        with db.transaction() as session:
            assert session.scalars(select(Course.name)).all() == []
            assert session.scalars(select(Machine.name)).all() == []
    finally:
        db.close()
    assert list(settings.overlays.iterdir()) == []


@pytest.mark.parametrize(("lab", "seeds"), [("intro-shell", 3), ("two-hosts", 2), ("web-server", 1),
                                            ("mixed-backends", 1)])  # one UML and one QEMU machine on one network
def test_shipped_labs_pass(lk_settings: Settings, lab: str, seeds: int) -> None:
    recipe = "debian-bookworm" if lab == "web-server" else "tiny"
    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, recipe))
    done = lab_test(lk_settings, LABS / lab, seeds)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"lab {lab}: PASSED" in done.stdout
    assert done.stdout.count(" ok ") >= seeds
    assert_nothing_left(lk_settings)


def test_a_broken_lab_fails(lk_settings: Settings, tmp_path: Path) -> None:
    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    broken = tmp_path / "intro-shell"
    shutil.copytree(LABS / "intro-shell", broken)
    toml = broken / "lab.toml"
    # root-intact passes for everyone once it is no longer marked baseline_pass; the solution forgets the secret.
    toml.write_text(toml.read_text().replace("baseline_pass = true\n", "", 1))
    solution = broken / "solution" / "box.sh.j2"
    solution.write_text(solution.read_text().replace('printf \'%s\\n\' "$phrase"', "printf 'wrong\\n'"))
    done = lab_test(lk_settings, broken, 1)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "root-intact passed on untouched machines: it passes for everyone" in done.stdout
    assert "secret-content: 0/2 after the solution" in done.stdout
    assert "lab intro-shell: FAILED" in done.stdout
    assert_nothing_left(lk_settings)
