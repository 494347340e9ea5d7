"""Courses without booting: rosters, idempotent provisioning, per-student values, lab upgrades, admission control."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import labkit.labs.loader
from labkit.config import Settings
from labkit.errors import AdmissionError, BadNameError, ConflictError, LabFormatError, NotFoundError, RosterError
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.overlays.umlcow import count_allocated
from labkit.services import loaded_labs, starting
from labkit.services.courses import Courses
from labkit.services.db import Database
from labkit.services.models import Machine

LABS = Path(__file__).resolve().parents[3] / "labs"


@pytest.fixture
def courses(lk_settings: Settings) -> Iterator[Courses]:
    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    db = Database(lk_settings)
    yield Courses(lk_settings, db, actor="teacher")
    db.close()


def roster(tmp_path: Path, *sids: str, name: str = "roster.csv") -> Path:
    path = tmp_path / name
    path.write_text("id,name,email\n" + "".join(f"{s},Student {s},{s}@example.org\n" for s in sids))
    return path


def alice_on_a_lab_copy(courses: Courses, tmp_path: Path) -> tuple[Path, str]:
    """Course c1 on a copy of intro-shell (for the test to change), alice provisioned: (the copy, her machine)."""
    lab = tmp_path / "intro-shell"
    shutil.copytree(LABS / "intro-shell", lab)
    courses.create("c1", [lab])
    courses.import_roster("c1", roster(tmp_path, "alice"))
    courses.provision("c1")
    return lab, courses.status("c1")[0]["name"]


def seed_text(courses: Courses, machine: str, inner: str) -> str:
    """A file of a machine's seed disk (a tar archive); ``labkit/files/...`` are read from its files.tar."""
    with tarfile.open(courses.settings.seeds / f"{machine}.img") as seed:
        member = inner.removeprefix("labkit/files/")
        data = seed.extractfile("labkit/files.tar" if member != inner else inner)
        assert data is not None
        if member == inner:
            return data.read().decode()
        with tarfile.open(fileobj=io.BytesIO(data.read())) as files:
            found = files.extractfile(member)
            assert found is not None
            return found.read().decode()


