"""Grading hostile and broken guests: every case ends in clear per-check results, and the others are still graded.

One class, one grading run: each student's machine is hostile in its own way (grader key deleted, sshd stopped, root
password changed, locked out of SSH and the console, disk full, fork bomb, never started, does not boot, crashed),
and one untouched student is the control. Seven boots in all; the whole module takes about two minutes on 2 cores.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_settings, make_short_dir, settings_env

from labkit.cli import main
from labkit.config import Settings
from labkit.errors import LabkitError
from labkit.grading.result import CheckResult
from labkit.grading.runner import grade
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.labs.loader import load_lab
from labkit.labs.student import for_student
from labkit.services.courses import Courses
from labkit.services.db import Database
from labkit.services.grading import Grading, RunReport

pytestmark = pytest.mark.guest

LAB_TOML = """\
id = "hostile"
title = "Hostile guests"
version = 1

[machines.box]
image = "tiny"
memory = 64
forwards = [22]

[[checks]]
id = "alive"
title = "A command answers"
kind = "command"
command = "echo alive-$((6*7))"
equals = "alive-42"
baseline_pass = true

[[checks]]
id = "passwd"
title = "root is in /etc/passwd"
kind = "file"
path = "/etc/passwd"
regex = "^root:x:0:0:"
baseline_pass = true

