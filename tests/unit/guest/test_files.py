"""Parsing what guests print about files, ports and HTTP: stat -c, debugfs stat, /proc/net/tcp, wget -S."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from labkit.errors import GuestError
from labkit.guest.files import (
    STAT_FORMAT,
    FileStat,
    debugfs_link_target,
    parse_debugfs_stat,
    parse_listening_ports,
    parse_stat_line,
    parse_wget_status,
)
from labkit.images.programs import find_program


def test_stat_line_gives_mode_kind_and_owner() -> None:
    assert parse_stat_line("81a4 0 0 1370 1795677371") == FileStat(0o644, 0, 0, 1370, 1795677371, "file")
    assert parse_stat_line("43ff 0 0 20480 1795681357").kind == "dir"
    assert parse_stat_line("43ff 0 0 20480 1795681357").mode == 0o1777  # the sticky bit is kept
    assert parse_stat_line("a1ff 0 0 4 1672924848").kind == "symlink"
    assert parse_stat_line("21b6 0 0 0 1").kind == "char"
    assert parse_stat_line("89ed 1000 100 5 7").mode_text == "4755"
    assert parse_stat_line("89ed 1000 100 5 7").uid == 1000


@pytest.mark.parametrize("line", ["", "stat: can't stat '/x': No such file", "81a4 0 0 12", "zz 0 0 1 1"])
def test_bad_stat_line_is_a_guest_error(line: str) -> None:
    with pytest.raises(GuestError, match="cannot understand the stat output"):
        parse_stat_line(line, "/x")


def test_stat_format_works_with_this_hosts_busybox_and_coreutils(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"hello")
    target.chmod(0o640)
    expected = os.lstat(target)
    for argv in (["stat"], [find_program("busybox"), "stat"]):
        out = subprocess.run([*argv, "-c", STAT_FORMAT, str(target)], capture_output=True, text=True, check=True)
        got = parse_stat_line(out.stdout)
        assert got == FileStat(0o640, expected.st_uid, expected.st_gid, 5, int(expected.st_mtime), "file")


DEBUGFS_FILE = """\
Inode: 102   Type: regular    Mode:  0644   Flags: 0x80000
Generation: 0    Version: 0x00000000:00000000
User:     0   Group:     0   Project:     0   Size: 82
File ACL: 0
Links: 1   Blockcount: 2
Fragment:  Address: 0    Number: 0    Size: 0
 ctime: 0x6b07d855:00000000 -- Thu Nov 26 06:57:25 2026
 atime: 0x6b07d855:00000000 -- Thu Nov 26 06:57:25 2026
 mtime: 0x6b07d854:00000000 -- Thu Nov 26 06:57:24 2026
crtime: 0x6b07d855:00000000 -- Thu Nov 26 06:57:25 2026
"""

DEBUGFS_LINK = """\
Inode: 74   Type: symlink    Mode:  0777   Flags: 0x0
User:  1000   Group:    50   Project:     0   Size: 12
 mtime: 0x6b07d854:00000000 -- Thu Nov 26 06:57:24 2026
Fast link dest: "/bin/busybox"
"""


def test_debugfs_stat() -> None:
    assert parse_debugfs_stat(DEBUGFS_FILE) == FileStat(0o644, 0, 0, 82, 0x6B07D854, "file")
    link = parse_debugfs_stat(DEBUGFS_LINK)
    assert (link.kind, link.uid, link.gid, link.size) == ("symlink", 1000, 50, 12)
    assert debugfs_link_target(DEBUGFS_LINK) == "/bin/busybox"
    assert debugfs_link_target(DEBUGFS_FILE) is None
    with pytest.raises(GuestError, match="no mode"):
        parse_debugfs_stat("Inode: 1   Type: regular")


def test_debugfs_stat_matches_a_real_image(tmp_path: Path) -> None:
    """The parser agrees with os.lstat on an ext4 image made here (mkfs.ext4 -d keeps modes and mtimes)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_bytes(b"welcome\n")
    (root / "etc" / "motd").chmod(0o600)
    image = tmp_path / "disk.img"
    subprocess.run([find_program("mkfs.ext4"), "-q", "-d", str(root), str(image), "8M"], check=True)
    out = subprocess.run([find_program("debugfs"), "-c", "-R", 'stat "/etc/motd"', str(image)],
                         capture_output=True, text=True, check=True).stdout
    got = parse_debugfs_stat(out)
    want = os.lstat(root / "etc" / "motd")
    assert (got.mode, got.size, got.mtime, got.kind) == (0o600, 8, int(want.st_mtime), "file")


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1235 1 0000
   2: 0F02000A:0016 0202000A:A2B4 01 00000000:00000000 02:000A2B3C 00000000     0        0 1236 4 0000
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 00000000000000000000000001000000:0050 00000000000000000000000001000000:D431 06 00000000:00000000
"""


def test_listening_ports_from_proc_net_tcp() -> None:
    # 22 and 8080 listen over IPv4, 443 over IPv6; the established and TIME_WAIT connections are not listeners.
    assert parse_listening_ports(PROC_NET_TCP + PROC_NET_TCP6) == {22, 8080, 443}
    assert parse_listening_ports("") == set()
    assert parse_listening_ports("garbage\n  0: nonsense 0A\n") == set()


def test_wget_status() -> None:
    assert parse_wget_status("  HTTP/1.1 200 OK\n  Content-Type: text/html\n") == 200
    assert parse_wget_status("  HTTP/1.1 302 Found\n  Location: /b\n  HTTP/1.1 404 Not Found\n"
                             "wget: server returned error: HTTP/1.1 404 Not Found\n") == 404
    assert parse_wget_status("wget: can't connect to remote host (127.0.0.1): Connection refused\n") is None
