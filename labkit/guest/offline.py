"""Reading a stopped machine's files without booting it: base image + overlay flattened into a private scratch image.

The overlay's own kind (`labkit.overlays.base.Overlay.flatten`) writes the flat image, so any overlay kind reads
offline. The overlay and the base are only read, so grading a stopped machine changes neither. The flat image is a
sparse raw file in a temporary folder, made on first use, kept for the life of the handle (many checks read many files)
and removed by `close` (or when the transport is garbage collected). Files are read with e2fsprogs' ``debugfs``, which
needs neither root nor a mount.
"""

from __future__ import annotations

import posixpath
import shutil
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from labkit.errors import GuestError, GuestUnavailableError, LabkitError
from labkit.guest.files import FileStat, debugfs_link_target, parse_debugfs_stat
from labkit.guest.result import Result
from labkit.images.programs import find_program
from labkit.overlays.base import Overlay

#: Symbolic links followed in a row before giving up (like the kernel's ELOOP).
MAX_LINKS = 8
_NOT_FOUND = ("File not found by ext2_lookup", "not found")


class OfflineTransport:
    """Reads files of a stopped machine from its disk: ``overlay`` (a file of kind ``kind``) over its base image."""

    name = "offline"

    def __init__(self, machine: str, overlay: Path, kind: Overlay) -> None:
        self.machine = machine
        self.overlay = overlay
        self.kind = kind
        self._scratch: Path | None = None
        self._cleanup: weakref.finalize | None = None

    # ---- the merged image ----------------------------------------------------------------------------------------
    def _image(self) -> Path:
        if self._scratch is not None:
            return self._scratch / "disk.img"
        if not self.overlay.exists():
            raise GuestUnavailableError(f"machine {self.machine} has no overlay at {self.overlay}; nothing to read "
                                        "offline")
        folder = Path(tempfile.mkdtemp(prefix="labkit-offline-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)
        try:
            self.kind.flatten(self.overlay, folder / "disk.img")
        except LabkitError as err:
            self.close()
            raise GuestUnavailableError(f"cannot read the disk of stopped machine {self.machine}: {err}") from err
        except BaseException:
            self.close()
            raise
        self._scratch = folder
        return folder / "disk.img"

    def _debugfs(self, request: str, path: str, timeout: float) -> subprocess.CompletedProcess[bytes]:
        if any(c in path for c in '"\n\\') or not path.startswith("/"):
            raise GuestError(f"cannot read {path!r} offline: give an absolute path without quotes or backslashes")
        image = self._image()
        try:
            return subprocess.run(
                [find_program("debugfs"), "-c", "-R", f'{request} "{path}"', str(image)],
                capture_output=True, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise GuestError(f"reading {path} of stopped machine {self.machine} took over {timeout:g} s") from err

    @staticmethod
    def _missing(done: subprocess.CompletedProcess[bytes]) -> bool:
        # debugfs exits 0 even when the path does not exist; it says so on stderr.
        return any(marker in done.stderr.decode(errors="replace") for marker in _NOT_FOUND)

    # ---- what works offline --------------------------------------------------------------------------------------
    def _stat_text(self, path: str, timeout: float) -> str | None:
        done = self._debugfs("stat", path, timeout)
        text = done.stdout.decode(errors="replace")
        if self._missing(done) or "Inode:" not in text:
            return None
        return text

    def stat(self, path: str, timeout: float = 30.0) -> FileStat:
        text = self._stat_text(path, timeout)
        if text is None:
            raise GuestError(f"no {path} in stopped machine {self.machine}")
        return parse_debugfs_stat(text, path)

    def exists(self, path: str, timeout: float = 30.0) -> bool:
        return self._stat_text(path, timeout) is not None

    def read_file(self, path: str, timeout: float = 60.0) -> bytes:
        """The file's bytes; a final symbolic link is followed (debugfs follows those inside the path itself)."""
        deadline = time.monotonic() + timeout
        current = path
        for _ in range(MAX_LINKS + 1):
            text = self._stat_text(current, max(1.0, deadline - time.monotonic()))
            if text is None:
                raise GuestError(f"cannot read {path} in stopped machine {self.machine}: no such file")
            info = parse_debugfs_stat(text, current)
            if info.kind == "dir":
                raise GuestError(f"cannot read {path} in stopped machine {self.machine}: it is a directory")
            if info.kind != "symlink":
                done = self._debugfs("cat", current, max(1.0, deadline - time.monotonic()))
                return done.stdout
            target = debugfs_link_target(text)
            if target is None:  # a long link: its target is the content of its data block
                target = self._debugfs("cat", current, max(1.0, deadline - time.monotonic())).stdout.decode(
                    errors="replace")
            current = posixpath.normpath(posixpath.join(posixpath.dirname(current), target))
        raise GuestError(f"cannot read {path} in stopped machine {self.machine}: too many symbolic links")

    def run(self, command: str, timeout: float = 60.0, stdin: bytes = b"") -> Result:
        raise GuestUnavailableError(f"machine {self.machine} is stopped: it must run to run commands (offline, "
                                    "labkit can only read files: read_file, exists, stat)")

    def close(self) -> None:
        """Remove the flattened image."""
        if self._cleanup is not None:
            self._cleanup()
        self._scratch = None
        self._cleanup = None

