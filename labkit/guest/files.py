"""What the Guest handle learns about files, ports and web pages, and the parsers that read it from guest output.

The parsers are pure functions so they are tested without a guest: the same `FileStat` comes from ``stat -c`` run in
a live guest and from ``debugfs stat`` on a stopped machine's disk.
"""

from __future__ import annotations

import re
import stat as stat_module
from dataclasses import dataclass

from labkit.errors import GuestError

#: ``stat -c`` format understood by busybox and coreutils alike: raw mode in hex (type and permission bits), uid,
#: gid, size, mtime. ``%f`` is used instead of ``%a``/``%F`` because ``%F`` words differ ("regular empty file").
STAT_FORMAT = "%f %u %g %s %Y"

_KINDS = {
    stat_module.S_IFREG: "file", stat_module.S_IFDIR: "dir", stat_module.S_IFLNK: "symlink",
    stat_module.S_IFCHR: "char", stat_module.S_IFBLK: "block", stat_module.S_IFIFO: "fifo",
    stat_module.S_IFSOCK: "socket",
}
#: debugfs's "Type:" words, mapped to the same kinds.
_DEBUGFS_KINDS = {"regular": "file", "directory": "dir", "symlink": "symlink", "character": "char",
                  "block": "block", "FIFO": "fifo", "socket": "socket"}

#: /proc/net/tcp state of a listening socket.
TCP_LISTEN = "0A"


@dataclass(frozen=True)
class FileStat:
    """A file's metadata as the guest sees it (the link itself for a symbolic link, like ``lstat``).

    ``mode`` holds the permission bits with setuid/setgid/sticky (``0o644``), ``kind`` one of file, dir, symlink,
    char, block, fifo, socket.
    """

    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    kind: str

    @property
    def mode_text(self) -> str:
        """The mode as ``chmod`` takes it, e.g. "0644"."""
        return f"{self.mode:04o}"


def parse_stat_line(line: str, path: str = "file") -> FileStat:
    """Read one line of ``stat -c STAT_FORMAT`` output."""
    fields = line.split()
    try:
        raw, uid, gid, size, mtime = int(fields[0], 16), *(int(f) for f in fields[1:5])
    except (ValueError, IndexError) as err:
        raise GuestError(f"cannot understand the stat output for {path}: {line.strip()[:200]!r}") from err
    if len(fields) != 5:
        raise GuestError(f"cannot understand the stat output for {path}: {line.strip()[:200]!r}")
    return FileStat(raw & 0o7777, uid, gid, size, mtime, _KINDS.get(stat_module.S_IFMT(raw), "other"))


_DEBUGFS_FIELDS = {
    "kind": re.compile(r"Type:\s+(\w+)"),
    "mode": re.compile(r"Mode:\s+([0-7]+)"),
    "uid": re.compile(r"User:\s+(\d+)"),
    "gid": re.compile(r"Group:\s+(\d+)"),
    "size": re.compile(r"\bSize:\s+(\d+)"),
    "mtime": re.compile(r"mtime:\s+0x([0-9a-fA-F]+)"),
}
_LINK_DEST = re.compile(r'Fast link dest:\s+"(.*)"')


def parse_debugfs_stat(text: str, path: str = "file") -> FileStat:
    """Read the output of ``debugfs -R 'stat PATH'`` (as of e2fsprogs 1.47)."""
    found = {}
    for key, pattern in _DEBUGFS_FIELDS.items():
        match = pattern.search(text)
        if match is None:
            raise GuestError(f"cannot understand debugfs's stat output for {path}: no {key} in {text[:200]!r}")
        found[key] = match.group(1)
    return FileStat(
        mode=int(found["mode"], 8) & 0o7777, uid=int(found["uid"]), gid=int(found["gid"]), size=int(found["size"]),
        mtime=int(found["mtime"], 16), kind=_DEBUGFS_KINDS.get(found["kind"], "other"),
    )


def debugfs_link_target(text: str) -> str | None:
    """The target of a short symbolic link from ``debugfs stat`` output (long ones are stored in a data block)."""
    match = _LINK_DEST.search(text)
    return match.group(1) if match else None


def parse_listening_ports(text: str) -> set[int]:
    """TCP ports in LISTEN state from the text of /proc/net/tcp and /proc/net/tcp6 (header lines are skipped)."""
    ports = set()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4 or ":" not in fields[1] or fields[3] != TCP_LISTEN:
            continue
        try:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except ValueError:
            continue
    return ports


_HTTP_STATUS = re.compile(r"HTTP/\d(?:\.\d)?\s+(\d{3})")


def parse_wget_status(stderr: str) -> int | None:
    """The last HTTP status busybox ``wget -S`` printed (after redirects), or None when no server answered."""
    found = _HTTP_STATUS.findall(stderr)
    return int(found[-1]) if found else None
