"""User-Mode Linux ubd COW files, read and written in pure Python, byte for byte as Linux 6.1 does.

The format is defined by the kernel's ``arch/um/drivers/cow_user.c``; checks mirror ``ubd_kern.c``:

- v3 (what UML and labkit write): big-endian, packed: magic ``0x4F4F4F4D``, version 3, backing mtime (u32), backing size
  (u64), sector size (512), alignment (4096), cow_format (0), then the absolute backing path in a 4096-byte field.
  The bitmap starts at the header size rounded up to the alignment (8192), one bit per 512-byte sector, least
  significant bit first; the data area starts at the next alignment boundary after the bitmap, sector ``n`` at
  ``data + n * 512``.
- "broken" v3: written by 64-bit builds before 2006 without ``packed``: 4 bytes of padding after the mtime shift every
  later field by 4. The kernel tells the two apart because a real path never starts with four zero bytes.
- v2: big-endian, 4096-byte path first, then mtime, size, sector size; no alignment (the sector size is used).
- v1: a 256-byte path; the magic may be either byte order but the other fields are in the writer's (x86) order.

Every write goes to a temporary file beside the target that is renamed into place (see `labkit.overlays.sparse`).
Functions that change an existing COW refuse while a running UML holds its lock (UML takes a POSIX write lock on it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import ConflictError, NotFoundError, OverlayError
from labkit.overlays.base import Overlay, OverlayInfo, stat_backing
from labkit.overlays.sparse import atomic_file, copy_range, copy_sparse_fd, data_extents, sparse_copy
from labkit.progress import ProgressEvent, Reporter, silent

COW_MAGIC = 0x4F4F4F4D
SECTOR = 512
ALIGNMENT = 4096
PATH_LEN_V1 = 256
PATH_LEN_V3 = 4096

_V1 = struct.Struct("<ii256sIQi")  # 280 bytes
_V2 = struct.Struct(">II4096sIQi")  # 4120 bytes
_V3 = struct.Struct(">IIIQIII4096s")  # 4128 bytes
_V3_BROKEN = struct.Struct(">III4xQIII4096s4x")  # 4136 bytes: the unpacked 64-bit layout (mtime read as a u32)
_READ_SIZE = _V3_BROKEN.size  # sizeof(union cow_header)
_SHORTEST = 8  # offsetof(struct cow_header_v1, backing_file)
_CHUNK = 1 << 20

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class CowHeader:
    """What a COW header says, with the offsets the kernel derives from it."""

    version: int
    backing_file: str
    mtime: int
    size: int
    sectorsize: int
    alignment: int
    bitmap_offset: int
    data_offset: int
    cow_format: int
    variant: str

    @property
    def sectors(self) -> int:
        """Sectors of the device (the kernel rounds the backing size up to whole sectors)."""
        return _div_up(self.size, SECTOR)

    @property
    def bitmap_bytes(self) -> int:
        """Bitmap bytes that describe sectors: one bit each, never reaching into the data area.

        v1/v2 headers have the kernel's old rounding bug (a bitmap one byte short for some sizes); their last sectors
        then have no bit of their own and count as unallocated.
        """
        return min(-(-self.sectors // 8), self.data_offset - self.bitmap_offset)


def _div_up(value: int, by: int) -> int:
    return -(-value // by)


def _round_up(value: int, align: int) -> int:
    return _div_up(value, align) * align


def _decode_path(field: bytes, where: str) -> str:
    end = field.find(b"\0")
    if end < 0:
        raise OverlayError(f"'{where}' is a corrupt COW file: its backing file name is not terminated.")
    if end == 0:
        raise OverlayError(f"'{where}' is a corrupt COW file: it names no backing file.")
    return os.fsdecode(field[:end])


def parse_header(raw: bytes, where: str = "COW file") -> CowHeader:
    """Decode the first bytes of a COW file the way ``read_cow_header`` does, with the sanity checks it lacks."""
    if len(raw) < _SHORTEST:
        raise OverlayError(f"'{where}' is not a UML COW file: it is only {len(raw)} bytes long (short header).")
    if struct.unpack_from("<I", raw)[0] == COW_MAGIC:
        version = struct.unpack_from("<I", raw, 4)[0]
    elif struct.unpack_from(">I", raw)[0] == COW_MAGIC:
        version = struct.unpack_from(">I", raw, 4)[0]
    else:
        raise OverlayError(f"'{where}' is not a UML COW file (no COW magic at its start).")

    def need(layout: struct.Struct, name: str) -> None:
        if len(raw) < layout.size:
            raise OverlayError(f"'{where}' is a truncated COW file: failed to read {name} header "
                               f"({len(raw)} of {layout.size} bytes).")

    if version == 1:
        need(_V1, "V1")
        _, _, path, mtime, size, sectorsize = _V1.unpack_from(raw)
        variant, alignment, cow_format, bitmap_offset = "v1", sectorsize, 0, _V1.size
    elif version == 2:
        need(_V2, "V2")
        _, _, path, mtime, size, sectorsize = _V2.unpack_from(raw)
        variant, alignment, cow_format, bitmap_offset = "v2", sectorsize, 0, _V2.size
    elif version == 3:
        broken = raw[32:36] == b"\0\0\0\0" if len(raw) >= 36 else False
        layout = _V3_BROKEN if broken else _V3
        need(layout, "V3")
        _, _, mtime, size, sectorsize, alignment, cow_format, path = layout.unpack_from(raw)
        variant = "v3-broken64" if broken else "v3"
        if alignment <= 0 or alignment % SECTOR:
            raise OverlayError(f"'{where}' is a corrupt COW file: invalid COW header, align == {alignment} "
                               f"(must be a positive multiple of {SECTOR}).")
        bitmap_offset = _round_up(layout.size, alignment)
    else:
        raise OverlayError(f"'{where}' has an invalid COW version {version} (known: 1, 2, 3).")
    if sectorsize != SECTOR:
        raise OverlayError(f"'{where}' is a corrupt COW file: sector size {sectorsize} (UML uses {SECTOR}).")
    if cow_format != 0:
        raise OverlayError(f"'{where}' uses COW format {cow_format}; only the bitmap format 0 exists.")
    backing = _decode_path(path, where)
    if version < 3:  # cow_sizes(): the old rounding
        bitmap_len = (size + sectorsize - 1) // (8 * sectorsize)
        data_offset = _round_up(bitmap_offset + bitmap_len, sectorsize)
    else:
        bitmap_len = _div_up(_div_up(size, sectorsize), 8)
        data_offset = _round_up(bitmap_offset + bitmap_len, alignment)
    return CowHeader(version=version, backing_file=backing, mtime=mtime, size=size, sectorsize=sectorsize,
                     alignment=alignment, bitmap_offset=bitmap_offset, data_offset=data_offset,
                     cow_format=cow_format, variant=variant)


def _open(path: PathLike, flags: int = os.O_RDONLY) -> int:
    try:
        return os.open(path, flags)
    except FileNotFoundError as err:
        raise NotFoundError(f"COW file '{path}' does not exist.") from err
    except OSError as err:
        raise OverlayError(f"Cannot open COW file '{path}': {err.strerror}.") from err


def _header_of_fd(fd: int, where: str) -> CowHeader:
    header = parse_header(os.pread(fd, _READ_SIZE, 0), where)
    length = os.fstat(fd).st_size
    if length < header.data_offset:
        raise OverlayError(f"'{where}' is a truncated COW file: it ends at byte {length}, before its data area "
                           f"at byte {header.data_offset}.")
    return header


def read_header(path: PathLike) -> CowHeader:
    """Read and check the header of the COW file at ``path``."""
    fd = _open(path)
    try:
        return _header_of_fd(fd, str(path))
    finally:
        os.close(fd)


def absolutize(path: PathLike) -> str:
    """The absolute name UML stores for a backing file: the folder resolved, the file name kept (as cow_user.c does)."""
    name = os.fspath(path)
    folder, base = os.path.split(name)
    return os.path.join(os.path.realpath(folder or "."), base)


def check_backing(header: CowHeader, backing_path: PathLike | None = None) -> None:
    """Refuse a backing file whose size or mtime differ from the header, in the words UML uses when it will not boot."""
    backing = os.fspath(backing_path) if backing_path is not None else header.backing_file
    try:
        st = os.stat(backing)
    except FileNotFoundError as err:
        raise OverlayError(f"Backing file '{backing}' of the COW file does not exist.") from err
    except OSError as err:
        raise OverlayError(f"Failed to get modification time of backing file \"{backing}\": {err.strerror}.") from err
    modtime = st.st_mtime_ns // 1_000_000_000
    if st.st_size != header.size:
        raise OverlayError(f"Backing file '{backing}' changed: Size mismatch ({header.size} vs {st.st_size}) "
                           "of COW header vs backing file.")
    if modtime != header.mtime:
        raise OverlayError(f"Backing file '{backing}' changed: mtime mismatch ({header.mtime} vs {modtime}) "
                           "of COW header vs backing file.")


def _new_header(backing: PathLike) -> tuple[CowHeader, bytes]:
    """Stat ``backing`` and build the v3 header write_cow_header() would write for it."""
    name = absolutize(backing)
    raw_name = os.fsencode(name)
    if len(raw_name) > PATH_LEN_V3 - 1:
        raise OverlayError(f"Backing file name \"{name}\" is too long - names are limited to {PATH_LEN_V3 - 1} "
                           "characters.")
    st = stat_backing(name, missing=NotFoundError)
    mtime = (st.st_mtime_ns // 1_000_000_000) & 0xFFFFFFFF
    raw = _V3.pack(COW_MAGIC, 3, mtime, st.st_size, SECTOR, ALIGNMENT, 0, raw_name)
    return parse_header(raw, name), raw


def _init_file(fd: int, header: CowHeader, raw: bytes) -> None:
    """Write the header and size the file like init_cow_file(): the bitmap and data stay holes."""
    os.pwrite(fd, raw, 0)
    os.ftruncate(fd, header.data_offset + header.size)


def write_cow(path: PathLike, backing: PathLike) -> CowHeader:
    """Create a new, empty v3 COW file of ``backing`` at ``path`` (refused if ``path`` exists)."""
    header, raw = _new_header(backing)
    try:
        with atomic_file(Path(path), overwrite=False) as fd:
            _init_file(fd, header, raw)
    except OSError as err:
        raise OverlayError(f"Cannot write COW file '{path}': {err.strerror}.") from err
    return header


def _ensure_idle(path: PathLike) -> None:
    """Refuse if a running UML holds the COW file (it takes a POSIX write lock on it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    except OSError as err:
        raise OverlayError(f"Cannot open COW file '{path}': {err.strerror}.") from err
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EAGAIN):
            raise ConflictError(f"COW file '{path}' is in use by a running machine; stop it first.") from err
        raise
    finally:
        os.close(fd)


