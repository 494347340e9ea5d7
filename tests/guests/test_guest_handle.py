"""The one Guest handle on a real tiny machine, through the public Python API (`labkit.open_vm`, `labkit.open_guest`).

Running: files, ports and HTTP over SSH, the console and the host forward. Stopped: the same file read offline from the
disk, without booting and without changing the overlay. Two boots in all.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import labkit
from labkit.config import Settings
from labkit.errors import ConflictError, GuestError
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.runtime.base import Forward
from labkit.services.courses import Courses
from labkit.services.db import Database
from labkit.services.machines import Machines

from .conftest import machines_on

pytestmark = pytest.mark.guest
LABS = Path(__file__).resolve().parents[2] / "labs"


@pytest.fixture
def machines(lk_settings: Settings) -> Iterator[Machines]:
    with machines_on(lk_settings, "tiny", actor="teacher") as service:
        yield service


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns


def wait_for(predicate: object, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.3)


def test_guest_handle_running_then_stopped(machines: Machines, lk_settings: Settings) -> None:
    machines.create("gh", "tiny", memory_mb=64, forwards=[Forward(0, 8080)])
    machines.start("gh")
    token = "page-of-gh"
    with labkit.open_vm("gh", settings=lk_settings) as guest:
        setup = guest.run(
            f"mkdir -p /srv/www && echo {token} > /srv/www/index.html && printf 'work\\0\\377' > /root/work.bin "
            "&& chmod 640 /root/work.bin && ln -s work.bin /root/link && httpd -p 8080 -h /srv/www "
            "&& httpd -p 8081 -h /srv/www && sync")
        assert setup.ok, setup.err
        assert guest.last_transport == "ssh"

        # files
        assert guest.exists("/root/work.bin") and guest.exists("/root/link") and not guest.exists("/root/nope")
        running_stat = guest.stat("/root/work.bin")
        assert (running_stat.mode, running_stat.uid, running_stat.size, running_stat.kind) == (0o640, 0, 6, "file")
        assert guest.stat("/root/link").kind == "symlink" and guest.stat("/srv/www").kind == "dir"
        assert guest.read_file("/root/work.bin") == b"work\0\377"
        assert guest.read_file("/root/work.bin", transport="console") == b"work\0\377"
        assert guest.last_transport == "console"
        assert guest.stat("/root/work.bin", transport="console") == running_stat
        with pytest.raises(GuestError, match="cannot stat /root/nope"):
            guest.stat("/root/nope")

        # ports and HTTP: 8080 is forwarded to the host, 8081 is only inside
        wait_for(lambda: guest.port_open(8080) and guest.port_open(8081))
        assert guest.port_open(22) and not guest.port_open(9999)
        assert guest.http_get(8080, "/index.html") == (200, f"{token}\n".encode())
        assert guest.last_transport == "host"
        assert guest.http_get(8081) == (200, f"{token}\n".encode())
        assert guest.last_transport == "ssh"
        assert guest.http_get(8081, "/missing")[0] == 404
        assert guest.http_get(8080, "/", transport="console") == (200, f"{token}\n".encode())
        assert guest.http_get(8080, "/missing")[0] == 404
        with pytest.raises(GuestError, match="no HTTP answer"):
            guest.http_get(9999)

        # a hung command cannot hang the caller
        started = time.monotonic()
        with pytest.raises(GuestError, match="timed out"):
            guest.run("sleep 60", timeout=2)
        assert time.monotonic() - started < 30  # cut off at the timeout, well before the command's 60 s
        with pytest.raises(GuestError, match="stop it to read its disk offline"):
            guest.read_file("/root/work.bin", transport="offline")

    machines.stop("gh")
    overlay = lk_settings.overlays / "gh.cow"
    console_log = lk_settings.logs / "gh.console.log"
    before = fingerprint(overlay), fingerprint(console_log)  # a boot would change both
    with labkit.open_vm("gh", settings=lk_settings) as guest:
        assert guest.read_file("/root/work.bin") == b"work\0\377"
        assert guest.last_transport == "offline"
        assert guest.read_file("/root/link") == b"work\0\377"
        assert guest.stat("/root/work.bin") == running_stat
        assert guest.exists("/srv/www/index.html") and not guest.exists("/root/nope")
        with pytest.raises(GuestError, match="must run to run commands"):
            guest.run("true")
        with pytest.raises(GuestError, match="must run"):
            guest.port_open(22)
        scratch = guest.offline._scratch  # type: ignore[union-attr]
        assert scratch is not None and scratch.exists()
    assert not scratch.exists()
    assert (fingerprint(overlay), fingerprint(console_log)) == before
    assert machines.status("gh")[0].state == "stopped"

    # The overlay is intact: the machine boots again with the work in place.
    machines.start("gh")
    with labkit.open_vm("gh", settings=lk_settings) as guest:
        assert guest.read_file("/root/work.bin") == b"work\0\377"
        assert guest.last_transport == "ssh"
    machines.stop("gh")


def test_open_guest_finds_a_students_machine_and_asks_for_the_lab_when_needed(
        lk_settings: Settings, tmp_path: Path) -> None:
    """No boot: provisioned machines are stopped, so the handles read offline."""
    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    twin = tmp_path / "intro-shell-2"  # a second lab with a machine of the same name, "box"
    shutil.copytree(LABS / "intro-shell", twin)
    toml = twin / "lab.toml"
    toml.write_text(toml.read_text().replace('id = "intro-shell"', 'id = "intro-shell-2"', 1))
    db = Database(lk_settings)
    try:
        courses = Courses(lk_settings, db, actor="teacher")
        courses.create("gc", [LABS / "intro-shell", twin])
        roster = tmp_path / "roster.csv"
        roster.write_text("id,name,email\nalice,Alice,a@example.org\n")
        courses.import_roster("gc", roster)
        courses.provision("gc")
    finally:
        db.close()

    with pytest.raises(ConflictError, match=r"intro-shell, intro-shell-2\); say which with lab="):
        labkit.open_guest("gc", "alice", "box", settings=lk_settings)
    with labkit.open_guest("gc", "alice", "box", lab="intro-shell-2", settings=lk_settings) as guest:
        assert guest.exists("/etc/passwd")
        assert guest.last_transport == "offline"
        assert guest.stat("/etc").kind == "dir"
    with pytest.raises(labkit.LabkitError, match="no provisioned machines"):
        labkit.open_guest("gc", "alice", "nope", settings=lk_settings)
