"""labkit's COW code against the real UML kernel (/usr/bin/linux), both ways, without root.

(a) A COW that labkit writes boots in UML, takes the guest's writes, refuses a reset while UML holds it, and merges into
    an image whose files debugfs can read.
(b) A COW that UML creates and fills (dd with O_DIRECT to chosen sectors of a plain zero disk) reads back through labkit
    with exactly those sectors and bytes, and its header matches the one labkit writes for the same backing file.
(c) When the base changes, UML and labkit refuse in the same words.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from labkit.errors import ConflictError, OverlayError
from labkit.overlays import umlcow
from labkit.overlays.umlcow import UmlCow

pytestmark = pytest.mark.guest

LINUX = shutil.which("linux") or "/usr/bin/linux"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "mount", "umount", "dd", "sync", "poweroff", "echo", "cat", "sleep")
DATA_SECTORS = 2051  # not a multiple of 8: the last bitmap byte is partial
WRITES = {0: 1, 7: 1, 8: 2, 1000: 1, DATA_SECTORS - 1: 1}  # first sector -> sector count, first and last included
BOOT_TIMEOUT = 60

INIT_A = """#!/bin/sh
/bin/mount -t proc proc /proc
echo LKMARKER-A-UP
read answer
echo "written by the guest: $answer" > /guest-note
sync
echo LKMARKER-A-DONE
poweroff -f
"""

INIT_C = """#!/bin/sh
/bin/mount -t proc proc /proc
echo LKMARKER-C-UP
poweroff -f
"""


def pattern(sector: int) -> bytes:
    return (f"<sector {sector:05d}>".encode() * 40)[:508] + b"####"


def init_b() -> str:
    lines = ["#!/bin/sh", "/bin/mount -t proc proc /proc", "echo LKMARKER-B-UP"]
    for first, count in WRITES.items():
        lines.append(f"dd if=/pat{first} of=/dev/ubdb bs=512 seek={first} count={count} oflag=direct 2>/dev/null"
                     f" && echo LKMARKER-WROTE-{first}")
    lines += ["sync", "echo LKMARKER-B-DONE", "poweroff -f", ""]
    return "\n".join(lines)


@dataclass
class Lab:
    """A short folder (for uml_dir's socket paths) holding a busybox root image."""

    dir: Path
    base: Path


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    if not os.access(LINUX, os.X_OK) or not os.access(BUSYBOX, os.X_OK) or not shutil.which("mkfs.ext4"):
        pytest.skip("needs /usr/bin/linux, busybox-static and mkfs.ext4")
    folder = Path(tempfile.mkdtemp(prefix="lk", dir="/tmp"))
    try:
        root = folder / "root"
        for sub in ("bin", "dev", "proc", "sys", "tmp"):
            (root / sub).mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        for applet in APPLETS:
            (root / "bin" / applet).symlink_to("busybox")
        for name, text in (("init-a", INIT_A), ("init-b", init_b()), ("init-c", INIT_C)):
            (root / name).write_text(text)
            (root / name).chmod(0o755)
        for first, count in WRITES.items():
            (root / f"pat{first}").write_bytes(b"".join(pattern(first + i) for i in range(count)))
        base = folder / "base.img"
        subprocess.run(["mkfs.ext4", "-q", "-d", str(root), str(base), "16M"], check=True, timeout=60)
        yield Lab(folder, base)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def uml_command(lab: Lab, name: str, init: str, *disks: str) -> list[str]:
    args = [LINUX, "mem=64M", "root=/dev/ubda", "rw", "con=null", "con0=fd:0,fd:1", f"init=/{init}",
            f"uml_dir={lab.dir / 'uml'}", f"umid=lk{os.getpid()}{name}"]
    return args + [f"ubd{n}={disk}" for n, disk in enumerate(disks)]


def stop(child: pexpect.spawn) -> None:
    """Kill the UML process group we started (pexpect made the child a session leader), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.close(force=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_labkit_cow_boots_in_uml(lab: Lab) -> None:
    cow = lab.dir / "a.cow"
    overlay = UmlCow()
    overlay.create(lab.base, cow)
    base_hash = sha256(lab.base)
    child = pexpect.spawn(LINUX, uml_command(lab, "a", "init-a", f"{cow.name},{lab.base.name}")[1:],
                          cwd=str(lab.dir), timeout=BOOT_TIMEOUT, encoding="utf-8", codec_errors="replace")
    try:
        child.expect("LKMARKER-A-UP")
        with pytest.raises(ConflictError, match="in use by a running machine"):
            overlay.reset(cow, lab.base)
        child.sendline("hello-from-the-host")
        child.expect("LKMARKER-A-DONE")
        child.expect(pexpect.EOF)
        child.close()
        assert (child.exitstatus, child.signalstatus) == (0, None)
    finally:
        stop(child)

    assert sha256(lab.base) == base_hash  # UML wrote only to the overlay
    assert umlcow.count_allocated(cow) > 0
    umlcow.check_backing(umlcow.read_header(cow), lab.base)

    merged = lab.dir / "a-merged.img"
    umlcow.merge(cow, merged)
    note = subprocess.run(["debugfs", "-R", "cat /guest-note", str(merged)], capture_output=True, text=True,
                          timeout=30, check=True).stdout
    assert "written by the guest: hello-from-the-host" in note
    assert sha256(lab.base) == base_hash

    overlay.reset(cow, lab.base)  # the machine is down now
    assert overlay.info(cow).allocated_bytes == 0


def test_uml_cow_reads_in_labkit(lab: Lab) -> None:
    raw = lab.dir / "data.raw"
    with open(raw, "wb") as f:
        f.truncate(DATA_SECTORS * 512)
    cow = lab.dir / "data.cow"
    root_cow = lab.dir / "b-root.cow"
    umlcow.write_cow(root_cow, lab.base)
    child = pexpect.spawn(LINUX, uml_command(lab, "b", "init-b", f"{root_cow.name},{lab.base.name}",
                                             f"{cow.name},{raw.name}")[1:],
                          cwd=str(lab.dir), timeout=BOOT_TIMEOUT, encoding="utf-8", codec_errors="replace")
    try:
        child.expect("LKMARKER-B-DONE")
        wrote = {int(n) for n in re.findall(r"LKMARKER-WROTE-(\d+)", child.before)}
        child.expect(pexpect.EOF)
        child.close()
    finally:
        stop(child)
    assert wrote == set(WRITES)

    header = umlcow.read_header(cow)
    assert (header.version, header.variant, header.backing_file) == (3, "v3", str(raw))
    assert (header.size, header.sectorsize, header.alignment) == (DATA_SECTORS * 512, 512, 4096)
    assert (header.bitmap_offset, header.data_offset) == (8192, 8192 + 4096)
    assert header.mtime == int(os.stat(raw).st_mtime)

    expected = sorted(s for first, count in WRITES.items() for s in range(first, first + count))
    assert list(umlcow.allocated_sectors(cow)) == expected
    assert umlcow.count_allocated(cow) == len(expected)
    for sector in expected:
        assert umlcow.read_range(cow, sector * 512, 512) == pattern(sector)
    disk = b"".join(pattern(s) if s in expected else b"\0" * 512 for s in range(DATA_SECTORS))
    assert umlcow.read_range(cow, 0, len(disk) + 4096) == disk

    merged = lab.dir / "data-merged.img"
    umlcow.merge(cow, merged)
    assert merged.read_bytes() == disk
    assert raw.read_bytes() == b"\0" * len(disk)

    # the header labkit writes for the same backing file carries the same fields
    ours = lab.dir / "data-labkit.cow"
    old_cwd = os.getcwd()
    os.chdir(lab.dir)
    try:
        umlcow.write_cow(ours.name, raw.name)
    finally:
        os.chdir(old_cwd)
    theirs_raw, ours_raw = cow.read_bytes()[:4128], ours.read_bytes()[:4128]
    name_end = 32 + len(str(raw)) + 1  # UML leaves heap garbage after the name's NUL; labkit writes zeros
    assert ours_raw[:name_end] == theirs_raw[:name_end]
    assert ours_raw[name_end:] == b"\0" * (4128 - name_end)
    assert os.stat(ours).st_size == os.stat(cow).st_size


def test_changed_base_is_refused_in_the_kernel_words(lab: Lab) -> None:
    data = lab.dir / "c.raw"
    with open(data, "wb") as f:
        f.truncate(64 * 512)
    os.utime(data, (1_700_000_000, 1_700_000_000))
    cow = lab.dir / "c.cow"
    header = umlcow.write_cow(cow, data)
    root_cow = lab.dir / "c-root.cow"
    umlcow.write_cow(root_cow, lab.base)
    os.utime(data, (1_700_000_100, 1_700_000_100))
    with pytest.raises(OverlayError) as err:
        umlcow.check_backing(header)
    words = "mtime mismatch (1700000000 vs 1700000100) of COW header vs backing file"
    assert words in str(err.value)

    child = pexpect.spawn(LINUX, uml_command(lab, "c", "init-c", f"{root_cow.name},{lab.base.name}",
                                             f"{cow.name},{data.name}")[1:],
                          cwd=str(lab.dir), timeout=BOOT_TIMEOUT, encoding="utf-8", codec_errors="replace")
    try:
        child.expect("LKMARKER-C-UP")
        seen = child.before
        child.expect(pexpect.EOF)
        child.close()
    finally:
        stop(child)
    assert words in seen