def _bitmap(fd: int, header: CowHeader, first_byte: int, count: int) -> bytes:
    count = max(0, min(count, header.bitmap_bytes - first_byte))
    data = os.pread(fd, count, header.bitmap_offset + first_byte)
    return data.ljust(count, b"\0")


def _bitmap_chunks(fd: int, header: CowHeader) -> Iterator[tuple[int, bytes]]:
    """``(byte offset in the bitmap, bytes)`` for the parts of the bitmap that hold data, in order.

    Holes in the file read as zeros (no sector allocated), so they are skipped without reading: a fresh overlay of a
    2 GB base has a 512 KB bitmap that is one hole, and `count_allocated` on it costs a few system calls.
    """
    end = header.bitmap_offset + header.bitmap_bytes
    for offset, length in data_extents(fd, header.bitmap_offset, end):
        for at in range(offset, offset + length, _CHUNK):
            count = min(_CHUNK, offset + length - at)
            yield at - header.bitmap_offset, os.pread(fd, count, at).ljust(count, b"\0")


def _runs(fd: int, header: CowHeader) -> Iterator[tuple[int, int]]:
    """Yield ``(first_sector, count)`` for each run of allocated sectors, in order."""
    start = -1
    total = header.sectors
    expected = 0  # where the next chunk starts if no hole lies between
    for chunk_at, chunk in _bitmap_chunks(fd, header):
        if start >= 0 and chunk_at != expected:  # a hole (no sectors) ended the run
            yield start, expected * 8 - start
            start = -1
        expected = chunk_at + len(chunk)
        if start < 0 and chunk.count(0) == len(chunk):
            continue
        for index, byte in enumerate(chunk):
            base = (chunk_at + index) * 8
            if byte == 0xFF and start >= 0:
                continue
            if byte == 0 and start < 0:
                continue
            for bit in range(8):
                sector = base + bit
                if sector >= total:
                    break
                if byte >> bit & 1:
                    if start < 0:
                        start = sector
                elif start >= 0:
                    yield start, sector - start
                    start = -1
    if start >= 0:
        yield start, min(total, expected * 8) - start


