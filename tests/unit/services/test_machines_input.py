"""Bad input to the machine service gets one clear error and leaves nothing behind (no guest is booted here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from labkit.cli import main
from labkit.config import Settings
from labkit.errors import BadNameError, ConflictError, GuestError, NotFoundError, StateError, TamperedImageError
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.db import Database
from labkit.services.images import Images
from labkit.services.machines import Machines
from labkit.services.models import Event, Machine


@pytest.fixture
def machines(lk_settings: Settings) -> Machines:
    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    db = Database(lk_settings)
    yield Machines(lk_settings, db, actor="tester")
    db.close()


def test_unknown_image(machines: Machines) -> None:
    with pytest.raises(NotFoundError, match="no-such"):
        machines.create("m1", "no-such")
    with pytest.raises(NotFoundError, match="tiny has no version 7"):
        machines.create("m1", "tiny:7")
    with pytest.raises(BadNameError, match="whole-number version"):
        machines.create("m1", "tiny:latest")
    assert machines.status() == []


@pytest.mark.parametrize("name", ["a/b", "../x", "has space", "naïve", "x" * 33, "", "UPPER"])
def test_bad_machine_names_leave_no_files(machines: Machines, name: str) -> None:
    with pytest.raises(BadNameError, match="machine name"):
        machines.create(name, "tiny")
    assert list(machines.settings.overlays.iterdir()) == []
    assert list(machines.settings.seeds.iterdir()) == []


def test_duplicate_name_is_refused_and_the_first_is_untouched(machines: Machines) -> None:
    machines.create("m1", "tiny")
    overlay = machines.settings.overlays / "m1.cow"
    before = overlay.stat().st_mtime_ns
    with pytest.raises(ConflictError, match="already exists"):
        machines.create("m1", "tiny")
    assert overlay.stat().st_mtime_ns == before
    assert [v.name for v in machines.status()] == ["m1"]


def test_forward_errors(machines: Machines) -> None:
    from labkit.runtime.base import Forward
    from labkit.runtime.network import parse_forward

    for text in ("80", "a:b", "70000:22", "22:0", "-1:22"):
        with pytest.raises(BadNameError, match=r"forward|port"):
            parse_forward(text)
    with pytest.raises(ConflictError, match="same host port"):
        machines.create("m1", "tiny", forwards=[Forward(8080, 80), Forward(8080, 81)])


def test_wrong_transitions_on_a_stopped_machine(machines: Machines) -> None:
    machines.create("m1", "tiny")
    for verb in (machines.stop, machines.pause, machines.resume):
        with pytest.raises(StateError, match="it is stopped"):
            verb("m1")
    with machines.open_guest("m1") as guest, pytest.raises(GuestError, match="must run"):
        guest.run("true")  # a stopped machine is read offline; commands need it running
    with pytest.raises(NotFoundError, match="no snapshot 'nope'"):
        machines.restore("m1", "nope")
    with pytest.raises(NotFoundError, match="known machines: m1"):
        machines.start("m2")


def test_tampered_base_is_refused_naming_its_overlays(machines: Machines) -> None:
    machines.create("m1", "tiny")
    machines.create("m2", "tiny")
    image = Path(ImageStore(machines.settings).get("tiny").path)
    image.chmod(0o644)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    for action in (lambda: machines.start("m1"), lambda: machines.reset("m1"), lambda: machines.create("m3", "tiny")):
        with pytest.raises(TamperedImageError, match="m1, m2"):
            action()
    checks = Images(machines.settings, machines.db).verify("tiny")
    assert checks[0].problems and checks[0].machines == ["m1", "m2"]
    with pytest.raises(ConflictError, match="m1, m2"):
        Images(machines.settings, machines.db).remove("tiny:1")


def test_reset_restore_and_remove_are_recorded(machines: Machines) -> None:
    machines.create("m1", "tiny")
    machines.snapshot("m1", "s1")
    machines.restore("m1", "s1")
    machines.reset("m1")
    machines.remove("m1")
    with machines.db.transaction() as session:
        actions = [(e.actor, e.action, e.target) for e in session.query(Event).order_by(Event.id)]
    assert [a for _, a, _ in actions] == ["create", "snapshot", "restore", "reset", "remove"]
    assert {actor for actor, _, _ in actions} == {"tester"}
    assert not (machines.settings.overlays / "m1.cow").exists()
    assert not (machines.settings.snapshots / "m1").exists()


def test_a_full_disk_while_creating_leaves_no_machine(machines: Machines, tmp_path: Path) -> None:
    """The write limit (RLIMIT_FSIZE) makes the kernel refuse the overlay's writes, as a full disk would."""
    script = tmp_path / "create.py"
    script.write_text(
        "import resource, signal, sys\n"
        "from labkit.config import Settings\n"
        "from labkit.services.db import Database\n"
        "from labkit.services.machines import Machines\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "db = Database(Settings.from_env())\n"
        "Machines(Settings.from_env(), db).create('warm', 'tiny')  # the database has its image row now\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
        "try:\n"
        "    Machines(Settings.from_env(), db).create('full', 'tiny')\n"
        "except Exception as err:\n"
        "    print(type(err).__name__, err)\n"
        "    sys.exit(3)\n"
    )
    env = {**os.environ, "LABKIT_HOME": str(machines.settings.home), "LABKIT_RUN": str(machines.settings.run_dir),
           "LABKIT_CACHE": str(machines.settings.cache), "LABKIT_RECIPES": str(machines.settings.recipes)}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "File too large" in done.stdout or "No space" in done.stdout, done.stdout
    assert [v.name for v in machines.status()] == ["warm"]
    assert [p.name for p in machines.settings.overlays.iterdir()] == ["warm.cow"]
    assert [p.name for p in machines.settings.seeds.iterdir()] == ["warm.img"]


def test_host_reach_is_recorded_and_reaches_the_runtime(machines: Machines) -> None:
    with pytest.raises(BadNameError, match="host port 0"):
        machines.create("m1", "tiny", host_ports=[0])
    assert list(machines.settings.overlays.iterdir()) == []
    machines.create("m1", "tiny")
    machines.create("m2", "tiny", host_ports=[3142, 80, 3142], outbound=False)
    with machines.db.transaction() as session:
        rows = {m.name: m for m in session.scalars(select(Machine))}
        default, exam = machines.spec(rows["m1"]), machines.spec(rows["m2"])
    # by default a machine reaches no host port and has outbound traffic
    assert (default.host_ports, default.outbound) == ((), True)
    assert (exam.host_ports, exam.outbound) == ((80, 3142), False)


def test_vm_create_takes_host_ports_and_outbound(machines: Machines, cli_env: dict[str, str]) -> None:
    runner = CliRunner()
    bad = runner.invoke(main, ["vm", "create", "m0", "--image", "tiny", "--host-port", "70000"], env=cli_env)
    assert bad.exit_code != 0 and "70000" in bad.output
    made = runner.invoke(main, ["vm", "create", "m1", "--image", "tiny", "--host-port", "3142", "--no-outbound"],
                         env=cli_env, catch_exceptions=False)
    assert made.exit_code == 0, made.output
    with machines.db.transaction() as session:
        machine = session.scalar(select(Machine).where(Machine.name == "m1"))
        assert machine is not None and (machine.host_ports, machine.outbound) == ([3142], False)
