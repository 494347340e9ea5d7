"""Loaded labs, kept per course lab version: loading and validating a lab takes tens of milliseconds, and a student's
Start click, a class start and a status page each need the lab's start order.

The key is the lab's folder, the version the course provisioned, the known images with their backends (the lab is
validated against them, and a machine naming no backend gets its image's) and the size and modification time of every
file and folder under it, so an edited lab is loaded again; a provisioning forgets the folder's entries (`forget`), so
an upgrade always validates afresh. A lab whose files changed in the last `RACY_SECONDS` is not kept: a file timestamp
is only as fine as the kernel's clock tick, so an edit right after a load could keep the same key.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from labkit.labs.loader import load_lab
from labkit.labs.model import Lab

#: loaded labs a process keeps (one per course lab version); the oldest goes first
SIZE = 64
#: a lab changed this recently is loaded every time
RACY_SECONDS = 2.0

_kept: dict[tuple[object, ...], Lab] = {}
_guard = threading.Lock()


def stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Every folder under ``folder`` (itself included: adding or removing a file changes a folder's time) and every
    file, with its size and modification time; no file is read. An entry removed while it is read is left out (the
    load that follows says what is missing)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in [".", *sorted(files)]:
            path = os.path.join(root, name)
            with contextlib.suppress(FileNotFoundError):
                info = os.lstat(path)
                found.append((os.path.relpath(path, folder), info.st_size, info.st_mtime_ns))
    return tuple(found)


def course_lab(folder: Path, version: int, known_images: Mapping[str, str]) -> Lab:
    """The validated lab in ``folder`` (provisioned at ``version``), loaded once per version, file stamp and set of
    known images with their backends (an image's backend is its machines' default)."""
    files = stamp(folder)
    key = (str(folder), version, frozenset(known_images.items()), files)
    with _guard:
        lab = _kept.get(key)
    if lab is not None:
        return lab
    lab = load_lab(folder, known_images)
    newest = max((mtime for _, _, mtime in files), default=0)
    if newest < (time.time() - RACY_SECONDS) * 1e9:
        with _guard:
            _kept[key] = lab
            while len(_kept) > SIZE:
                del _kept[next(iter(_kept))]
    return lab


def forget(folder: Path) -> None:
    """Drop every kept load of ``folder`` (a provisioning validates the lab afresh)."""
    with _guard:
        for key in [key for key in _kept if key[0] == str(folder)]:
            del _kept[key]
