"""A lab folder's fingerprint: provisioning records it, and a changed lab is noticed instead of silently applied."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Folders of a lab that do not shape students' machines (solutions and docs change freely).
IGNORED = {"solution", "__pycache__", ".git"}


def lab_digest(folder: Path) -> str:
    """sha256 over every file's relative path, mode and content (symlinks by their target)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED)
        for name in sorted(files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if rel == "README.md":
                continue
            digest.update(rel.encode() + b"\0")
            if path.is_symlink():
                digest.update(b"link:" + os.readlink(path).encode())
            else:
                digest.update(oct(path.stat().st_mode & 0o777).encode() + b"\0" + path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def changed_files(folder: Path, recorded: dict[str, str]) -> list[str]:
    """Relative paths whose content differs from ``recorded`` ({path: sha256}), for a readable upgrade message."""
    now = file_hashes(folder)
    return sorted(p for p in set(now) | set(recorded) if now.get(p) != recorded.get(p))


def file_hashes(folder: Path) -> dict[str, str]:
    hashes = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED)
        for name in files:
            path = Path(root) / name
            if not path.is_symlink():
                hashes[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes
