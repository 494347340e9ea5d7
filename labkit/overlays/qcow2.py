"""qcow2 overlays of a read-only raw base image, through ``qemu-img`` (QEMU guests boot on them).

An overlay is ``qemu-img create -f qcow2 -F raw -b <absolute base>``: the base is named by its absolute path and always
read as raw, so no format is ever probed from a file's contents. The header and the allocation (L1/L2 tables) are read
in Python, bounds-checked, without a process; flattening goes through qemu-img with ``-U`` (no lock), so status and
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
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labkit.errors import ConfigError, ConflictError, NotFoundError, OverlayError
from labkit.overlays.base import Overlay, OverlayInfo, stat_backing
from labkit.overlays.sparse import sparse_copy
from labkit.overlays.umlcow import absolutize
from labkit.progress import ProgressEvent, Reporter, silent

QEMU_IMG = "qemu-img"
QEMU_IO = "qemu-io"
#: Seconds a metadata call (create, info, map) may take; converting a whole disk gets `CONVERT_TIMEOUT`.
TIMEOUT = 30.0
CONVERT_TIMEOUT = 1800.0
_SECTOR = 512
_MAGIC = b"QFI\xfb"
_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # magic ... snapshots_offset: 72 bytes
_V3 = struct.Struct(">QQQII")  # incompatible, compatible, autoclear features, refcount_order, header_length
_EXT = struct.Struct(">II")
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_DATA_FILE = 0x44415441
_INCOMPAT_DATA_FILE = 1 << 2
_INCOMPAT_EXTENDED_L2 = 1 << 4
_OFFSET_MASK = 0x00FFFFFFFFFFFE00  # bits 9-55 of an L1 or L2 entry: a host offset
_L2_COMPRESSED = 1 << 62
_L2_ZERO = 1
_MAX_L1_BYTES = 32 << 20
_KNOWN_INCOMPATIBLE = 0b11111  # dirty, corrupt, external data file, compression type, extended L2
_HEADER_READ = 65536
_LOCK_WORDS = ("lock", "another process")


@dataclass(frozen=True)
class _Image:
    """What an overlay's qcow2 header says, checked."""

    virtual_size: int
    backing_file: Path
    cluster_size: int
    version: int
    snapshots: int


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
    stat_backing(name, missing=NotFoundError)
    return name


def _ensure_idle(path: Path) -> None:
    """Refuse if a running QEMU holds ``path``.

    ``qemu-io`` opens the file read-write as raw (whatever it holds) and runs no command, so it writes nothing but asks
    for the write lock a running QEMU keeps to itself; ``qemu-img info`` would not, as a raw reader shares writes.
    """
    if not os.path.lexists(path):
        return
    _run(["-f", "raw", "-c", "", _absolute(path)], f"change qcow2 file '{path}'", program=QEMU_IO)


def _header(path: Path) -> dict[str, Any]:
    """The fields of a qcow2 header and its extensions (docs/interop/qcow2.txt in QEMU), bounds-checked.

    Read in Python rather than through ``qemu-img info``: a process less on every create and status (milliseconds
    that add up over a class), and nothing of the file is opened beyond its first cluster.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(_HEADER_READ)
    except FileNotFoundError as err:
        raise NotFoundError(f"qcow2 file '{path}' does not exist.") from err
    except OSError as err:
        raise OverlayError(f"Cannot read qcow2 file '{path}': {err.strerror}.") from err
    if raw[:4] != _MAGIC:
        raise OverlayError(f"'{path}' is not in qcow2 format (no qcow2 magic at its start).")

    def bad(why: str) -> OverlayError:
        return OverlayError(f"Cannot read qcow2 file '{path}': {why}.")

    if len(raw) < _V2.size:
        raise bad("its header is truncated")
    (_, version, backing_offset, backing_size, cluster_bits, size, crypt, l1_size, l1_offset, _rt_offset,
     _rt_clusters, nb_snapshots, _snap_offset) = _V2.unpack_from(raw)
    if version not in (2, 3):
        raise bad(f"unsupported qcow2 version {version}")
    if not 9 <= cluster_bits <= 21:
        raise bad(f"cluster bits {cluster_bits} out of range")
    if crypt:
        raise bad("it is encrypted")
    header_length, incompatible = _V2.size, 0
    if version == 3:
        if len(raw) < _V3.size:
            raise bad("its header is truncated")
        incompatible, _compatible, _autoclear, _refcount_order, header_length = _V3.unpack_from(raw, _V2.size)
        if not _V2.size + _V3.size <= header_length <= len(raw) or header_length % 8:
            raise bad(f"header length {header_length} is invalid")
    if incompatible & ~_KNOWN_INCOMPATIBLE:
        raise bad(f"it uses unknown incompatible features (0x{incompatible:x})")
    if incompatible & _INCOMPAT_DATA_FILE:
        raise OverlayError(f"'{path}' keeps its data in an external file; labkit overlays never do.")
    backing_format = ""
    at = header_length
    while True:
        if at + 8 > len(raw):
            raise bad("its header extensions run past the first 64 KiB")
        kind, length = _EXT.unpack_from(raw, at)
        if kind == 0:
            break
        data = raw[at + 8:at + 8 + length]
        if len(data) != length:
            raise bad("a header extension is truncated")
        if kind == _EXT_BACKING_FORMAT:
            backing_format = data.decode(errors="replace")
        elif kind == _EXT_DATA_FILE:
            raise OverlayError(f"'{path}' keeps its data in an external file; labkit overlays never do.")
        at += 8 + length + (-length % 8)
    backing = ""
    if backing_offset:
        name = raw[backing_offset:backing_offset + backing_size]
        if backing_size > 1023 or len(name) != backing_size:
            raise bad("its backing file name is truncated or too long")
        backing = os.fsdecode(name)
    return {"version": version, "cluster_size": 1 << cluster_bits, "virtual_size": size, "backing": backing,
            "l1_size": l1_size, "l1_offset": l1_offset, "extended_l2": bool(incompatible & _INCOMPAT_EXTENDED_L2),
            "backing_format": backing_format, "snapshots": nb_snapshots, "dirty": bool(incompatible & 1),
            "corrupt": bool(incompatible & 2)}


def _read(path: Path) -> _Image:
    """Read ``path``'s header and check it is a qcow2 overlay of an unchanged raw base."""
    header = _header(path)
    if header["corrupt"]:
        raise OverlayError(f"'{path}' is marked corrupt by QEMU; `qemu-img check -r all` may repair it.")
    backing = str(header["backing"])
    if not backing:
        raise OverlayError(f"'{path}' is a qcow2 file without a backing file, not an overlay of a base image.")
    if header["backing_format"] != "raw":
        fmt = header["backing_format"] or "unset"
        raise OverlayError(f"'{path}' reads its backing file as '{fmt}'; labkit overlays read it as raw.")
    if ":" in backing.split("/", 1)[0] or "\0" in backing:  # json:{...}, nbd:..., file:...: a protocol
        raise OverlayError(f"'{path}' names its backing file as '{backing}', not a file path.")
    if not backing.startswith("/"):  # qemu reads a relative name from the overlay's folder
        backing = os.path.join(os.path.dirname(_absolute(path)), backing)
    size = int(header["virtual_size"])
    st = stat_backing(backing, of="qcow2 file")
    if _round_up(st.st_size, _SECTOR) != size:
        raise OverlayError(f"Backing file '{backing}' changed: Size mismatch ({size} vs {st.st_size}) "
                           "of qcow2 header vs backing file.")
    return _Image(virtual_size=size, backing_file=Path(backing), cluster_size=int(header["cluster_size"]),
                  version=int(header["version"]), snapshots=int(header["snapshots"]))


