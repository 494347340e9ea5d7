"""``labkit lab up`` and its verbs through the real ``labkit`` command: real UML guests of the two-hosts lab, real SSH,
real tmux on a private server, real Ctrl-C. Few boots: one life of a lab with many assertions, plus an interrupted
start and a second user."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_short_dir

from .labkit_cli import LABKIT, Labkit, labkit_home

pytestmark = pytest.mark.guest
LABS = Path(__file__).resolve().parents[2] / "labs"


@pytest.fixture(scope="module")
def lk() -> Iterator[Labkit]:
    with labkit_home("lku") as labkit:
        yield labkit


@pytest.fixture()
def lab(tmp_path: Path) -> Path:
    """A copy of the two-hosts lab (b first, then a, which depends on it), so a test may edit it."""
    folder = tmp_path / "two-hosts"
    shutil.copytree(LABS / "two-hosts", folder)
    return folder


@pytest.fixture()
def tmux_dir() -> Iterator[Path]:
    """A private folder for tmux's sockets: every tmux the test (and labkit) runs talks to a server of its own,
    killed afterwards by its socket."""
    folder = make_short_dir("lkt")
    yield folder
    for sock in folder.rglob("*"):
        if sock.is_socket():
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


def as_user(lk: Labkit, user: str, **env: str) -> Labkit:
    other = Labkit({**lk.env, "LABKIT_ACTOR": user, **env})
    other.env.pop("TMUX", None)
    return other


def fails(lk: Labkit, *args: str) -> str:
    """Run a labkit command that must fail with one clear line; return that line."""
    done = lk(*args, check=False)
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("labkit: error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def pane(sock: Path, target: str, wanted: str, seconds: float = 30.0) -> str:
    deadline = time.monotonic() + seconds
    while True:
        text = subprocess.run(["tmux", "-S", str(sock), "capture-pane", "-p", "-J", "-S", "-100", "-t", target],
                              capture_output=True, text=True).stdout
        if wanted in text or time.monotonic() > deadline:
            return text
        time.sleep(0.3)


def ssh_line(output: str, machine: str) -> list[str]:
    """The ssh command ``lab up`` printed for ``machine``, made non-interactive."""
    lines = output.splitlines()
    at = lines.index(f"  {machine}: running")
    command = next(line for line in lines[at:] if line.strip().startswith("ssh:")).split("ssh:", 1)[1]
    argv = shlex.split(command)
    return [argv[0], "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", *argv[1:]]


def test_lab_life_up_ps_check_down_clean(lk: Labkit, lab: Path, tmux_dir: Path) -> None:
    me = as_user(lk, "alice", TMUX_TMPDIR=str(tmux_dir))
    path = str(lab)
    # errors before anything is up: one line each, no traceback
    assert "is not up" in fails(me, "lab", "down", path)
    assert "no lab at" in fails(me, "lab", "up", str(lab.parent / "nowhere"))
    broken = lab.parent / "broken"
    broken.mkdir()
    (broken / "lab.toml").write_text('id = "broken"\n')
    assert "problem" in me("lab", "up", str(broken), check=False).stderr
    assert "no labs are up" in me("lab", "ps").stdout

    first = me("lab", "up", path, "--console", "tmux", timeout=300).stdout
    # both machines run, in start order (b before a, which depends on it), each with its console and ssh
    assert first.index("  b: running") < first.index("  a: running"), first
    assert first.count("console: labkit vm console ") == 2
    for machine in ("a", "b"):
        done = subprocess.run([*ssh_line(first, machine), "hostname"], capture_output=True, text=True, timeout=60)
        assert done.stdout.strip() == machine, done.stderr
    # the tmux session is named after the lab, one window per machine, showing the guest's console
    sock = tmux_dir / f"tmux-{os.getuid()}" / "default"
    windows = subprocess.run(["tmux", "-S", str(sock), "list-windows", "-t", "=two-hosts", "-F", "#{window_name}"],
                             capture_output=True, text=True).stdout.split()
    assert sorted(windows) == ["a", "b"]
    assert "a:/#" in pane(sock, "=two-hosts:a", "a:/#"), "no shell prompt of guest a in its tmux window"
    subprocess.run(["tmux", "-S", str(sock), "kill-server"], check=True)

    # up again: nothing changes, the same is shown
    views = {v["name"]: v["pid"] for v in me.json("vm", "status")}  # type: ignore[union-attr]
    again = me("lab", "up", path).stdout
    assert again == first.split("opened tmux")[0]
    assert {v["name"]: v["pid"] for v in me.json("vm", "status")} == views  # type: ignore[union-attr]
    listed = me.json("lab", "ps")
    assert [(up["lab"], up["seed"], sorted(m["state"] for m in up["machines"])) for up in listed] == [  # type: ignore
        ("two-hosts", 1, ["running", "running"])]

    # the checks run on the machines: untouched, only the baseline check passes
    grades = me.json("lab", "check", path)
    assert [(g["points"], g["max_points"]) for g in grades] == [(1, 11)]  # type: ignore[index]
    assert "PASS  1/1  a still reaches b" in me("lab", "check", path).stdout

    # what 'lab up' refuses while it is up
    assert "up with seed 1" in fails(me, "lab", "up", path, "--seed", "2")
    other_copy = lab.parent / "copy" / "two-hosts"
    shutil.copytree(lab, other_copy)
    assert "from another folder" in fails(me, "lab", "up", str(other_copy))
    assert "is running" in fails(me, "lab", "clean", path)

    down = me("lab", "down", path).stdout
    assert "0 of 2 machines running" in down
    assert "is not running" in fails(me, "lab", "down", path)
    # an edited lab needs new disks: lab up says so and changes nothing
    toml = lab / "lab.toml"
    toml.write_text(toml.read_text().replace("version = 1", "version = 2"))
    assert "changed since it was brought up" in fails(me, "lab", "up", path)
    assert "removed course" in me("lab", "clean", path).stdout
    assert me.json("vm", "status") == []
    assert "no labs are up" in me("lab", "ps").stdout
    assert "nothing to clean" in me("lab", "clean", path).stdout


def machine_states(home: str) -> dict[str, str]:
    with sqlite3.connect(Path(home) / "labkit.db") as db:
        return dict(db.execute("select name, state from machines"))


def held_boot(lab: Path, machine: str) -> Path:
    """A copy of ``lab`` whose ``machine`` does not finish its boot (a startup script that waits for ten minutes): a
    Ctrl-C then lands while it boots, however slow or fast the host is."""
    folder = lab.parent / "held" / lab.name
    shutil.copytree(lab, folder)
    (folder / "startup").mkdir(exist_ok=True)
    (folder / "startup" / f"hold-{machine}.sh").write_text(
        "sleep 600\n")
    toml = folder / "lab.toml"
    toml.write_text(toml.read_text().replace(f"[machines.{machine}]\n",
                                             f'[machines.{machine}]\nstartup = ["startup/hold-{machine}.sh"]\n', 1))
    return folder


def test_ctrl_c_then_crash_and_a_second_user(lk: Labkit, lab: Path, tmux_dir: Path) -> None:
    path, held = str(lab), str(held_boot(lab, "a"))
    alice = as_user(lk, "alice")
    # Ctrl-C (SIGINT to the command's process group) once b runs, while a boots (held)
    start = subprocess.Popen([LABKIT, "lab", "up", held], env=alice.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not any(s in ("starting", "running") for s in machine_states(alice.env["LABKIT_HOME"]).values()):
        assert start.poll() is None, f"lab up ended before a machine started: {start.communicate()}"
        assert time.monotonic() < deadline, "no machine started in two minutes"
        time.sleep(0.02)
    os.killpg(start.pid, signal.SIGINT)
    _, err = start.communicate(timeout=120)
    assert start.returncode == 1 and "interrupted" in err and "Traceback" not in err, err
    # what started stays recorded, and crash kills it by its PID
    started = [m for up in alice.json("lab", "ps") for m in up["machines"] if m["state"] != "stopped"]  # type: ignore
    assert started, "the machine booted before Ctrl-C is not listed"
    assert "0 of 2 machines running" in alice("lab", "crash", held).stdout
    assert "is not running" in fails(alice, "lab", "crash", held)
    alice("lab", "clean", held)

    # alice's lab up again; then bob brings up the same folder, inside his tmux session
    alice("lab", "up", path)
    alice_machines = {m["name"]: m["state"] for up in alice.json("lab", "ps") for m in up["machines"]}  # type: ignore
    sock = tmux_dir / "bob.sock"
    # the first window named: tmux would otherwise name it after what runs in it at the time (sh, bash or sleep)
    subprocess.run(["tmux", "-S", str(sock), "new-session", "-d", "-s", "bobs", "-n", "home", "sleep 600"],
                   check=True)
    server = subprocess.run(["tmux", "-S", str(sock), "display-message", "-p", "#{pid},#{session_id}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    bob = as_user(lk, "bob")
    assert "no labs are up" in bob("lab", "ps").stdout  # alice's lab is not his
    assert "is not up" in fails(bob, "lab", "down", path)
    bob.env["TMUX"] = f"{sock},{server.split(',')[0]},{server.split(',')[1].lstrip('$')}"
    out = bob("lab", "up", path, "--console", "tmux").stdout
    assert "opened 2 tmux windows in this session" in out
    windows = subprocess.run(["tmux", "-S", str(sock), "list-windows", "-t", "=bobs", "-F", "#{window_name}"],
                             capture_output=True, text=True).stdout.split()
    assert sorted(windows) == ["a", "b", "home"]
    bob_lab = json.loads(bob("lab", "ps", "--json").stdout)
    assert len(bob_lab) == 1 and not set(m["name"] for m in bob_lab[0]["machines"]) & set(alice_machines)
    assert "b:/#" in pane(sock, "=bobs:b", "b:/#")
    bob("lab", "crash", path)
    bob("lab", "clean", path)
    # alice's machines went on running through all of bob's
    assert {m["name"]: m["state"] for up in alice.json("lab", "ps") for m in up["machines"]} == alice_machines  # type: ignore
    assert set(alice_machines.values()) == {"running"}
    alice("lab", "down", path)
    alice("lab", "clean", path)