def test_create_refuses_bad_labs_and_duplicates(courses: Courses, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(LABS / "intro-shell", broken)
    (broken / "lab.toml").write_text((broken / "lab.toml").read_text().replace('reset_policy = "persist"',
                                                                                'reset_policy = "sometimes"'))
    with pytest.raises(LabFormatError, match=r"lab\.toml:\d+"):
        courses.create("c1", [broken])
    with pytest.raises(LabFormatError):
        courses.create("c1", [tmp_path / "missing"])
    courses.create("c1", [LABS / "intro-shell"])
    with pytest.raises(ConflictError, match="already exists"):
        courses.create("c1", [LABS / "intro-shell"])
    with pytest.raises(ConflictError, match="twice"):
        courses.create("c2", [LABS / "intro-shell", LABS / "intro-shell"])


def test_create_refuses_a_running_limit_below_a_labs_machines(courses: Courses) -> None:
    with pytest.raises(BadNameError) as err:
        courses.create("c1", [LABS / "intro-shell", LABS / "two-hosts"], max_running_per_student=1)
    assert str(err.value) == ("lab two-hosts needs 2 machines running at once, but the per-student limit of running "
                              "machines is 1; give --max-running 2 or more")
    with pytest.raises(NotFoundError):
        courses.show("c1")  # nothing half-made
    assert courses.create("c1", [LABS / "two-hosts"], max_running_per_student=2)["max_running_per_student"] == 2


def test_roster_reimport_adds_archives_and_keeps_work(courses: Courses, tmp_path: Path) -> None:
    courses.create("c1", [LABS / "intro-shell"])
    report = courses.import_roster("c1", roster(tmp_path, "alice", "bob"))
    assert report.added == ["alice", "bob"]
    courses.provision("c1")
    report = courses.import_roster("c1", roster(tmp_path, "alice", "carol", name="r2.csv"))
    assert (report.added, report.archived) == (["carol"], ["bob"])
    # bob is archived, and his machine (his work) is still there
    assert any(v.name.endswith("-box") for v in courses.machines.status())
    assert len(courses.machines.status()) == 2
    assert [s["id"] for s in courses.students("c1") if s["archived"]] == ["bob"]
    report = courses.import_roster("c1", roster(tmp_path, "alice", "bob", "carol", name="r3.csv"))
    assert report.restored == ["bob"]
    with pytest.raises(RosterError, match=r"r4\.csv:3"):
        courses.import_roster("c1", roster(tmp_path, "alice", "alice", name="r4.csv"))
    report = courses.import_roster("c1", roster(tmp_path, "alice", name="r5.csv"), purge=True)
    assert sorted(report.purged) == ["bob", "carol"]
    assert [row["student"] for row in courses.status("c1")] == ["alice"]
    assert len(courses.machines.status()) == 1  # bob's and carol's machines (and work) went with --purge
    assert [s["id"] for s in courses.students("c1")] == ["alice"]


def test_provision_is_idempotent_and_values_are_per_student(courses: Courses, tmp_path: Path) -> None:
    courses.create("c1", [LABS / "intro-shell", LABS / "two-hosts"])
    courses.import_roster("c1", roster(tmp_path, "alice", "bob", "carol"))
    first = courses.provision("c1")
    assert (first.created, first.kept) == (9, 0)
    again = courses.provision("c1")
    assert (again.created, again.kept) == (0, 9)
    status = courses.status("c1")
    assert len(status) == 9 and {row["state"] for row in status} == {"stopped"}
    names = {(row["student"], row["machine"]): row["name"] for row in status}
    motd = {sid: seed_text(courses, names[(sid, "box")], "labkit/files/etc/motd") for sid in ("alice", "bob")}
    assert motd["alice"] != motd["bob"]
    env_a = seed_text(courses, names[("alice", "a")], "labkit/seed.env")
    env_b = seed_text(courses, names[("bob", "a")], "labkit/seed.env")
    assert "eth1" in env_a and env_a != env_b
    # Deterministic: a new course object (another process) derives the same values.
    assert seed_text(courses, names[("alice", "box")], "labkit/files/etc/motd") == motd["alice"]


def test_changed_lab_is_reported_and_upgrade_keeps_overlays(courses: Courses, tmp_path: Path) -> None:
    lab, name = alice_on_a_lab_copy(courses, tmp_path)
    overlay = courses.settings.overlays / f"{name}.cow"
    with open(overlay, "r+b") as f:  # the student's work: one sector written
        f.seek(8192)
        f.write(b"\x01")
    motd = lab / "files/box/etc/motd.j2"
    motd.write_text(motd.read_text() + "\nA new line from the instructor.\n")
    with pytest.raises(ConflictError, match=r"changed: files/box/etc/motd\.j2.*--upgrade"):
        courses.provision("c1")
    report = courses.provision("c1", upgrade=True)
    assert report.upgraded == 1
    assert count_allocated(overlay) == 1
    assert "A new line from the instructor." in seed_text(courses, name, "labkit/files/etc/motd")


def count_lab_loads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The folders the lab loader reads from now on (a counting wrapper: the real loader runs underneath)."""
    loads: list[object] = []
    load = labkit.labs.loader._load

    def counted(*args: Any, **kwargs: Any) -> Any:
        loads.append(args[0])
        return load(*args, **kwargs)

    monkeypatch.setattr(labkit.labs.loader, "_load", counted)
    return loads


def test_a_course_lab_is_loaded_once_per_version_and_again_when_it_changes(
        courses: Courses, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab, _ = alice_on_a_lab_copy(courses, tmp_path)
    an_hour_ago = time.time() - 3600

    def settle() -> None:
        """Date the lab's files an hour back: a lab changed in the last seconds is loaded every time (racy)."""
        for path in [lab, *lab.rglob("*")]:
            os.utime(path, (an_hour_ago, an_hour_ago), follow_symlinks=False)

    settle()
    loads = count_lab_loads(monkeypatch)
    for _ in range(3):
        assert [t.machine for t in courses.targets("c1")] == ["box"]
    assert len(loads) == 1
    toml = lab / "lab.toml"
    toml.write_text(toml.read_text().replace('reset_policy = "persist"', 'reset_policy = "each-session"'))
    with pytest.raises(ConflictError, match="changed since"):
        courses.provision("c1")  # a provisioning validates afresh
    assert len(loads) == 2
    settle()  # dated back, but lab.toml's size changed: loaded again, then kept
    courses.targets("c1")
    courses.targets("c1")
    assert len(loads) == 3
    toml.write_text(toml.read_text().replace("each-session", "persist"))  # the first size again, a new time
    os.utime(toml, (an_hour_ago + 1, an_hour_ago + 1))
    courses.targets("c1")
    assert len(loads) == 4
    # a lab edited within the last seconds is loaded every time (a clock tick may hide a same-size edit)
    toml.touch()
    courses.targets("c1")
    courses.targets("c1")
    assert len(loads) == 6


def test_a_course_takes_a_lab_that_lab_validate_takes_pinning_an_image_version(
        courses: Courses, tmp_path: Path) -> None:
    lab = tmp_path / "intro-shell"
    shutil.copytree(LABS / "intro-shell", lab)
    toml = lab / "lab.toml"
    toml.write_text(toml.read_text().replace('image = "tiny"\n', 'image = "tiny:1"\n', 1))
    assert [entry["id"] for entry in courses.create("c1", [lab])["labs"]] == ["intro-shell"]  # type: ignore[union-attr]
    with pytest.raises(LabFormatError, match="image tiny:2 is not built"):
        toml.write_text(toml.read_text().replace('image = "tiny:1"\n', 'image = "tiny:2"\n', 1))
        courses.create("c2", [lab])


def test_a_course_takes_a_lab_pinning_a_version_on_the_backend_that_version_names(
        courses: Courses, tmp_path: Path, qemu_recipes: Path) -> None:
    """``lab validate`` accepts a lab pinning ``tiny:2``, so a course does too; its machine names no backend, so it
    gets tiny:2's (QEMU), not the newest tiny's nor labkit's default."""
    ImageStore(courses.settings).build(find_recipe(qemu_recipes, "tiny"))  # tiny:2 says backend = "qemu"
    ImageStore(courses.settings).build(find_recipe(courses.settings.recipes, "tiny"))  # tiny:3 says none
    lab = tmp_path / "intro-shell"
    shutil.copytree(LABS / "intro-shell", lab)
    toml = lab / "lab.toml"
    toml.write_text(toml.read_text().replace('image = "tiny"\nmemory = 64', 'image = "tiny:2"\nmemory = 128', 1))
    courses.create("c1", [lab])
    courses.import_roster("c1", roster(tmp_path, "alice"))
    courses.provision("c1")
    with courses.db.transaction() as session:
        assert [(m.image.label, m.backend) for m in session.scalars(select(Machine))] == [("tiny:2", "qemu")]


def test_a_new_image_version_on_another_backend_does_not_move_existing_machines(
        courses: Courses, tmp_path: Path, qemu_recipes: Path) -> None:
    """alice's machine was made on tiny:1 (UML). tiny:2 says QEMU: an upgrade of her lab (which names the bare image
    and no backend) is refused with what to do, and naming the backend in lab.toml lets it through."""
    lab, machine = alice_on_a_lab_copy(courses, tmp_path)
    ImageStore(courses.settings).build(find_recipe(qemu_recipes, "tiny"))
    toml = lab / "lab.toml"
    toml.write_text(toml.read_text().replace('image = "tiny"\nmemory = 64', 'image = "tiny"\nmemory = 128', 1))
    with pytest.raises(ConflictError, match=f"machine {machine} runs on backend uml but its lab now puts it on qemu"):
        courses.provision("c1", upgrade=True)
    toml.write_text(toml.read_text().replace('image = "tiny"\n', 'image = "tiny"\nbackend = "uml"\n', 1))
    assert courses.provision("c1", upgrade=True).upgraded == 1
    with courses.db.transaction() as session:
        assert [(m.name, m.backend) for m in session.scalars(select(Machine))] == [(machine, "uml")]


def test_status_loads_no_lab_but_a_start_does(courses: Courses, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A status needs no start order, so it does not validate and render the lab (``labkit course status``)."""
    lab, name = alice_on_a_lab_copy(courses, tmp_path)
    monkeypatch.setattr(loaded_labs, "_kept", {})  # nothing kept from the provisioning
    loads = count_lab_loads(monkeypatch)
    rows = courses.status("c1")
    assert [(r["student"], r["machine"], r["name"], r["state"]) for r in rows] == [("alice", "box", name, "stopped")]
    assert loads == []
    assert [t.wave for t in courses.targets("c1")] == [0]
    assert loads == [lab]


def test_admission_control_refuses_the_whole_start(courses: Courses, tmp_path: Path) -> None:
    courses.create("c1", [LABS / "two-hosts"], memory_budget_mb=100)
    courses.import_roster("c1", roster(tmp_path, "alice"))
    courses.provision("c1")
    with pytest.raises(AdmissionError, match="needs 128 MB, but 0 MB of the 100 MB memory budget"):
        courses.start("c1")
    assert {row["state"] for row in courses.status("c1")} == {"stopped"}
    courses.create("c2", [LABS / "intro-shell", LABS / "two-hosts"], max_running_per_student=2)
    courses.import_roster("c2", roster(tmp_path, "dave", name="r2.csv"))
    courses.provision("c2")
    with pytest.raises(AdmissionError, match="dave would run more than 2"):
        courses.start("c2")
    with pytest.raises(NotFoundError, match="student zed"):
        courses.start("c2", student="zed")


def test_machines_another_start_is_booting_count_against_the_budget(courses: Courses, tmp_path: Path) -> None:
    """Starts of one course admit one at a time but boot side by side: each sees what the others promised."""
    courses.create("c3", [LABS / "intro-shell"], memory_budget_mb=100)
    courses.import_roster("c3", roster(tmp_path, "erin", "finn"))
    courses.provision("c3")
    erin = courses.targets("c3", student="erin")[0]
    with starting.promise(courses.settings.run_dir, "c3", {erin.name: 64}):
        assert starting.promised(courses.settings.run_dir, "c3") == {erin.name: 64}
        with pytest.raises(AdmissionError, match=r"needs 64 MB, but 64 MB .* \(by erin 64 MB\)"):
            courses.start("c3", student="finn")
        assert courses.start("c3", student="erin") == courses.status("c3", student="erin")  # not booted twice
        assert courses.status("c3", student="erin")[0]["state"] == "stopped"
    assert starting.promised(courses.settings.run_dir, "c3") == {}
    # what another course's start is booting counts against the budget too (it uses the same host)
    with (starting.promise(courses.settings.run_dir, "other", {"c9s1l1-box": 64}),
          pytest.raises(AdmissionError, match=r"needs 64 MB, but 64 MB .* \(by machine c9s1l1-box 64 MB\)")):
        courses.start("c3", student="finn")
    # A promise left by a process that died is ignored and cleaned up.
    folder = courses.settings.run_dir / ".course-c3.starting"
    (folder / "1-dead.json").write_text(json.dumps({"pid": 1, "start_time": 1, "machines": {erin.name: 64}}))
    assert starting.promised(courses.settings.run_dir, "c3") == {}
    assert list(folder.iterdir()) == []


def test_two_provisions_at_once_and_a_killed_one(courses: Courses, tmp_path: Path) -> None:
    courses.create("c1", [LABS / "two-hosts"])
    courses.import_roster("c1", roster(tmp_path, *[f"s{i}" for i in range(12)]))
    # TMPDIR: the killed run cannot remove its staging folders; they stay in this test's own folder
    env = {**os.environ, "LABKIT_HOME": str(courses.settings.home), "LABKIT_RUN": str(courses.settings.run_dir),
           "LABKIT_CACHE": str(courses.settings.cache), "LABKIT_RECIPES": str(courses.settings.recipes),
           "TMPDIR": str(tmp_path)}
    command = [str(Path(sys.executable).with_name("labkit")), "course", "provision", "c1"]
    killed = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while len(list(courses.settings.overlays.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)  # kill it in the middle of its work
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(courses.status("c1")) < 24, "the kill came too late to test an interrupted run"
    both = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs
    status = courses.status("c1")
    assert len(status) == 24
    for row in status:
        name = row["name"]
        assert count_allocated(courses.settings.overlays / f"{name}.cow") == 0
        assert (courses.settings.seeds / f"{name}.img").stat().st_size > 0
    assert not [p for p in courses.settings.overlays.iterdir() if p.name.startswith(".")]


def test_a_course_whose_sessions_were_begun_can_be_removed(courses: Courses, tmp_path: Path) -> None:
    courses.create("c1", [LABS / "intro-shell"])
    courses.import_roster("c1", roster(tmp_path, "alice"))
    courses.provision("c1")
    courses.session_begin("c1")
    courses.session_end("c1")
    courses.session_begin("c1")  # one ended session and one still open
    courses.remove("c1", purge=True)
    courses.create("c1", [LABS / "intro-shell"])  # a new course of the same name starts without the old sessions
    assert courses.session_begin("c1")["course"] == "c1"


def test_provisioned_machines_reach_what_their_lab_allows_and_an_upgrade_changes_it(courses: Courses,
                                                                                     tmp_path: Path) -> None:
    lab, name = alice_on_a_lab_copy(courses, tmp_path)

    def reach() -> tuple[tuple[int, ...], bool]:
        with courses.db.transaction() as session:
            machine = session.scalar(select(Machine).where(Machine.name == name))
            assert machine is not None
            spec = courses.machines.spec(machine)
        return spec.host_ports, spec.outbound

    assert reach() == ((), True)  # no [reach] table: no host port, outbound traffic
    toml = lab / "lab.toml"
    toml.write_text(toml.read_text().replace("[machines.box]", "[reach]\nhost_ports = [3142]\noutbound = false\n\n"
                                                                "[machines.box]", 1))
    courses.provision("c1", upgrade=True)
    assert reach() == ((3142,), False)
