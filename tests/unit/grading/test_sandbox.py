"""grader.py runs in a real bubblewrap sandbox: what it cannot reach, its time and memory limits, and its Guest calls.

The machine behind the Guest handles is the stand-in (standin.py): these tests are about the sandbox, which is real.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from unit.grading.standin import StandInGuest

from labkit.config import Settings
from labkit.grading import CheckResult, make_check
from labkit.grading.sandbox import SandboxUnavailable, run_grader
from labkit.guest.keys import ensure_key
from labkit.guest.result import Result
from labkit.labs.model import CheckDef, ImageRef, Lab, MachineDef
from labkit.labs.render import render_check
from labkit.services.db import Database
from web import secret_key

HOSTILE = '''
import os
import socket


def attempt(what, action):
    try:
        action()
    except Exception as err:
        return f"{what}: blocked ({type(err).__name__})"
    return f"{what}: GOT THROUGH"


def read(path):
    with open(path, "rb") as file:
        return file.read()


def write(path):
    with open(path, "w") as file:
        file.write("escaped")


def hostile(guests, params):
    tries = [attempt(f"read {name}", lambda p=path: read(p)) for name, path in params["read"].items()]
    tries += [attempt(f"write {name}", lambda p=path: write(p)) for name, path in params["write"].items()]
    tries.append(attempt("connect", lambda: socket.create_connection(("127.0.0.1", params["port"]), timeout=2)))
    tries.append("environment: " + ("LEAKED" if any("LABKIT" in key for key in os.environ) else "clean"))
    return 0, "; ".join(tries)


def hog(guests, params):
    kept = bytearray(1 << 30)
    return 1, f"kept {len(kept)} bytes"


def forever_with_a_child(guests, params):
    import subprocess
    subprocess.Popen(["/usr/bin/sleep", params["marker"]])
    while True:
        pass


def every_call(guests, params):
    import labkit
    box = guests["box"]
    print("a grader may print; it does not disturb labkit")
    out = box.run("cat", stdin=b"in").out
    try:
        box.read_file("/missing")
        missing = "read"
    except labkit.GuestError as err:
        missing = f"GuestError: {err}"
    info = box.stat("/etc/motd")
    page = box.http_get(80, "/")
    return 2, (f"{out}|{box.read_file('/etc/motd').decode()}|{box.exists('/etc/motd')}|{box.exists('/nope')}|"
               f"{info.mode_text} {info.kind}|{box.port_open(22)}|{sorted(box.listening_ports())}|{page}|"
               f"{missing}|{box.last_transport}|{box.name}|{box.forwards}")
'''


def script_check(folder: Path, function: str, timeout: float = 10, params: dict[str, object] | None = None,
                 guest: StandInGuest | None = None) -> CheckResult:
    check = CheckDef(id="s", kind="script", points=2, timeout=timeout, options={"function": function})
    lab = Lab(id="demo", title="Demo", machines={"box": MachineDef("box", ImageRef("tiny"))}, checks=(check,),
              folder=folder)
    spec = render_check(check, {"lab": "demo", "course": "c1", "student": "s1"})
    return make_check(check, lab).run({"box": guest or StandInGuest()}, params or {}, spec)


@pytest.fixture
def lab_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "grader.py").write_text(HOSTILE)
    return folder


def test_a_hostile_grader_reaches_no_secret_no_other_course_no_network(
        lab_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("LABKIT_HOME", str(home))
    settings = Settings.from_env()
    settings.ensure()
    secret = home / "web-secret"
    assert secret_key(settings) == secret.read_text()  # the key that signs sessions, where the web app keeps it
    Database(settings).close()
    database = home / "labkit.db"
    key = ensure_key(settings.keys)
    other = tmp_path / "other-course" / "lab"  # another instructor's lab folder, next to this one
    other.mkdir(parents=True)
    (other / "grader.py").write_text("ANSWERS = 'secret'\n")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    reads = {"session key": str(secret), "database": str(database), "ssh key": str(key),
             "other course": str(other / "grader.py"), "home": str(home)}
    writes = {"own folder": "/lab/new.py", "host tmp": str(tmp_path / "escape.txt"),
              "own folder by its host path": str(lab_folder / "new.py"), "root": "/escape.txt"}
    try:
        result = script_check(lab_folder, "hostile", params={"read": reads, "write": writes, "port": port})
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    tries = result.feedback.split("; ")
    assert len(tries) == len(reads) + len(writes) + 2, result.feedback
    for line in tries[:-1]:
        assert ": blocked (" in line, result.feedback
    assert tries[-1] == "environment: clean"
    assert "GOT THROUGH" not in result.feedback and "Traceback" not in result.evidence
    assert not (tmp_path / "escape.txt").exists() and not (lab_folder / "new.py").exists()
    assert result.points == 0 and result.evidence.startswith("hostile returned 0 of 2")


def test_the_memory_limit_is_a_clear_failed_result(lab_folder: Path) -> None:
    result = script_check(lab_folder, "hog")
    assert not result.passed and result.points == 0
    assert "hog in grader.py ran out of memory (the limit is 256 MiB)" in result.evidence
    assert "Traceback" not in result.evidence


def _running(marker: str) -> bool:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().split(b"\0")[:2] == [b"/usr/bin/sleep",
                                                                                              marker.encode()]:
                return True
        except OSError:
            continue
    return False


def test_an_endless_grader_times_out_in_seconds_and_leaves_no_process(lab_folder: Path) -> None:
    marker = f"{4000 + uuid.uuid4().int % 1000}.{os.getpid()}"
    started = time.monotonic()
    result = script_check(lab_folder, "forever_with_a_child", timeout=1, params={"marker": marker})
    assert time.monotonic() - started < 8
    assert not result.passed and "grader.py timed out: it did not finish within 3 s" in result.evidence
    deadline = time.monotonic() + 5  # the kernel ends the sandbox's PID namespace right after its bwrap
    while _running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(marker)


def test_every_guest_call_goes_through_labkit(lab_folder: Path) -> None:
    guest = StandInGuest(commands={"cat": Result(0, b"echoed", b"", 0.01, "ssh")}, ports={22, 80},
                         pages={(80, "/"): (200, b"<h1>hi</h1>")}, forwards={22: 2222})
    guest.add_file("/etc/motd", b"welcome", mode=0o640)
    result = script_check(lab_folder, "every_call", guest=guest)
    assert result.passed, result.evidence
    out, motd, present, absent, info, port, ports, page, missing, transport, name, forwards = \
        result.feedback.split("|")
    assert (out, motd, present, absent, info, port) == ("echoed", "welcome", "True", "False", "0640 file", "True")
    assert ports == "[22, 80]" and page == "(200, b'<h1>hi</h1>')" and name == "box" and forwards == "{22: 2222}"
    assert missing == "GuestError: cannot read /missing in box: no such file" and transport == "ssh"
    assert [call[0] for call in guest.calls][:2] == ["run", "read_file"]
    assert all(call[2] <= 10 for call in guest.calls)  # each call bounded by the check's time limit


def test_a_grader_symlink_out_of_the_lab_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.py"
    outside.write_text("def full(guests, params):\n    return 2, 'full'\n")
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "grader.py").symlink_to(outside)
    result = script_check(lab, "full")
    assert not result.passed and "leads outside the lab folder" in result.feedback
    (lab / "grader.py").unlink()
    (lab / "impl.py").write_text(outside.read_text())
    (lab / "grader.py").symlink_to(lab / "impl.py")  # inside the lab, even by an absolute path: fine
    assert script_check(lab, "full").passed


def test_without_bwrap_script_checks_are_refused_not_run_unsandboxed(
        lab_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    ran = lab_folder / "ran"
    (lab_folder / "grader.py").write_text(f"open({str(ran)!r}, 'w')\ndef f(g, p):\n    return 1, ''\n")
    with pytest.raises(SandboxUnavailable, match=r"bwrap is not installed .*docs/operations\.md"):
        run_grader(lab_folder, "grader.py", "f", {}, {}, 5)
    result = script_check(lab_folder, "f")
    assert not result.passed and result.unchecked and result.feedback.startswith("not checked: script checks run")
    assert not ran.exists()


def test_without_user_namespaces_script_checks_are_refused(lab_folder: Path) -> None:
    """Inside a bubblewrap sandbox that forbids new user namespaces, bwrap cannot start: labkit says why."""
    code = ("from pathlib import Path\nfrom labkit.grading.sandbox import run_grader\n"
            f"run_grader(Path({str(lab_folder)!r}), 'grader.py', 'hog', {{}}, {{}}, 5)\n")
    done = subprocess.run(["bwrap", "--unshare-user", "--disable-userns", "--ro-bind", "/", "/", "--dev", "/dev",
                           "--proc", "/proc", sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("labkit.grading.sandbox.SandboxUnavailable: script checks run grader.py in a bubblewrap "
                           "sandbox, which cannot start here: bwrap: "), done.stderr
    assert "docs/operations.md" in last


def test_a_lab_folder_that_holds_the_state_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """grader.py sees its whole lab folder: a lab.toml at the top of a folder holding LABKIT_HOME is not graded."""
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "web-secret").write_text("key")
    (tmp_path / "grader.py").write_text("def f(guests, params):\n    return 2, open('/lab/state/web-secret').read()\n")
    result = script_check(tmp_path, "f")
    assert not result.passed and "holds labkit's state folder (LABKIT_HOME), which grader.py would see" in \
        result.feedback
