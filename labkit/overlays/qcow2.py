"""qcow2 overlays of a read-only raw base image, through ``qemu-img`` (QEMU guests boot on them).

An overlay is ``qemu-img create -f qcow2 -F raw -b <absolute base>``: the base is named by its absolute path and always
read as raw, so no format is ever probed from a file's contents. Reads go through ``-U`` (no lock), so status and
offline reads work while a machine runs; every change first asks qemu-io for the image's write lock, and a lock held
by a running QEMU becomes a `ConflictError`, as a running UML's lock does in `labkit.overlays.umlcow`.

New files are written beside their target under a temporary name and renamed into place, so a crash or a full disk
never leaves half an overlay. Every qemu-img call runs with ``LANG=C`` and a timeout, and its complaint becomes one
`OverlayError` sentence.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError, ConflictError, NotFoundError, OverlayError
from labkit.overlays.base import Overlay, OverlayInfo
from labkit.overlays.sparse import sparse_copy
from labkit.overlays.umlcow import absolutize
from labkit.progress import ProgressEvent, Reporter, silent

QEMU_IMG = "qemu-img"
QEMU_IO = "qemu-io"
#: Seconds a metadata call (create, info, map) may take; converting a whole disk gets `CONVERT_TIMEOUT`.
TIMEOUT = 30.0
CONVERT_TIMEOUT = 1800.0
_SECTOR = 512
_LOCK_WORDS = ("lock", "another process")


@dataclass(frozen=True)
class _Image:
    """What ``qemu-img info`` says about an overlay, checked."""

    virtual_size: int
    backing_file: Path
    cluster_size: int
    actual_size: int
    compat: str


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(LANG="C", LC_ALL="C")
    return env


def _run(args: list[str], what: str, timeout: float = TIMEOUT, program: str = QEMU_IMG) -> str:
    """Run ``program args`` (qemu-img by default); stderr becomes one `OverlayError` (`ConflictError`: a lock)."""
    try:
        done = subprocess.run([program, *args], capture_output=True, text=True, env=_env(), timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError as err:
        raise ConfigError(f"{program} is not installed (Debian package qemu-utils; `make system-deps` installs it).") \
            from err
    except subprocess.TimeoutExpired as err:
        raise OverlayError(f"{program} did not finish {what} within {timeout:.0f} s.") from err
    if done.returncode != 0:
        message = " ".join(line.strip() for line in done.stderr.splitlines() if line.strip())
        message = message.removeprefix(f"{program}: ").rstrip(".") or f"exit status {done.returncode}"
        if all(word in message.lower() for word in _LOCK_WORDS):
            raise ConflictError(f"Cannot {what}: it is in use by a running machine; stop it first.")
        raise OverlayError(f"Cannot {what}: {message}.")
    return done.stdout


def _absolute(path: Path) -> str:
    """An absolute name, so qemu-img never reads ``name:`` as a protocol (``nbd:``, ``json:``) or a relative base."""
    return absolutize(path)


def _round_up(value: int, to: int) -> int:
    return -(-value // to) * to


def _check_base(base: Path) -> str:
    """The absolute name of a usable base image, or the error umlcow gives for the same fault."""
    name = _absolute(base)
    try:
        os.stat(name)
    except FileNotFoundError as err:
        raise NotFoundError(f"Backing file '{name}' does not exist.") from err
    except OSError as err:
        raise OverlayError(f"Cannot read backing file '{name}': {err.strerror}.") from err
    if not os.path.isfile(name):
        raise OverlayError(f"Backing file '{name}' is not a regular file.")
    return name


def _ensure_idle(path: Path) -> None:
    """Refuse if a running QEMU holds ``path``.

    ``qemu-io`` opens the file read-write as raw (whatever it holds) and runs no command, so it writes nothing but asks
    for the write lock a running QEMU keeps to itself; ``qemu-img info`` would not, as a raw reader shares writes.
    """
    if not os.path.lexists(path):
        return
    _run(["-f", "raw", "-c", "", _absolute(path)], f"change qcow2 file '{path}'", program=QEMU_IO)


def _read(path: Path) -> _Image:
    """Run ``qemu-img info`` on ``path`` and check it is a qcow2 overlay of an unchanged raw base."""
    if not os.path.lexists(path):
        raise NotFoundError(f"qcow2 file '{path}' does not exist.")
    out = _run(["info", "-U", "-f", "qcow2", "--output=json", _absolute(path)], f"read qcow2 file '{path}'")
    try:
        data: dict[str, Any] = json.loads(out)
        size = int(data["virtual-size"])
        cluster = int(data.get("cluster-size", 0))
        actual = int(data.get("actual-size", 0))
        compat = str(data.get("format-specific", {}).get("data", {}).get("compat", ""))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise OverlayError(f"qemu-img gave an unreadable description of '{path}'.") from err
    if data.get("format-specific", {}).get("data", {}).get("data-file"):
        raise OverlayError(f"'{path}' keeps its data in an external file; labkit overlays never do.")
    backing = data.get("full-backing-filename") or data.get("backing-filename")
    if not backing:
        raise OverlayError(f"'{path}' is a qcow2 file without a backing file, not an overlay of a base image.")
    if data.get("backing-filename-format") != "raw":
        fmt = data.get("backing-filename-format") or "unset"
        raise OverlayError(f"'{path}' reads its backing file as '{fmt}'; labkit overlays read it as raw.")
    backing = str(backing)
    if not backing.startswith("/"):
        raise OverlayError(f"'{path}' names its backing file as '{backing}', not a file path.")
    try:
        st = os.stat(backing)
    except FileNotFoundError as err:
        raise OverlayError(f"Backing file '{backing}' of the qcow2 file does not exist.") from err
    except OSError as err:
        raise OverlayError(f"Cannot read backing file '{backing}' of the qcow2 file: {err.strerror}.") from err
    if not os.path.isfile(backing):
        raise OverlayError(f"Backing file '{backing}' of the qcow2 file is not a regular file.")
    if _round_up(st.st_size, _SECTOR) != size:
        raise OverlayError(f"Backing file '{backing}' changed: Size mismatch ({size} vs {st.st_size}) "
                           "of qcow2 header vs backing file.")
    return _Image(virtual_size=size, backing_file=Path(backing), cluster_size=cluster, actual_size=actual,
                  compat=compat)


def _check_expected(path: Path, image: _Image, base: Path) -> None:
    """Refuse an overlay whose backing file is not ``base`` (another image's overlay copied in by mistake)."""
    if os.path.realpath(image.backing_file) != os.path.realpath(base):
        raise OverlayError(f"'{path}' is an overlay of '{image.backing_file}', not of '{_absolute(base)}'.")


def allocated_bytes(path: Path) -> int:
    """Bytes of the guest's disk the overlay itself holds (data or zeroed clusters), from ``qemu-img map``."""
    out = _run(["map", "-U", "-f", "qcow2", "--output=json", _absolute(path)], f"map qcow2 file '{path}'")
    try:
        extents: list[dict[str, Any]] = json.loads(out)
        return sum(int(e["length"]) for e in extents if e.get("depth") == 0 and e.get("present", True))
    except (ValueError, KeyError, TypeError) as err:
        raise OverlayError(f"qemu-img gave an unreadable map of '{path}'.") from err


def _temp_beside(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp"


def _publish(tmp: Path, dest: Path, *, overwrite: bool) -> None:
    """Make ``tmp`` become ``dest``; without ``overwrite`` an existing ``dest`` (even a new one) is refused."""
    try:
        if overwrite:
            os.replace(tmp, dest)
            return
        try:
            os.link(tmp, dest)
        except FileExistsError as err:
            raise ConflictError(f"Refusing to overwrite '{dest}': it already exists.") from err
        os.unlink(tmp)
    except OSError as err:
        raise OverlayError(f"Cannot write '{dest}': {err.strerror}.") from err


def _write_overlay(base_name: str, dest: Path, *, overwrite: bool) -> None:
    if not overwrite and os.path.lexists(dest):
        raise ConflictError(f"Refusing to overwrite '{dest}': it already exists.")
    tmp = _temp_beside(dest)
    try:
        _run(["create", "-q", "-f", "qcow2", "-F", "raw", "-b", base_name, _absolute(tmp)],
             f"create qcow2 file '{dest}'")
        os.chmod(tmp, 0o600)
        _publish(tmp, dest, overwrite=overwrite)
    finally:
        tmp.unlink(missing_ok=True)


class Qcow2(Overlay):
    """qcow2 overlays over a raw base: what `labkit.runtime.qemu` passes as ``-drive file=...,format=qcow2``."""

    kind = "qcow2"
    suffix = ".qcow2"

    def create(self, base: Path, path: Path) -> OverlayInfo:
        _write_overlay(_check_base(base), Path(path), overwrite=False)
        return self._info(Path(path), fresh=True)

    def reset(self, path: Path, base: Path) -> OverlayInfo:
        """A fresh empty overlay renamed over the old one, whatever the old file held (even if it is broken)."""
        base_name = _check_base(base)
        _ensure_idle(path)
        _write_overlay(base_name, Path(path), overwrite=True)
        return self._info(Path(path), fresh=True)

    def info(self, path: Path) -> OverlayInfo:
        return self._info(Path(path))

    def _info(self, path: Path, fresh: bool = False) -> OverlayInfo:
        """``fresh``: the file was just made by ``qemu-img create`` (no preallocation), so it holds no cluster yet and
        ``qemu-img map`` is not asked (one process less on every new machine)."""
        image = _read(path)
        st = os.stat(path)
        details = (("format", "qcow2"), ("compat", image.compat), ("cluster_size", str(image.cluster_size)),
                   ("apparent_bytes", str(st.st_size)))
        return OverlayInfo(kind=self.kind, path=path, backing_file=image.backing_file,
                           virtual_size=image.virtual_size, allocated_bytes=0 if fresh else allocated_bytes(path),
                           file_bytes=st.st_blocks * 512, details=details)

    def snapshot(self, path: Path, dest: Path) -> OverlayInfo:
        """A sparse copy of the overlay file (a running machine is paused by the caller, which flushes its disks)."""
        _read(Path(path))
        sparse_copy(Path(path), Path(dest), overwrite=False)
        return self.info(dest)

    def restore(self, snapshot: Path, path: Path) -> OverlayInfo:
        """Copy ``snapshot`` over the overlay; refused if it belongs to another base than the overlay it replaces."""
        kept = _read(Path(snapshot))
        if os.path.lexists(path):
            _ensure_idle(path)
            try:
                current = _read(Path(path))
            except OverlayError:
                current = None  # a broken overlay may always be replaced by a good snapshot
            if current is not None:
                _check_expected(Path(snapshot), kept, current.backing_file)
        sparse_copy(Path(snapshot), Path(path), overwrite=True)
        return self.info(path)

    def delete(self, path: Path) -> None:
        if not os.path.lexists(path):
            raise NotFoundError(f"qcow2 file '{path}' does not exist.")
        _ensure_idle(path)
        try:
            os.unlink(path)
        except OSError as err:
            raise OverlayError(f"Cannot delete qcow2 file '{path}': {err.strerror}.") from err

    def flatten(self, path: Path, output: Path, reporter: Reporter = silent) -> None:
        """Write the disk the guest sees as a new sparse raw image at ``output`` (which must not exist).

        Reads with ``-U``, so it works while a machine runs (its unflushed writes are then missing, as on a real disk).
        """
        image = _read(Path(path))
        output = Path(output)
        if os.path.lexists(output):
            raise ConflictError(f"Refusing to overwrite '{output}': it already exists.")
        tmp = _temp_beside(output)
        reporter(ProgressEvent("flatten", 0, image.virtual_size, "converting to raw"))
        try:
            _run(["convert", "-U", "-f", "qcow2", "-O", "raw", _absolute(Path(path)), _absolute(tmp)],
                 f"flatten qcow2 file '{path}'", timeout=CONVERT_TIMEOUT)
            os.chmod(tmp, 0o644)
            _publish(tmp, output, overwrite=False)
        finally:
            tmp.unlink(missing_ok=True)
        reporter(ProgressEvent("flatten", image.virtual_size, image.virtual_size, "done"))
