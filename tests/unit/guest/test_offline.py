"""The offline transport on a real ext4 base with a real umlcow overlay: reads files, changes nothing, cleans up.

(That sectors written by a guest are seen is proven on a booted machine in tests/guests/test_guest_handle.py.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.errors import GuestError
from labkit.guest import Guest
from labkit.guest.offline import OfflineTransport
from labkit.images.programs import find_program
from labkit.overlays import umlcow
from labkit.overlays.umlcow import UmlCow


@pytest.fixture
def disk(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_bytes(b"welcome\n")
    (root / "etc" / "secret").write_bytes(b"x")
    (root / "etc" / "secret").chmod(0o600)
    (root / "etc" / "motd.link").symlink_to("motd")
    (root / "etc" / "loop").symlink_to("loop")
    (root / "etc" / "dangling").symlink_to("/nowhere")
    (root / "has space.txt").write_bytes(b"spaced")
    base = tmp_path / "base.img"
    subprocess.run([find_program("mkfs.ext4"), "-q", "-d", str(root), str(base), "8M"], check=True)
    overlay = tmp_path / "m.cow"
    umlcow.write_cow(overlay, base)
    return base, overlay


@pytest.fixture
def guest(disk: tuple[Path, Path]) -> Iterator[Guest]:
    overlay = disk[1]
    with Guest("m", None, None, offline=OfflineTransport("m", overlay, UmlCow())) as handle:
        yield handle


def fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns


def test_reads_files_stats_and_follows_links(guest: Guest, disk: tuple[Path, Path]) -> None:
    before = [fingerprint(p) for p in disk]
    assert guest.read_file("/etc/motd") == b"welcome\n"
    assert guest.last_transport == "offline"
    assert guest.read_file("/etc/motd.link") == b"welcome\n"
    assert guest.read_file("/has space.txt") == b"spaced"
    assert guest.exists("/etc/motd") and guest.exists("/etc/dangling") and not guest.exists("/etc/nope")
    secret = guest.stat("/etc/secret")
    assert (secret.mode, secret.size, secret.kind) == (0o600, 1, "file")
    assert guest.stat("/etc").kind == "dir"
    assert guest.stat("/etc/motd.link").kind == "symlink"
    with pytest.raises(GuestError, match="no such file"):
        guest.read_file("/etc/dangling")
    with pytest.raises(GuestError, match="too many symbolic links"):
        guest.read_file("/etc/loop")
    with pytest.raises(GuestError, match="is a directory"):
        guest.read_file("/etc")
    with pytest.raises(GuestError, match="no /etc/nope"):
        guest.stat("/etc/nope")
    assert [fingerprint(p) for p in disk] == before


def test_only_reading_works_offline(guest: Guest) -> None:
    with pytest.raises(GuestError, match="it must run to run commands"):
        guest.run("true")
    with pytest.raises(GuestError, match="must run"):
        guest.port_open(22)
    with pytest.raises(GuestError, match="must run"):
        guest.http_get(80)
    with pytest.raises(GuestError, match="no ssh to use"):
        guest.read_file("/etc/motd", transport="ssh")
    with pytest.raises(GuestError, match="unknown transport"):
        guest.exists("/etc/motd", transport="carrier-pigeon")
    with pytest.raises(GuestError, match="absolute path"):
        guest.read_file('/etc/"motd"')


def test_the_merged_image_is_cached_and_removed_on_close(disk: tuple[Path, Path]) -> None:
    overlay = disk[1]
    offline = OfflineTransport("m", overlay, UmlCow())
    guest = Guest("m", None, None, offline=offline)
    guest.read_file("/etc/motd")
    scratch = offline._scratch
    assert scratch is not None and (scratch / "disk.img").exists()
    guest.exists("/etc/motd")
    assert offline._scratch == scratch  # one merge for the life of the handle
    closed = []
    guest.on_close(lambda: closed.append(True))
    guest.close()
    assert not scratch.exists() and closed == [True]


def test_a_missing_overlay_is_one_clear_error(tmp_path: Path, disk: tuple[Path, Path]) -> None:
    guest = Guest("m", None, None, offline=OfflineTransport("m", tmp_path / "gone.cow", UmlCow()))
    with guest, pytest.raises(GuestError, match="no overlay"):
        guest.read_file("/etc/motd")
