"""``labkit doctor``: check every prerequisite and print the fix for each one missing."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

import click

from labkit.cli.app import App, echo_json, json_option
from labkit.errors import LabkitError
from labkit.runtime import backend_kinds, get_backend

pass_app = click.make_pass_decorator(App)


@dataclass(frozen=True)
class Finding:
    what: str
    ok: bool
    fix: str = ""
    #: the backend kind this finding is about ("" for what every part of labkit needs)
    backend: str = ""


#: program -> Debian package that provides it: what building images and reading disks need, whatever the backend
#: (each backend's own programs are its `check`'s business)
PROGRAMS = {
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
    sock = app.settings.run_dir / ("x" * 32) / "console.sock"
    found.append(Finding(f"socket paths under {app.settings.run_dir} fit in 108 bytes", len(str(sock)) < 108,
                         "set LABKIT_RUN to a short folder such as /tmp/labkit-$USER"))
    from labkit.grading.sandbox import probe

    why = probe()
    found.append(Finding("the sandbox for grader.py starts (bubblewrap, user namespaces)", why is None,
                         f"{why}; see docs/operations.md (Sandbox for grader.py)"))
    for kind in backend_kinds():
        found += backend_findings(kind)
    return found


def backend_findings(kind: str) -> list[Finding]:
    """What backend ``kind`` says this host lacks to run its machines (its own `Backend.check`), one finding each;
    one "ok" finding when nothing is missing."""
    try:
        missing = get_backend(kind).check()
    except (LabkitError, ImportError) as err:  # a backend whose own module or dependency cannot load
        return [Finding(f"backend {kind} loads", False, f"{err}", kind)]
    if not missing:
        return [Finding(f"backend {kind}: this host can run its machines", True, backend=kind)]
    return [Finding(f"backend {kind}: {problem}", False, "see docs/operations.md", kind) for problem in missing]


@click.command("doctor")
@json_option
@pass_app
def command(app: App, as_json: bool) -> None:
    """Check that this host can build images and run machines (every registered backend checks its own needs)."""
    results = findings(app)
    if as_json:
        echo_json([r.__dict__ for r in results])
    else:
        for r in results:
            click.echo(f"[{'ok' if r.ok else 'MISSING'}] {r.what}" + ("" if r.ok else f"\n          fix: {r.fix}"))
    if not all(r.ok for r in results):
        sys.exit(1)