def _check_expected(path: Path, image: _Image, base: Path) -> None:
    """Refuse an overlay whose backing file is not ``base`` (another image's overlay copied in by mistake)."""
    if os.path.realpath(image.backing_file) != os.path.realpath(base):
        raise OverlayError(f"'{path}' is an overlay of '{image.backing_file}', not of '{_absolute(base)}'.")


def allocated_bytes(path: Path) -> int:
    """Bytes of the guest's disk the overlay itself holds (data, compressed or zeroed clusters).

    Counted from the active L1 and L2 tables in Python: one read per L2 table, where ``qemu-img map`` costs a process.
    Images with extended L2 entries (subclusters; labkit never makes them) are left to ``qemu-img map``.
    """
    header = _header(Path(path))
    if header["extended_l2"]:
        return _mapped_bytes(path)
    cluster, size = int(header["cluster_size"]), int(header["virtual_size"])
    l1_size, l1_offset = int(header["l1_size"]), int(header["l1_offset"])
    per_l2 = cluster // 8
    where = f"Cannot read qcow2 file '{path}'"
    if l1_size * 8 > _MAX_L1_BYTES or l1_size * per_l2 * cluster < size:
        raise OverlayError(f"{where}: its L1 table size {l1_size} does not fit its virtual size.")
    total = 0
    try:
        with open(path, "rb") as f:
            length = os.fstat(f.fileno()).st_size
            if l1_size and (l1_offset % cluster or l1_offset + l1_size * 8 > length):
                raise OverlayError(f"{where}: its L1 table lies outside the file.")
            l1 = os.pread(f.fileno(), l1_size * 8, l1_offset) if l1_size else b""
            for l1_index, (entry,) in enumerate(struct.iter_unpack(">Q", l1)):
                l2_offset = entry & _OFFSET_MASK
                if not l2_offset:
                    continue
                if l2_offset % cluster or l2_offset + cluster > length:
                    raise OverlayError(f"{where}: L2 table {l1_index} lies outside the file.")
                l2 = os.pread(f.fileno(), cluster, l2_offset)
                first = l1_index * per_l2
                for l2_index, (slot,) in enumerate(struct.iter_unpack(">Q", l2)):
                    start = (first + l2_index) * cluster
                    if start >= size:
                        break
                    if slot & _L2_COMPRESSED or slot & _OFFSET_MASK or slot & _L2_ZERO:
                        total += min(cluster, size - start)
    except OSError as err:
        raise OverlayError(f"{where}: {err.strerror}.") from err
    return total


def _mapped_bytes(path: Path) -> int:
    """`allocated_bytes` as ``qemu-img map`` counts it (the extents at depth 0)."""
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
        return self.info(path)

    def reset(self, path: Path, base: Path) -> OverlayInfo:
        """A fresh empty overlay renamed over the old one, whatever the old file held (even if it is broken)."""
        base_name = _check_base(base)
        _ensure_idle(path)
        _write_overlay(base_name, Path(path), overwrite=True)
        return self.info(path)

    def info(self, path: Path) -> OverlayInfo:
        image = _read(Path(path))
        st = os.stat(path)
        details = (("format", "qcow2"), ("version", str(image.version)), ("cluster_size", str(image.cluster_size)),
                   ("internal_snapshots", str(image.snapshots)), ("apparent_bytes", str(st.st_size)))
        return OverlayInfo(kind=self.kind, path=Path(path), backing_file=image.backing_file,
                           virtual_size=image.virtual_size, allocated_bytes=allocated_bytes(Path(path)),
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
