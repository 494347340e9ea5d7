"""A class on real guests: provisioning, per-student files, private lab networks, isolation, session end policies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.courses import Courses
from labkit.services.db import Database

pytestmark = pytest.mark.guest
LABS = Path(__file__).resolve().parents[2] / "labs"


@pytest.fixture
def courses(lk_settings: Settings, tmp_path: Path) -> Iterator[Courses]:
    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    db = Database(lk_settings)
    service = Courses(lk_settings, db, actor="teacher")
    service.create("net101", [LABS / "intro-shell", LABS / "two-hosts"])
    roster = tmp_path / "roster.csv"
    roster.write_text("id,name,email\nalice,Alice,a@example.org\nbob,Bob,b@example.org\ncarol,Carol,c@example.org\n")
    service.import_roster("net101", roster)
    yield service
    for view in service.machines.status():  # stop by PID whatever a failed test left running
        if view.state != "stopped":
            service.machines.kill(view.name)
    db.close()


def eth1_address(courses: Courses, machine: str) -> str:
    with courses.machines.open_guest(machine) as guest:
        out = guest.run("ip -4 -o addr show eth1").out.split()
    return out[out.index("inet") + 1].split("/")[0]


def test_a_class_on_real_guests(courses: Courses) -> None:
    report = courses.provision("net101")
    assert report.created == 9  # 3 students x (1 intro-shell machine + 2 two-hosts machines)
    for student in ("alice", "bob"):
        courses.start("net101", student=student)
    rows = {(r["student"], r["lab"], r["machine"]): r for r in courses.status("net101")}
    started = [r for r in rows.values() if r["state"] == "running"]
    assert len(started) == 6 and all(r["student"] in ("alice", "bob") for r in started)
    name = {key: str(row["name"]) for key, row in rows.items()}

    # Rendered per-student files reached the guests, with each student's own values.
    motd = {}
    for student in ("alice", "bob"):
        with courses.machines.open_guest(name[(student, "intro-shell", "box")]) as guest:
            motd[student] = guest.run("cat /etc/motd; hostname").out
    assert "alice" in motd["alice"] and "bob" in motd["bob"] and motd["alice"] != motd["bob"]
    assert motd["alice"].split()[-1] == "box"

    # a reaches b on the student's own lab network ...
    alice_b = eth1_address(courses, name[("alice", "two-hosts", "b")])
    bob_b = eth1_address(courses, name[("bob", "two-hosts", "b")])
    assert alice_b != bob_b  # per-student subnets
    with courses.machines.open_guest(name[("alice", "two-hosts", "a")]) as guest:
        assert guest.run(f"ping -c 1 -W 3 {alice_b}").exit_code == 0
        # ... and never another student's machine, even when told to look for it on the lab network (the route
        # keeps the probe on alice's own switch instead of letting it out through slirp).
        guest.run(f"ip route add {bob_b}/32 dev eth1")
        assert guest.run(f"ping -c 2 -W 2 {bob_b}").exit_code != 0
    with courses.machines.open_guest(name[("bob", "two-hosts", "a")]) as guest:
        assert guest.run(f"ping -c 1 -W 3 {bob_b}").exit_code == 0

    # Work in both labs, then a session end: every machine stops; each-session two-hosts is reset, intro-shell kept.
    courses.session_begin("net101")
    for lab, machine in (("intro-shell", "box"), ("two-hosts", "a")):
        with courses.machines.open_guest(name[("alice", lab, machine)]) as guest:
            assert guest.run("echo mine > /root/work.txt && sync").ok
    result = courses.session_end("net101")
    assert result["reset"] == 6 and result["kept"] == ["intro-shell"]
    assert {r["state"] for r in courses.status("net101")} == {"stopped"}
    overlay = {row["name"]: row["overlay_bytes"] for row in courses.status("net101")}
    assert overlay[name[("alice", "two-hosts", "a")]] == 0
    assert overlay[name[("alice", "intro-shell", "box")]] > 0
    courses.start("net101", student="alice", lab="intro-shell")
    with courses.machines.open_guest(name[("alice", "intro-shell", "box")]) as guest:
        assert guest.run("cat /root/work.txt").out == "mine\n"
    courses.stop("net101")
