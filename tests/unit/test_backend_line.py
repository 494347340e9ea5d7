"""The backend line: nothing above `labkit.runtime` and `labkit.overlays` names a concrete backend or overlay kind,
and each machine runs on the backend its lab names, looked up in the registry.

A second backend (QEMU, VirtualBox) must plug in by adding its package and one registry row, without edits above the
line. The import walk proves the first half; the fake backend below (a tiny UML subclass registered only here, not a
stand-in for a real backend) proves that a machine is given the backend its lab names.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

import labkit.overlays
import labkit.runtime
from labkit.config import Settings
from labkit.errors import BadNameError, LabFormatError, StateError
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.labs.loader import load_lab, validate_lab
from labkit.overlays import OVERLAYS
from labkit.overlays.base import Overlay
from labkit.runtime import BACKENDS, backend_kinds, get_backend
from labkit.runtime.base import Backend, Capabilities, MachineSpec, MachineStatus
from labkit.runtime.uml.backend import UmlBackend
from labkit.services.courses import Courses
from labkit.services.db import Database
from labkit.services.models import Machine

ROOT = Path(__file__).resolve().parents[2]
LABS = ROOT / "labs"
#: the packages above the line, as folders of the repository
ABOVE = ("labkit/services", "labkit/labs", "labkit/grading", "labkit/guest", "labkit/cli", "web")
#: what code above the line may import from below it: the interfaces and backend-neutral helpers
NEUTRAL = {"labkit.runtime": {"base", "capture", "console", "network", "process", "recorder"},
           "labkit.overlays": {"base"}}


def _concrete_names(package: str) -> set[str]:
    """Names that are concrete kinds when imported from ``package``: its Backend/Overlay subclasses other than the
    interface (``from labkit.overlays import UmlCow`` is as concrete as importing its module)."""
    module = labkit.runtime if package == "labkit.runtime" else labkit.overlays
    interface = Backend if package == "labkit.runtime" else Overlay
    return {name for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, interface) and value is not interface}


def concrete_imports(source: str, where: str) -> list[str]:
    """``where:line: what`` for each import in ``source`` of a module or class below the line that is not neutral."""
    tree = ast.parse(source, filename=where)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [(node.module, alias.name) for alias in node.names]
        else:
            continue
        for module, name in targets:
            for package, allowed in NEUTRAL.items():
                if module.startswith(package + "."):
                    sub = module[len(package) + 1:].split(".")[0]
                    if sub not in allowed:
                        found.append(f"{where}:{node.lineno}: imports {module}")
                elif module == package and name is not None:
                    submodule = (ROOT / package.replace(".", "/") / name).with_suffix(".py").exists() or (
                        ROOT / package.replace(".", "/") / name).is_dir()
                    if (submodule and name not in allowed) or name in _concrete_names(package):
                        found.append(f"{where}:{node.lineno}: imports {name} from {package}")
    return found


def test_nothing_above_the_line_imports_a_concrete_backend_or_overlay() -> None:
    files = sorted(p for folder in ABOVE for p in (ROOT / folder).rglob("*.py"))
    assert len(files) > 50  # the walk found the packages
    found = [hit for path in files for hit in concrete_imports(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == [], "code above labkit.runtime/labkit.overlays names a concrete kind:\n" + "\n".join(found)


def test_the_walk_catches_each_way_of_naming_a_concrete_kind() -> None:
    """The walk itself can fail: each of the first four lines is caught, the neutral ones are not."""
    hits = concrete_imports("from labkit.runtime.uml.console import connect\nimport labkit.runtime.uml.backend\n"
                            "from labkit.overlays import umlcow\nfrom labkit.overlays import UmlCow\n"
                            "from labkit.runtime.base import Backend\nfrom labkit.runtime.console import attach\n"
                            "from labkit.overlays import get_overlay, Overlay\nfrom labkit.runtime import get_backend\n"
                            "def f():\n    from labkit.overlays.umlcow import merge\n", "probe.py")
    assert [hit.split(": ", 1)[1] for hit in hits] == [
        "imports labkit.runtime.uml.console", "imports labkit.runtime.uml.backend", "imports umlcow from "
        "labkit.overlays", "imports UmlCow from labkit.overlays", "imports labkit.overlays.umlcow"]


# ---------------------------------------------------------------- each machine names its backend


class FakeBackend(UmlBackend):
    """A second registered kind for this test only: UML underneath, but its own name, and it counts the status
    reads it answers (so the test sees which backend the services picked)."""

    kind = "fake"
    asked: list[str] = []  # noqa: RUF012 (a test's tally, shared by the instances get_backend makes)

    def status(self, spec: MachineSpec) -> MachineStatus:
        FakeBackend.asked.append(spec.name)
        return super().status(spec)


@pytest.fixture
def fake_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(BACKENDS, "fake", f"{__name__}:FakeBackend")
    monkeypatch.setattr(FakeBackend, "capabilities", UmlBackend.capabilities)
    FakeBackend.asked.clear()
    yield


def lab_naming(tmp_path: Path, backend: str) -> Path:
    lab = tmp_path / "intro-shell"
    shutil.copytree(LABS / "intro-shell", lab)
    text = (lab / "lab.toml").read_text()
    (lab / "lab.toml").write_text(text.replace('image = "tiny"\n', f'image = "tiny"\nbackend = "{backend}"\n', 1))
    return lab


def test_an_unknown_backend_is_one_clear_error_with_file_machine_and_known_kinds(tmp_path: Path) -> None:
    lab = lab_naming(tmp_path, "vbox")
    problems = validate_lab(lab)
    assert [(Path(p.file).name, p.key, p.message) for p in problems] == [
        ("lab.toml", "machines.box.backend", f"unknown backend 'vbox' for machine box; known backends: "
                                             f"{', '.join(backend_kinds())}")]
    assert problems[0].line == (lab / "lab.toml").read_text().splitlines().index('backend = "vbox"') + 1
    with pytest.raises(LabFormatError, match=r"lab\.toml:\d+: machines\.box\.backend: unknown backend 'vbox'"):
        load_lab(lab)


def test_a_lab_without_backend_runs_on_the_default(tmp_path: Path) -> None:
    assert load_lab(LABS / "intro-shell").machines["box"].backend == labkit.runtime.DEFAULT_BACKEND


def test_a_machine_gets_the_backend_its_lab_names(fake_registered: None, lk_settings: Settings,
                                                  tmp_path: Path) -> None:
    assert "fake" in backend_kinds() and isinstance(get_backend("fake"), FakeBackend)
    lab = lab_naming(tmp_path, "fake")
    assert load_lab(lab).machines["box"].backend == "fake"

    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    db = Database(lk_settings)
    try:
        courses = Courses(lk_settings, db, actor="teacher")
        courses.create("c1", [lab])
        roster = tmp_path / "roster.csv"
        roster.write_text("id,name,email\nalice,Alice,alice@example.org\n")
        courses.import_roster("c1", roster)
        courses.provision("c1")
        with db.transaction() as session:
            machine = session.scalars(select(Machine)).one()
            name, recorded = machine.name, (machine.backend, machine.overlay_kind)
        overlay = OVERLAYS[FakeBackend.overlay_kind]()
        assert recorded == ("fake", FakeBackend.overlay_kind)
        assert (lk_settings.overlays / overlay.file_name(name)).exists()
        FakeBackend.asked.clear()
        view = courses.machines.status(name)[0]
        assert (view.backend, view.state) == ("fake", "stopped")
        assert FakeBackend.asked == [name]  # the services asked the lab's backend, not the default one
        # what the backend cannot do is refused by asking it, whatever state the machine is in
        FakeBackend.capabilities = Capabilities(pause=False)
        with pytest.raises(StateError, match=f"cannot pause machine {name}: its backend fake cannot pause machines"):
            courses.machines.pause(name)
    finally:
        db.close()


def test_a_backend_s_least_memory_is_one_clear_error_in_the_lab_and_the_service(
        fake_registered: None, monkeypatch: pytest.MonkeyPatch, lk_settings: Settings, tmp_path: Path) -> None:
    """A backend whose guests need more memory (QEMU's kernel needs 128 MiB) says so; a lab or a ``vm create``
    asking for less is refused with that figure instead of being raised silently."""
    monkeypatch.setattr(FakeBackend, "min_memory_mb", 96)
    lab = lab_naming(tmp_path, "fake")  # its machine asks for 64 MB
    assert [(p.key, p.message) for p in validate_lab(lab)] == [
        ("machines.box.memory", "memory 64 MB is too little for machine box on backend fake: it needs at least 96 MB")]

    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    db = Database(lk_settings)
    try:
        machines = Courses(lk_settings, db, actor="teacher").machines
        with pytest.raises(BadNameError, match="memory 64 MB is too little for backend fake: its machines need at "
                                               "least 96 MB"):
            machines.create("m1", "tiny", 64, backend="fake")
        assert machines.status() == []
        assert list(lk_settings.overlays.iterdir()) == [] and list(lk_settings.seeds.iterdir()) == []
        assert machines.create("m1", "tiny", 96, backend="fake").memory_mb == 96
    finally:
        db.close()


def test_every_backend_names_its_least_memory() -> None:
    for kind in backend_kinds():
        assert 16 <= get_backend(kind).min_memory_mb <= 128, kind
