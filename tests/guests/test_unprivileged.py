"""The machine lifecycle passes for an ordinary user, not only for root (CI runs as root).

The test creates the user, gives it a copy of this checkout and a virtual environment built from Debian's
/usr/bin/python3 (root's Python may live in a folder other users cannot read), and runs test_vm_lifecycle.py as that
user, and test_host_reach.py: the private network namespaces that keep guests off the host's loopback are made
without root too. test_qemu_boot.py downloads the QEMU kernel and builds its initrd as that user, and the QEMU
backend's lifecycle (start, console, SSH forward, stop, kill -9, host reach) runs as that user on TCG (the user cannot
open /dev/kvm); pause and running-state snapshots are QMP calls to the same process and are tested as root. Nothing
in it uses root: no sudo, no setuid helper, no capabilities. The user is made for this run and removed after it, so
two runs on one host never meet.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.guest,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(os.geteuid() != 0, reason="the whole suite already runs as an ordinary user"),
]

#: a user of this run alone (removed at the end), so that two runs on one host never end each other's processes
USER_PREFIX = "labkit-ci-"
REPO = Path(__file__).resolve().parents[2]
#: the QEMU backend's lifecycle, as the same user (tests/guests/test_runtime_qemu.py)
QEMU_TESTS = ("test_start_console_forward_and_clean_stop", "test_kill_9_of_qemu_leaves_nothing",
              "test_a_guest_reaches_only_the_host_ports_its_lab_allows")
COPY = ("labkit", "base_images", "tests", "pyproject.toml", "README.md")


def new_user() -> pwd.struct_passwd:
    name = USER_PREFIX + secrets.token_hex(4)
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    return pwd.getpwnam(name)


def as_user(user: pwd.struct_passwd, *command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name, "LANG": "C.UTF-8",
           "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
    # in the user's home: the checkout this suite runs from may be in a folder the user cannot enter
    return subprocess.run(["runuser", "-u", user.pw_name, "--", *command], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=user.pw_dir)


def end_processes_of(uid: int) -> None:
    """Stop, by PID, anything the user's run left behind (it should leave nothing). The user is this run's own."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    os.kill(int(entry.name), signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                continue


def test_lifecycle_as_an_ordinary_user() -> None:
    user = new_user()
    work = Path(tempfile.mkdtemp(prefix="lku", dir="/tmp"))
    try:
        for name in COPY:
            source = REPO / name
            if source.is_dir():
                shutil.copytree(source, work / "src" / name, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache"))
            else:
                shutil.copy2(source, work / "src" / name)
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(work)], check=True)
        work.chmod(0o755)

        venv = work / "venv"
        made = as_user(user, "/usr/bin/python3", "-m", "venv", str(venv), timeout=120)
        assert made.returncode == 0, made.stderr
        installed = as_user(user, str(venv / "bin/pip"), "install", "-q", "-e", f"{work / 'src'}[dev]", timeout=600)
        assert installed.returncode == 0, installed.stderr[-3000:]

        run = as_user(user, str(venv / "bin/pytest"), "-p", "no:cacheprovider", "-q", "-rA",
                      str(work / "src/tests/guests/test_vm_lifecycle.py"),
                      str(work / "src/tests/guests/test_host_reach.py"),
                      str(work / "src/tests/guests/test_qemu_boot.py"),
                      *(f"{work / 'src/tests/guests/test_runtime_qemu.py'}::{name}" for name in QEMU_TESTS),
                      timeout=1800)
        report = run.stdout[-6000:] + run.stderr[-2000:]
        assert run.returncode == 0, report
        assert " passed" in run.stdout and "skipped" not in run.stdout and "failed" not in run.stdout, report
    finally:
        end_processes_of(user.pw_uid)
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["userdel", "--remove", user.pw_name], check=False, capture_output=True)
