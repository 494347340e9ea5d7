"""``labkit doctor``: check every prerequisite and print the fix for each one missing."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from labkit.cli.app import App, echo_json, json_option

pass_app = click.make_pass_decorator(App)


@dataclass(frozen=True)
class Finding:
    what: str
    ok: bool
    fix: str = ""


#: program -> Debian package that provides it
PROGRAMS = {
    "linux": "user-mode-linux",
    "slirp": "slirp",
    "slirp4netns": "slirp4netns",
    "vde_switch": "vde2",
    "qemu-img": "qemu-utils",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "fakeroot": "fakeroot",
    "busybox": "busybox-static",
    "dropbear": "dropbear-bin",
    "mmdebstrap": "mmdebstrap",
    "fakechroot": "fakechroot",
    "bwrap": "bubblewrap",
}
EXTRA_PATH = ("/usr/sbin", "/sbin")


def _which(program: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(EXTRA_PATH)
    return shutil.which(program, path=path)


def _user_namespaces() -> bool:
    try:
        return int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
    except (OSError, ValueError):
        return True  # an older kernel without the knob allows them


def findings(app: App) -> list[Finding]:
    found = [Finding(f"program {p}", _which(p) is not None, f"sudo apt-get install -y {pkg}")
             for p, pkg in PROGRAMS.items()]
    home = app.settings.home
    try:
        app.settings.ensure()
        writable = os.access(home, os.W_OK)
    except OSError:
        writable = False
    found.append(Finding(f"state folder {home} is writable", writable,
                         "make it writable by you, or set LABKIT_HOME to a folder you own"))
    sock = app.settings.run_dir / ("x" * 32) / "mconsole"
    found.append(Finding(f"socket paths under {app.settings.run_dir} fit in 108 bytes", len(str(sock)) < 108,
                         "set LABKIT_RUN to a short folder such as /tmp/labkit-$USER"))
    found.append(Finding("user namespaces can be made (each machine's network lives in its own)",
                         _user_namespaces(), "sudo sysctl -w user.max_user_namespaces=15000"))
    found.append(Finding("/dev/net/tun is open to this user (slirp4netns: the guests' outbound traffic)",
                         os.access("/dev/net/tun", os.R_OK | os.W_OK), "sudo chmod 0666 /dev/net/tun"))
    if os.path.exists("/dev/shm"):
        found.append(Finding("/dev/shm is writable (UML keeps guest memory there)", os.access("/dev/shm", os.W_OK),
                             "mount a writable tmpfs on /dev/shm, or set TMPDIR to a writable folder"))
    from labkit.grading.sandbox import probe

    why = probe()
    found.append(Finding("the sandbox for grader.py starts (bubblewrap, user namespaces)", why is None,
                         f"{why}; see docs/operations.md (Sandbox for grader.py)"))
    return found


@click.command("doctor")
@json_option
@pass_app
def command(app: App, as_json: bool) -> None:
    """Check that this host can build images and run machines."""
    results = findings(app)
    if as_json:
        echo_json([r.__dict__ for r in results])
    else:
        for r in results:
            click.echo(f"[{'ok' if r.ok else 'MISSING'}] {r.what}" + ("" if r.ok else f"\n          fix: {r.fix}"))
    if not all(r.ok for r in results):
        sys.exit(1)