def allocated_runs(path: PathLike) -> Iterator[tuple[int, int]]:
    """Runs ``(first_sector, count)`` of sectors the COW file holds."""
    fd = _open(path)
    try:
        header = _header_of_fd(fd, str(path))
        yield from _runs(fd, header)
    finally:
        os.close(fd)


def allocated_sectors(path: PathLike) -> Iterator[int]:
    """Numbers of the sectors the COW file holds (the rest read from the backing file)."""
    for start, count in allocated_runs(path):
        yield from range(start, start + count)


def count_allocated(path: PathLike) -> int:
    """How many sectors the COW file holds."""
    fd = _open(path)
    try:
        header = _header_of_fd(fd, str(path))
        total = 0
        for chunk_at, chunk in _bitmap_chunks(fd, header):
            bits = int.from_bytes(chunk, "little")
            spare = (chunk_at + len(chunk)) * 8 - header.sectors  # bits past the last sector
            if spare > 0:
                bits &= (1 << (len(chunk) * 8 - spare)) - 1
            total += bits.bit_count()
        return total
    finally:
        os.close(fd)


def _pread_exact(fd: int, length: int, offset: int, where: str) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OverlayError(f"'{where}' is a truncated COW file: sector data at byte {offset} is missing.")
    return data


def read_range(path: PathLike, offset: int, length: int, backing: PathLike | None = None) -> bytes:
    """Read ``length`` bytes of the disk the guest sees, from ``offset`` (reads stop at the disk's end).

    Allocated sectors come from the COW file, the others from the backing file, which must match the header.
    """
    if offset < 0 or length < 0:
        raise OverlayError(f"Cannot read {length} bytes at offset {offset} of '{path}': negative range.")
    fd = _open(path)
    try:
        header = _header_of_fd(fd, str(path))
        backing_name = os.fspath(backing) if backing is not None else header.backing_file
        check_backing(header, backing_name)
        end = min(offset + length, header.size)
        if end <= offset:
            return b""
        first, last = offset // SECTOR, (end - 1) // SECTOR
        bits = _bitmap(fd, header, first // 8, last // 8 - first // 8 + 1)

        def in_cow(sector: int) -> bool:
            index = sector - first // 8 * 8
            return index < len(bits) * 8 and bool(bits[index // 8] >> (index % 8) & 1)

        back_fd = _open(backing_name)
        try:
            out = bytearray()
            pos = offset
            while pos < end:
                sector = pos // SECTOR
                from_cow = in_cow(sector)
                run_end = sector + 1
                while run_end <= last and in_cow(run_end) == from_cow:
                    run_end += 1
                stop = min(run_end * SECTOR, end)
                if from_cow:
                    out += _pread_exact(fd, stop - pos, header.data_offset + pos, str(path))
                else:
                    out += os.pread(back_fd, stop - pos, pos).ljust(stop - pos, b"\0")
                pos = stop
            return bytes(out)
        finally:
            os.close(back_fd)
    finally:
        os.close(fd)


def merge(path: PathLike, output: PathLike, backing: PathLike | None = None, reporter: Reporter = silent) -> None:
    """Write a new raw sparse image at ``output``: the backing file plus the COW's sectors (like uml_moo).

    The base is only read; ``output`` must not exist yet.
    """
    fd = _open(path)
    try:
        header = _header_of_fd(fd, str(path))
        backing_name = os.fspath(backing) if backing is not None else header.backing_file
        check_backing(header, backing_name)
        back_fd = _open(backing_name)
        try:
            with atomic_file(Path(output), overwrite=False, mode=0o644) as out_fd:
                reporter(ProgressEvent("merge", 0, header.size, "copying the base image"))
                copy_sparse_fd(back_fd, out_fd, header.size)
                for start, count in _runs(fd, header):
                    begin = start * SECTOR
                    stop = min((start + count) * SECTOR, header.size)
                    copy_range(fd, out_fd, header.data_offset + begin, begin, stop - begin)
                    reporter(ProgressEvent("merge", stop, header.size, "copying changed sectors"))
                os.ftruncate(out_fd, header.size)
                reporter(ProgressEvent("merge", header.size, header.size, "done"))
        except OSError as err:
            raise OverlayError(f"Cannot write merged image '{output}': {err.strerror}.") from err
        finally:
            os.close(back_fd)
    finally:
        os.close(fd)


def rebase(path: PathLike, new_backing: PathLike) -> CowHeader:
    """Point the COW file at ``new_backing`` (the base moved); refused unless its size and mtime match the header.

    A v3 file keeps its layout and only gets a new header; v1, v2 and broken v3 files are rewritten as clean v3.
    """
    _ensure_idle(path)
    fd = _open(path)
    try:
        old = _header_of_fd(fd, str(path))
        check_backing(old, absolutize(new_backing))
        _, raw = _new_header(new_backing)
        new = parse_header(raw, str(path))
        if old.variant == "v3" and old.alignment != ALIGNMENT:
            raw = _V3.pack(COW_MAGIC, 3, new.mtime, new.size, SECTOR, old.alignment, 0,
                           os.fsencode(new.backing_file))
            new = parse_header(raw, str(path))
        mode = os.fstat(fd).st_mode & 0o7777
        try:
            with atomic_file(Path(path), overwrite=True, mode=mode) as out_fd:
                if old.variant == "v3":
                    copy_sparse_fd(fd, out_fd)
                    os.pwrite(out_fd, raw, 0)
                else:
                    _convert(fd, old, out_fd, new, raw)
        except OSError as err:
            raise OverlayError(f"Cannot rewrite COW file '{path}': {err.strerror}.") from err
        return new
    finally:
        os.close(fd)


def _convert(src_fd: int, old: CowHeader, out_fd: int, new: CowHeader, raw: bytes) -> None:
    """Copy bitmap and sectors of an old-layout COW into a fresh v3 layout."""
    _init_file(out_fd, new, raw)
    for chunk_at in range(0, old.bitmap_bytes, _CHUNK):
        chunk = _bitmap(src_fd, old, chunk_at, _CHUNK)
        if chunk.count(0) != len(chunk):
            os.pwrite(out_fd, chunk, new.bitmap_offset + chunk_at)
    for start, count in _runs(src_fd, old):
        copy_range(src_fd, out_fd, old.data_offset + start * SECTOR, new.data_offset + start * SECTOR,
                   count * SECTOR)
    os.ftruncate(out_fd, new.data_offset + new.size)


class UmlCow(Overlay):
    """UML ubd COW overlays: what `labkit.runtime.uml` passes as ``ubdN=overlay,base``."""

    kind = "umlcow"
    suffix = ".cow"

    def create(self, base: Path, path: Path) -> OverlayInfo:
        write_cow(path, base)
        return self.info(path)

    def reset(self, path: Path, base: Path) -> OverlayInfo:
        """A fresh header over the old file: milliseconds, whatever the overlay held (the bitmap is a hole)."""
        _ensure_idle(path)
        header, raw = _new_header(base)
        try:
            with atomic_file(Path(path), overwrite=True) as fd:
                _init_file(fd, header, raw)
        except OSError as err:
            raise OverlayError(f"Cannot write COW file '{path}': {err.strerror}.") from err
        return self.info(path)

    def info(self, path: Path) -> OverlayInfo:
        header = read_header(path)
        st = os.stat(path)
        details = (("variant", header.variant), ("version", str(header.version)), ("mtime", str(header.mtime)),
                   ("alignment", str(header.alignment)), ("apparent_bytes", str(st.st_size)))
        return OverlayInfo(kind=self.kind, path=Path(path), backing_file=Path(header.backing_file),
                           virtual_size=header.size, allocated_bytes=count_allocated(path) * SECTOR,
                           file_bytes=st.st_blocks * 512, details=details)

    def snapshot(self, path: Path, dest: Path) -> OverlayInfo:
        read_header(path)
        sparse_copy(Path(path), Path(dest), overwrite=False)
        return self.info(dest)

    def restore(self, snapshot: Path, path: Path) -> OverlayInfo:
        read_header(snapshot)
        _ensure_idle(path)
        sparse_copy(Path(snapshot), Path(path), overwrite=True)
        return self.info(path)

    def backing_problem(self, path: Path) -> str | None:
        """The base must exist with the size and mtime the header recorded, as UML checks before it boots."""
        try:
            check_backing(read_header(path))
        except OverlayError as err:
            return str(err)
        return None

    def rebase(self, path: Path, new_base: Path) -> OverlayInfo:
        rebase(path, new_base)
        return self.info(path)

    def flatten(self, path: Path, output: Path) -> None:
        """`merge` over the backing file the header names (checked against its size and mtime, as UML does)."""
        merge(path, output)

    def delete(self, path: Path) -> None:
        if not os.path.lexists(path):
            raise NotFoundError(f"COW file '{path}' does not exist.")
        _ensure_idle(path)
        try:
            os.unlink(path)
        except OSError as err:
            raise OverlayError(f"Cannot delete COW file '{path}': {err.strerror}.") from err