[[checks]]
id = "hang"
title = "A command that never ends"
kind = "command"
command = "sleep 1000"
timeout = 3
"""

#: A root password hash nobody knows: what a student who changed the password leaves behind for labkit.
OTHER_PASSWORD = "sed -i 's/^root:[^:]*:/root:$1$x$AAAAAAAAAAAAAAAAAAAAA.:/' /etc/shadow"
#: What each student does to their running machine (over SSH, as root, before grading).
HOSTILE = {
    "nokey": "rm -f /root/.ssh/authorized_keys",
    "nossh": "kill $(pidof dropbear)",
    "passwd": OTHER_PASSWORD + "; grep '^root:' /etc/shadow",
    # No way in: the grader key is gone, the console asks for a login instead of giving a shell (busybox init rereads
    # inittab on HUP; the old console shell is killed so getty takes the console), and the password is changed.
    "locked": ("rm -f /root/.ssh/authorized_keys; sed -i 's|^::respawn:.*|::respawn:/sbin/getty -L 0 console|' "
               "/etc/inittab; kill -HUP 1; sleep 1; for p in $(pidof sh); do "
               "[ $(cut -d' ' -f4 /proc/$p/stat) = 1 ] && kill -9 $p; done; " + OTHER_PASSWORD),
    "disk": "dd if=/dev/zero of=/fill bs=1M; sync; df /",
    # A real fork bomb, as an unprivileged user so the guest's process limit holds it (root ignores RLIMIT_NPROC):
    # every process forks two more and then stays (asleep), so the guest's process table is full (~150) and every
    # fork the grader's commands make competes with the bomb's, without taking the host down. It is set off again
    # every 0.2 s. (Bombs whose processes end at once came and went: in some runs none was left when grading began.)
    "fork": ("setsid su nobody -s /bin/sh -c 'ulimit -u 150; b(){ b|b& sleep 600; }; "
             "while :; do b; sleep 0.2; done' </dev/null >/dev/null 2>&1 &"),
}
#: Students whose machine never runs at grading time.
STOPPED = ("never", "broken", "crashed")
STUDENTS = ("ok", *HOSTILE, *STOPPED)
LIVE_CHECKS = ("alive", "hang")


@dataclass
class HostileRun:
    settings: Settings
    courses: Courses
    names: dict[str, str]
    report: RunReport
    elapsed: float
    setup_output: dict[str, str]
    #: the fork bomb's processes (of user nobody) just before grading
    fork_processes: int

    def results(self, student: str) -> dict[str, CheckResult]:
        grade_ = next(g for g in self.report.grades if g.student == student)
        return {r.check_id: r for r in grade_.results}


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileRun]:
    home = make_short_dir("lkh")
    settings = make_settings(home / "home")
    db = Database(settings)
    courses = Courses(settings, db, actor="teacher")
    try:
        ImageStore(settings).build(find_recipe(settings.recipes, "tiny"))
        lab = home / "hostile"
        lab.mkdir()
        (lab / "lab.toml").write_text(LAB_TOML)
        (lab / "instructions.md").write_text("# Hostile guests\n")
        courses.create("hc", [lab])
        roster = home / "roster.csv"
        roster.write_text("id,name,email\n" + "".join(f"{s},{s},{s}@example.org\n" for s in STUDENTS))
        courses.import_roster("hc", roster)
        courses.provision("hc")
        names = {t.student: t.name for t in courses.targets("hc")}

        # "broken" does not boot: its overlay names a backing mtime the image does not have, so UML refuses it.
        with open(settings.overlays / f"{names['broken']}.cow", "r+b") as cow:
            cow.seek(8)  # v3 header: magic, version, then the backing file's mtime
            cow.write(b"\0\0\0\1")
        with pytest.raises(LabkitError, match="ended while starting"):
            courses.machines.start(names["broken"])
        running = [s for s in STUDENTS if s not in ("never", "broken")]
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda s: courses.machines.start(names[s], timeout=120), running))

        output = {}
        for student, command in HOSTILE.items():
            with courses.machines.open_guest(names[student]) as guest:
                result = guest.run(command, timeout=120)
                output[student] = result.out + result.err
        # "crashed": its console supervisor is killed, and the machine goes down with it.
        supervisor = next(v.supervisor_pid for v in courses.machines.status() if v.name == names["crashed"])
        assert supervisor is not None
        os.kill(supervisor, signal.SIGKILL)

        # Look until the bomb is seen raging; should it not have taken hold, set it off again.
        with courses.machines.open_guest(names["fork"]) as guest:
            fork_processes = 0
            for _attempt in range(3):
                deadline = time.monotonic() + 10
                while fork_processes < 10 and time.monotonic() < deadline:
                    time.sleep(1)
                    fork_processes = max(fork_processes, int(guest.run("ps | grep -c nobody", timeout=60).out))
                if fork_processes >= 10:
                    break
                guest.run(HOSTILE["fork"], timeout=120)
        started = time.monotonic()
        report = Grading(settings, db, actor="teacher").grade("hc")
        elapsed = time.monotonic() - started
        yield HostileRun(settings, courses, names, report, elapsed, output, fork_processes)
    finally:
        for view in courses.machines.status():  # stop by PID whatever is left running
            if view.state != "stopped":
                courses.machines.kill(view.name)
        db.close()
        shutil.rmtree(home, ignore_errors=True)


def test_every_student_is_graded_in_one_bounded_run(hostile: HostileRun) -> None:
    assert sorted(g.student for g in hostile.report.grades) == sorted(STUDENTS)
    assert all(len(g.results) == 3 for g in hostile.report.grades)
    ok = hostile.results("ok")
    assert ok["alive"].passed and ok["passwd"].passed and ok["alive"].transport == "ssh"
    # The slowest student is the locked-out one: each of its checks waits for the console login to give up.
    assert hostile.elapsed < 120, f"grading took {hostile.elapsed:.0f} s"
    for g in hostile.report.grades:
        for r in g.results:
            assert r.duration < 35, f"{g.student}/{r.check_id} took {r.duration:.1f} s"
            assert r.passed or r.feedback, f"{g.student}/{r.check_id} failed without saying why"


def test_deleted_grader_key_and_stopped_sshd_fall_back_to_the_console(hostile: HostileRun) -> None:
    for student in ("nokey", "nossh"):
        results = hostile.results(student)
        assert results["alive"].passed and results["passwd"].passed, results
        assert results["alive"].transport == "console" and results["passwd"].transport == "console"
    # The stored results say so too.
    latest = Grading(hostile.settings, hostile.courses.db).latest("hc", "nokey")
    assert {r.check_id: r.transport for r in latest[0].results}["alive"] == "console"


def test_a_changed_root_password_does_not_matter_to_the_grader_key(hostile: HostileRun) -> None:
    assert "root:$1$x$AAAA" in hostile.setup_output["passwd"]
    results = hostile.results("passwd")
    assert results["alive"].passed and results["alive"].transport == "ssh"
    assert results["passwd"].passed and results["passwd"].transport == "ssh"


def test_no_key_and_a_changed_password_is_a_clear_failure(hostile: HostileRun) -> None:
    results = hostile.results("locked")
    for check_id, r in results.items():
        assert not r.passed and r.points == 0 and r.unchecked, check_id  # "not checked", never a failure
        assert "not checked: labkit could not reach machine" in r.feedback and "console" in r.feedback, r.feedback
        assert r.duration < 35
    # labkit did try the console login, with its own password, and the guest refused it.
    log = (hostile.settings.logs / f"{hostile.names['locked']}.console.log").read_text(errors="replace")
    assert "login:" in log and "Login incorrect" in log


def test_a_full_disk_still_answers(hostile: HostileRun) -> None:
    assert "No space left on device" in hostile.setup_output["disk"]
    results = hostile.results("disk")
    assert results["alive"].passed and results["passwd"].passed
    assert results["alive"].transport == "ssh"


def test_a_command_that_never_ends_times_out_and_the_run_goes_on(hostile: HostileRun) -> None:
    for student in ("ok", "nokey", "nossh", "passwd", "disk", "fork"):
        hang = hostile.results(student)["hang"]
        assert not hang.passed and "timed out after" in hang.feedback, (student, hang.feedback)
        assert hang.duration < 3 + 2.5, (student, hang.duration)
        if student != "fork":
            assert hostile.results(student)["passwd"].passed  # the check after it ran


def test_a_fork_bomb_neither_hangs_grading_nor_hurts_the_host(hostile: HostileRun) -> None:
    assert hostile.fork_processes >= 10, "the fork bomb was not running during grading"
    # The guest is slow (its load goes past 30): a check answers, or fails saying it ran out of time.
    for r in hostile.results("fork").values():
        assert r.passed or "timed out" in r.feedback or "time limit" in r.feedback, r.feedback
    started = time.monotonic()
    subprocess.run(["true"], check=True)
    assert time.monotonic() - started < 1.0
    assert os.getloadavg()[0] < 50


def test_machines_that_are_not_running_are_not_checked_clearly(hostile: HostileRun) -> None:
    # a stopped machine: commands cannot run ("not checked", never failed), files are read offline
    crashed = hostile.results("crashed")
    for check_id in LIVE_CHECKS:
        assert not crashed[check_id].passed and crashed[check_id].unchecked
        assert "is stopped: it must run to run commands" in crashed[check_id].feedback
    assert crashed["passwd"].passed and crashed["passwd"].transport == "offline"
    # a machine never started has no work of the student's on it: nothing is checked; "broken" never booted either
    # (UML refused its overlay), so its empty overlay says the same
    for student in ("never", "broken"):
        assert all(not r.passed and r.unchecked and "was never started" in r.feedback
                   for r in hostile.results(student).values()), student
    states = {v.name: v.state for v in hostile.courses.machines.status()}
    assert all(states[hostile.names[s]] == "stopped" for s in STOPPED)


def test_a_check_on_an_unknown_machine(hostile: HostileRun, tmp_path: Path) -> None:
    lab = tmp_path / "ghost"
    lab.mkdir()
    (lab / "lab.toml").write_text(LAB_TOML.replace('kind = "file"', 'machine = "ghost"\nkind = "file"'))
    (lab / "instructions.md").write_text("# Ghost\n")
    result = CliRunner().invoke(main, ["lab", "validate", str(lab)], env=settings_env(hostile.settings))
    assert result.exit_code != 0
    assert "check passwd runs on machine 'ghost', which is not defined" in result.output

    # The runner alone (the Lab model refuses such a lab, but `grade` also takes checks from outside the lab): that
    # check fails naming the machine, and the others still run.
    loaded = load_lab(hostile.settings.home.parent / "hostile")
    by_id = {c.id: c for c in loaded.checks}
    checks = [by_id["alive"], dataclasses.replace(by_id["passwd"], id="ghost-file", machine="ghost")]
    mine = for_student(loaded, "hc", "ok", "a-secret-for-this-test")
    with hostile.courses.machines.open_guest(hostile.names["ok"]) as guest:
        results = {r.check_id: r for r in grade(loaded, checks, {"box": guest}, mine.params, mine.context)}
    assert results["alive"].passed
    assert not results["ghost-file"].passed and "machine 'ghost'" in results["ghost-file"].feedback
