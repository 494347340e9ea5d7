"""The UML COW format: headers of every version, bitmap edges, reads through the overlay, merge, rebase, atomic writes.

Headers for v1, v2 and the broken 64-bit v3 are built by hand here from the kernel's struct layouts, independently of
the module's own struct strings. Tests against the real kernel are in tests/guests/test_umlcow_kernel.py.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.errors import ConflictError, NotFoundError, OverlayError
from labkit.overlays import OVERLAYS, get_overlay, umlcow
from labkit.overlays.sparse import data_extents, sparse_copy
from labkit.overlays.umlcow import UmlCow

MAGIC = 0x4F4F4F4D
MTIME = 1_700_000_000


def make_base(path: Path, sectors: int, tail: int = 0) -> Path:
    """A base image of ``sectors`` sectors (+ ``tail`` bytes) whose every sector holds a recognisable pattern."""
    data = b"".join(bytes([n % 251]) * 4 + f"base{n:08d}".encode() * 42 + b"\0" * 4 for n in range(sectors))
    path.write_bytes(data + b"T" * tail)
    os.utime(path, (MTIME, MTIME))
    return path


def base_sector(n: int) -> bytes:
    return bytes([n % 251]) * 4 + f"base{n:08d}".encode() * 42 + b"\0" * 4


def cow_sector(n: int) -> bytes:
    return f"COW-{n:06d}|".encode().ljust(512, b"c")


def put_sector(cow: Path, n: int, data: bytes | None = None) -> None:
    """Do what the kernel does for a write: data at data_offset + n*512, then the bitmap bit."""
    header = umlcow.read_header(cow)
    data = cow_sector(n) if data is None else data
    with open(cow, "r+b") as f:
        f.seek(header.data_offset + n * 512)
        f.write(data)
        f.seek(header.bitmap_offset + n // 8)
        byte = f.read(1)[0]
        f.seek(header.bitmap_offset + n // 8)
        f.write(bytes([byte | 1 << (n % 8)]))


def v1_header(backing: str, size: int, mtime: int = MTIME, big_endian_magic: bool = False) -> bytes:
    magic = struct.pack(">ii", MAGIC, 1) if big_endian_magic else struct.pack("<ii", MAGIC, 1)
    return magic + backing.encode().ljust(256, b"\0") + struct.pack("<IQi", mtime, size, 512)


def v2_header(backing: str, size: int, mtime: int = MTIME) -> bytes:
    return struct.pack(">II", MAGIC, 2) + backing.encode().ljust(4096, b"\0") + struct.pack(">IQi", mtime, size, 512)


def v3_header(backing: str, size: int, mtime: int = MTIME, sectorsize: int = 512, align: int = 4096,
              cow_format: int = 0, version: int = 3) -> bytes:
    return (struct.pack(">IIIQIII", MAGIC, version, mtime, size, sectorsize, align, cow_format)
            + backing.encode().ljust(4096, b"\0"))


def broken_header(backing: str, size: int, mtime: int = MTIME) -> bytes:
    # unpacked struct on x86_64: u32 magic, u32 version, u32 mtime (htonl) + 4 pad, u64 size, u32 x3, path, 4 pad
    return (struct.pack(">III", MAGIC, 3, mtime) + b"\0" * 4 + struct.pack(">QIII", size, 512, 4096, 0)
            + backing.encode().ljust(4096, b"\0") + b"\0" * 4)


def write_raw_cow(path: Path, header: bytes, data_offset: int, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(data_offset + size)
    return path


# ---------------------------------------------------------------- v3 as written by labkit


def test_write_cow_header_bytes(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 16)
    header = umlcow.write_cow(tmp_path / "a.cow", base)
    raw = (tmp_path / "a.cow").read_bytes()
    assert raw[:32] == struct.pack(">IIIQIII", MAGIC, 3, MTIME, 16 * 512, 512, 4096, 0)
    name = str(base).encode()
    assert raw[32:32 + len(name)] == name
    assert raw[32 + len(name):8192] == b"\0" * (8192 - 32 - len(name))
    assert (header.bitmap_offset, header.data_offset, header.variant) == (8192, 12288, "v3")
    assert len(raw) == 12288 + 16 * 512
    assert umlcow.read_header(tmp_path / "a.cow") == header


def test_write_cow_is_sparse(tmp_path: Path) -> None:
    base = tmp_path / "big.img"
    with open(base, "wb") as f:
        f.truncate(1 << 30)
    umlcow.write_cow(tmp_path / "a.cow", base)
    st = os.stat(tmp_path / "a.cow")
    assert st.st_size == 8192 + 262144 + (1 << 30)  # header, bitmap of 2 Mi sectors, data
    assert st.st_blocks * 512 <= 16384
    with open(tmp_path / "a.cow", "rb") as f:
        assert [off for off, _ in data_extents(f.fileno())] == [0]


def test_write_cow_stores_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_base(tmp_path / "base.img", 8)
    monkeypatch.chdir(tmp_path)
    header = umlcow.write_cow("a.cow", "base.img")
    assert header.backing_file == str(tmp_path.resolve() / "base.img")


def test_write_cow_refuses_existing_file(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 8)
    target = tmp_path / "a.cow"
    target.write_bytes(b"student work")
    with pytest.raises(ConflictError, match="already exists"):
        umlcow.write_cow(target, base)
    assert target.read_bytes() == b"student work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.cow", "base.img"]


def test_write_cow_missing_backing(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        umlcow.write_cow(tmp_path / "a.cow", tmp_path / "nope.img")
    assert list(tmp_path.iterdir()) == []


def test_write_cow_name_too_long(tmp_path: Path) -> None:
    with pytest.raises(OverlayError, match="is too long - names are limited to 4095 characters"):
        umlcow.write_cow(tmp_path / "a.cow", tmp_path / ("x" * 250) / ".." / ("y" * 4090))


def test_write_cow_full_disk_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = make_base(tmp_path / "base.img", 8)

    def no_space(fd: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(umlcow.os, "ftruncate", no_space)
    with pytest.raises(OverlayError, match="No space left on device"):
        umlcow.write_cow(tmp_path / "a.cow", base)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.img"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into a read-only folder")
def test_write_cow_unwritable_folder(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 8)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OverlayError, match="Cannot create a file in"):
            umlcow.write_cow(folder / "a.cow", base)
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


# ---------------------------------------------------------------- older and odd headers


def test_v1_header(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 16)
    cow = write_raw_cow(tmp_path / "v1.cow", v1_header(str(base), 16 * 512), 512, 16 * 512)
    header = umlcow.read_header(cow)
    assert (header.version, header.variant, header.backing_file) == (1, "v1", str(base))
    assert (header.mtime, header.size, header.sectorsize, header.alignment) == (MTIME, 8192, 512, 512)
    assert (header.bitmap_offset, header.data_offset) == (280, 512)
    put_sector(cow, 3)
    put_sector(cow, 15)
    assert list(umlcow.allocated_sectors(cow)) == [3, 15]
    assert umlcow.read_range(cow, 3 * 512, 512) == cow_sector(3)
    assert umlcow.read_range(cow, 2 * 512, 512) == base_sector(2)


def test_v1_header_with_big_endian_magic(tmp_path: Path) -> None:
    cow = write_raw_cow(tmp_path / "v1.cow", v1_header("/srv/base.img", 4096, big_endian_magic=True), 512, 4096)
    header = umlcow.read_header(cow)
    assert (header.version, header.size, header.mtime) == (1, 4096, MTIME)


def test_v2_header(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 16)
    cow = write_raw_cow(tmp_path / "v2.cow", v2_header(str(base), 16 * 512), 4608, 16 * 512)
    header = umlcow.read_header(cow)
    assert (header.version, header.variant, header.backing_file) == (2, "v2", str(base))
    assert (header.mtime, header.size, header.alignment) == (MTIME, 8192, 512)
    assert (header.bitmap_offset, header.data_offset) == (4120, 4608)
    put_sector(cow, 0)
    assert umlcow.read_range(cow, 0, 1024) == cow_sector(0) + base_sector(1)


def test_v2_rounding_bug_leaves_last_sectors_without_bits(tmp_path: Path) -> None:
    # 9 sectors: the old formula gives a 1-byte bitmap, so sector 8 has no bit inside the bitmap.
    header = umlcow.parse_header(v2_header("/b.img", 9 * 512))
    assert header.data_offset == 4608
    assert header.bitmap_bytes == 2  # sector 8's bit still lies before the data area


def test_broken_v3_header(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 16)
    cow = write_raw_cow(tmp_path / "b.cow", broken_header(str(base), 16 * 512), 12288, 16 * 512)
    header = umlcow.read_header(cow)
    assert (header.version, header.variant, header.backing_file) == (3, "v3-broken64", str(base))
    assert (header.mtime, header.size, header.sectorsize, header.alignment) == (MTIME, 8192, 512, 4096)
    assert (header.bitmap_offset, header.data_offset) == (8192, 12288)
    umlcow.check_backing(header)
    put_sector(cow, 5)
    assert list(umlcow.allocated_sectors(cow)) == [5]
    assert umlcow.read_range(cow, 5 * 512, 512) == cow_sector(5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "only 0 bytes long"),
        (b"MOOO", "only 4 bytes long"),
        (b"\x7fELF" + b"\0" * 5000, "not a UML COW file"),
        (b"hello world, I am a text file" * 200, "not a UML COW file"),
        (v3_header("/b.img", 4096, version=7), "invalid COW version 7"),
        (v3_header("/b.img", 4096)[:100], "truncated COW file: failed to read V3 header"),
        (v2_header("/b.img", 4096)[:4000], "truncated COW file: failed to read V2 header"),
        (v1_header("/b.img", 4096)[:200], "truncated COW file: failed to read V1 header"),
        (v3_header("/b.img", 4096, sectorsize=4096), "sector size 4096"),
        (v3_header("/b.img", 4096, align=0), "align == 0"),
        (v3_header("/b.img", 4096, cow_format=1), "COW format 1"),
        (v3_header("/b.img", 4096), "truncated COW file: it ends at byte 4128"),
        (struct.pack(">IIIQIII", MAGIC, 3, 0, 4096, 512, 4096, 0) + b"/" * 4096, "not terminated"),
    ],
)
def test_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    cow = tmp_path / "bad.cow"
    cow.write_bytes(content)
    with pytest.raises(OverlayError, match=message):
        umlcow.read_header(cow)


def test_missing_cow(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        umlcow.read_header(tmp_path / "none.cow")


# ---------------------------------------------------------------- bitmap edges


@pytest.mark.parametrize("sectors", [13, 16, 64, 4097])
def test_bitmap_edge_sectors(tmp_path: Path, sectors: int) -> None:
    base = make_base(tmp_path / "base.img", sectors)
    cow = tmp_path / "a.cow"
    umlcow.write_cow(cow, base)
    wanted = sorted({0, 7, 8, sectors - 1})
    for n in wanted:
        put_sector(cow, n)
    assert list(umlcow.allocated_sectors(cow)) == wanted
    assert umlcow.count_allocated(cow) == len(wanted)
    for n in wanted:
        assert umlcow.read_range(cow, n * 512, 512) == cow_sector(n)
    for n in (1, 6, 9, sectors - 2):
        if n not in wanted:
            assert umlcow.read_range(cow, n * 512, 512) == base_sector(n)


def test_bits_past_the_last_sector_are_ignored(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 13)
    cow = tmp_path / "a.cow"
    header = umlcow.write_cow(cow, base)
    with open(cow, "r+b") as f:  # the kernel writes whole words of its bitmap, so bits after the end may be set
        f.seek(header.bitmap_offset + 1)
        f.write(b"\xff\xff\xff")
    assert list(umlcow.allocated_sectors(cow)) == [8, 9, 10, 11, 12]
    assert umlcow.count_allocated(cow) == 5


def test_partial_last_sector(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 4, tail=100)
    cow = tmp_path / "a.cow"
    header = umlcow.write_cow(cow, base)
    assert (header.size, header.sectors) == (4 * 512 + 100, 5)
    assert umlcow.read_range(cow, 4 * 512, 4096) == b"T" * 100
    put_sector(cow, 4)
    assert list(umlcow.allocated_sectors(cow)) == [4]
    assert umlcow.read_range(cow, 4 * 512, 4096) == cow_sector(4)[:100]


def test_long_runs(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    with open(base, "wb") as f:
        f.truncate(64 * 512)
    cow = tmp_path / "a.cow"
    header = umlcow.write_cow(cow, base)
    with open(cow, "r+b") as f:
        f.seek(header.bitmap_offset)
        f.write(bytes([0xFE, 0xFF, 0x01, 0x00, 0x80, 0xFF, 0xFF, 0xFF]))
    assert list(umlcow.allocated_runs(cow)) == [(1, 16), (39, 25)]
    assert umlcow.count_allocated(cow) == 41


def test_runs_across_holes_in_a_sparse_bitmap(tmp_path: Path) -> None:
    """A bitmap of 16 KB: bits in its first and last 4 KB block, holes between. Runs end where a hole starts."""
    base = tmp_path / "base.img"
    with open(base, "wb") as f:
        f.truncate(131072 * 512)  # 131072 sectors: a bitmap of four 4 KB blocks
    cow = tmp_path / "a.cow"
    header = umlcow.write_cow(cow, base)
    with open(cow, "r+b") as f:
        f.seek(header.bitmap_offset + 4095)  # sectors 32760-32767: the last byte before a hole
        f.write(b"\xff")
        f.seek(header.bitmap_offset + 3 * 4096)  # sector 98304: first bit after the hole
        f.write(b"\x01")
        f.seek(header.bitmap_offset + 4 * 4096 - 1)  # sectors 131064-131071: the very last byte
        f.write(b"\xff")
    with open(cow, "rb") as f:
        extents = list(data_extents(f.fileno(), header.bitmap_offset, header.bitmap_offset + header.bitmap_bytes))
    assert len(extents) == 2, "the middle of the bitmap must really be a hole for this test to mean anything"
    assert list(umlcow.allocated_runs(cow)) == [(32760, 8), (98304, 1), (131064, 8)]
    assert umlcow.count_allocated(cow) == 17


def test_a_fresh_overlay_reads_no_bitmap(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    with open(base, "wb") as f:
        f.truncate(2 << 30)
    cow = tmp_path / "a.cow"
    umlcow.write_cow(cow, base)
    assert umlcow.count_allocated(cow) == 0
    assert list(umlcow.allocated_runs(cow)) == []
    assert os.stat(cow).st_blocks * 512 <= 16384


# ---------------------------------------------------------------- reading through the overlay


def test_read_range_across_boundaries(tmp_path: Path) -> None:
    sectors = 24
    base = make_base(tmp_path / "base.img", sectors)
    cow = tmp_path / "a.cow"
    umlcow.write_cow(cow, base)
    allocated = {1, 2, 8, 9, 10, 23}
    for n in allocated:
        put_sector(cow, n)
    disk = b"".join(cow_sector(n) if n in allocated else base_sector(n) for n in range(sectors))
    for offset, length in [(0, 512), (500, 30), (511, 2), (300, 1500), (1020, 4000), (0, len(disk)),
                           (23 * 512 - 1, 2), (23 * 512, 512), (23 * 512 + 10, 10_000), (len(disk), 5)]:
        assert umlcow.read_range(cow, offset, length) == disk[offset:offset + length], (offset, length)


def test_read_range_rejects_negative(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 8)
    umlcow.write_cow(tmp_path / "a.cow", base)
    with pytest.raises(OverlayError, match="negative"):
        umlcow.read_range(tmp_path / "a.cow", -1, 10)


def test_read_range_with_other_backing(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 8)
    umlcow.write_cow(tmp_path / "a.cow", base)
    moved = tmp_path / "moved.img"
    base.rename(moved)
    with pytest.raises(OverlayError, match="does not exist"):
        umlcow.read_range(tmp_path / "a.cow", 0, 512)
    assert umlcow.read_range(tmp_path / "a.cow", 0, 512, backing=moved) == base_sector(0)


# ---------------------------------------------------------------- backing checks


def test_check_backing_size_mismatch(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 8)
    header = umlcow.write_cow(tmp_path / "a.cow", base)
    with open(base, "ab") as f:
        f.write(b"x" * 512)
    os.utime(base, (MTIME, MTIME))
    with pytest.raises(OverlayError) as err:
        umlcow.check_backing(header)
    assert "Size mismatch (4096 vs 4608) of COW header vs backing file" in str(err.value)


def test_check_backing_mtime_mismatch(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 8)
    header = umlcow.write_cow(tmp_path / "a.cow", base)
    os.utime(base, (MTIME + 5, MTIME + 5))
    with pytest.raises(OverlayError) as err:
        umlcow.check_backing(header)
    assert f"mtime mismatch ({MTIME} vs {MTIME + 5}) of COW header vs backing file" in str(err.value)


# ---------------------------------------------------------------- merge


def test_merge(tmp_path: Path) -> None:
    sectors = 40
    base = make_base(tmp_path / "base.img", sectors, tail=200)
    before = hashlib.sha256(base.read_bytes()).hexdigest()
    cow = tmp_path / "a.cow"
    umlcow.write_cow(cow, base)
    allocated = {0, 7, 8, 20, 21, 40}
    for n in allocated:
        put_sector(cow, n)
    out = tmp_path / "merged.img"
    umlcow.merge(cow, out)
    expected = b"".join(cow_sector(n) if n in allocated else base_sector(n) for n in range(sectors))
    expected += cow_sector(40)[:200]
    assert out.read_bytes() == expected
    assert hashlib.sha256(base.read_bytes()).hexdigest() == before
    assert os.stat(base).st_mtime == MTIME
    with pytest.raises(ConflictError):
        umlcow.merge(cow, out)


def test_merge_keeps_holes(tmp_path: Path) -> None:
    base = tmp_path / "base.img"
    with open(base, "wb") as f:
        f.truncate(256 << 20)
        f.seek(1 << 20)
        f.write(b"base data")
    cow = tmp_path / "a.cow"
    umlcow.write_cow(cow, base)
    put_sector(cow, 100_000, b"z" * 512)
    out = tmp_path / "merged.img"
    umlcow.merge(cow, out)
    assert os.stat(out).st_size == 256 << 20
    assert os.stat(out).st_blocks * 512 < 1 << 20
    assert umlcow.read_range(cow, 100_000 * 512, 512) == b"z" * 512
    with open(out, "rb") as f:
        f.seek(100_000 * 512)
        assert f.read(512) == b"z" * 512
        f.seek(1 << 20)
        assert f.read(9) == b"base data"


def test_merge_refuses_changed_base(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 8)
    umlcow.write_cow(tmp_path / "a.cow", base)
    os.utime(base, (MTIME + 1, MTIME + 1))
    with pytest.raises(OverlayError, match="mtime mismatch"):
        umlcow.merge(tmp_path / "a.cow", tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()


# ---------------------------------------------------------------- rebase


def test_rebase_after_move(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 16)
    cow = tmp_path / "a.cow"
    umlcow.write_cow(cow, base)
    put_sector(cow, 3)
    (tmp_path / "new").mkdir()
    moved = tmp_path / "new" / "base.img"
    base.rename(moved)  # a rename keeps size and mtime
    header = umlcow.rebase(cow, moved)
    assert header.backing_file == str(moved)
    assert umlcow.read_header(cow) == header
    assert list(umlcow.allocated_sectors(cow)) == [3]
    assert umlcow.read_range(cow, 0, 4 * 512) == base_sector(0) + base_sector(1) + base_sector(2) + cow_sector(3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.cow", "new"]


def test_rebase_refuses_mismatch(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 16)
    cow = tmp_path / "a.cow"
    umlcow.write_cow(cow, base)
    before = cow.read_bytes()
    other = make_base(tmp_path / "other.img", 17)
    with pytest.raises(OverlayError, match=r"Size mismatch \(8192 vs 8704\) of COW header vs backing file"):
        umlcow.rebase(cow, other)
    same_size = make_base(tmp_path / "same.img", 16)
    os.utime(same_size, (MTIME + 60, MTIME + 60))
    with pytest.raises(OverlayError, match=rf"mtime mismatch \({MTIME} vs {MTIME + 60}\)"):
        umlcow.rebase(cow, same_size)
    assert cow.read_bytes() == before


def test_rebase_converts_v2_to_v3(tmp_path: Path) -> None:
    base = make_base(tmp_path / "base.img", 16)
    cow = write_raw_cow(tmp_path / "v2.cow", v2_header("/gone/base.img", 16 * 512), 4608, 16 * 512)
    put_sector(cow, 0)
    put_sector(cow, 9)
    header = umlcow.rebase(cow, base)
    assert (header.variant, header.backing_file, header.data_offset) == ("v3", str(base), 12288)
    assert list(umlcow.allocated_sectors(cow)) == [0, 9]
    assert umlcow.read_range(cow, 8 * 512, 1024) == base_sector(8) + cow_sector(9)
    assert umlcow.read_range(cow, 0, 512) == cow_sector(0)


# ---------------------------------------------------------------- the Overlay class


def test_every_overlay_kind_implements_the_interface() -> None:
    for kind, cls in OVERLAYS.items():
        overlay = cls()
        assert overlay.kind == kind
        assert isinstance(get_overlay(kind), cls)
        assert overlay.suffix.startswith(".") and overlay.file_name("m1") == f"m1{overlay.suffix}"


def test_unknown_overlay_kind() -> None:
    with pytest.raises(OverlayError, match="Unknown overlay kind 'vdi'"):
        get_overlay("vdi")


def test_umlcow_lifecycle(tmp_path: Path) -> None:
    overlay = UmlCow()
    base = make_base(tmp_path / "base.img", 64)
    cow = tmp_path / "a.cow"
    info = overlay.create(base, cow)
    assert (info.kind, info.backing_file, info.virtual_size, info.allocated_bytes) == ("umlcow", base, 64 * 512, 0)
    put_sector(cow, 10)
    put_sector(cow, 11)
    assert overlay.info(cow).allocated_bytes == 1024

    snap = tmp_path / "snap.cow"
    assert overlay.snapshot(cow, snap).allocated_bytes == 1024
    with pytest.raises(ConflictError):
        overlay.snapshot(cow, snap)

    assert overlay.reset(cow, base).allocated_bytes == 0
    assert umlcow.read_range(cow, 10 * 512, 512) == base_sector(10)

    assert overlay.restore(snap, cow).allocated_bytes == 1024
    assert umlcow.read_range(cow, 10 * 512, 1024) == cow_sector(10) + cow_sector(11)

    overlay.delete(cow)
    assert not cow.exists()
    with pytest.raises(NotFoundError):
        overlay.delete(cow)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.img", "snap.cow"]


def test_umlcow_flattens_to_the_disk_the_guest_sees(tmp_path: Path) -> None:
    overlay = UmlCow()
    base = make_base(tmp_path / "base.img", 16)
    cow = tmp_path / overlay.file_name("a")
    overlay.create(base, cow)
    put_sector(cow, 3)
    overlay.flatten(cow, tmp_path / "flat.img")
    flat = (tmp_path / "flat.img").read_bytes()
    assert flat == b"".join(cow_sector(n) if n == 3 else base_sector(n) for n in range(16))
    with pytest.raises(ConflictError):  # never over an existing file
        overlay.flatten(cow, tmp_path / "flat.img")


def test_reset_keeps_file_sparse(tmp_path: Path) -> None:
    base = tmp_path / "big.img"
    with open(base, "wb") as f:
        f.truncate(4 << 30)
    cow = tmp_path / "a.cow"
    overlay = UmlCow()
    overlay.create(base, cow)
    for n in range(0, 8_000_000, 100_000):
        put_sector(cow, n)
    info = overlay.reset(cow, base)
    assert info.allocated_bytes == 0
    assert info.file_bytes <= 16384


def test_snapshot_is_sparse(tmp_path: Path) -> None:
    base = tmp_path / "big.img"
    with open(base, "wb") as f:
        f.truncate(1 << 30)
    cow = tmp_path / "a.cow"
    overlay = UmlCow()
    overlay.create(base, cow)
    put_sector(cow, 1_000_000)
    info = overlay.snapshot(cow, tmp_path / "s.cow")
    assert info.file_bytes < 1 << 20
    assert os.stat(tmp_path / "s.cow").st_size == os.stat(cow).st_size
    assert umlcow.read_header(tmp_path / "s.cow") == umlcow.read_header(cow)
    assert list(umlcow.allocated_sectors(tmp_path / "s.cow")) == [1_000_000]
    assert umlcow.read_range(tmp_path / "s.cow", 1_000_000 * 512, 512) == cow_sector(1_000_000)


def test_snapshot_refuses_foreign_file(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"not a cow at all")
    with pytest.raises(OverlayError, match="not a UML COW file"):
        UmlCow().snapshot(tmp_path / "x", tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_writers_refuse_a_cow_in_use(tmp_path: Path) -> None:
    """UML holds a POSIX write lock on the COW while it runs; a second process stands in for it here."""
    base = make_base(tmp_path / "base.img", 8)
    cow = tmp_path / "a.cow"
    overlay = UmlCow()
    overlay.create(base, cow)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR)\n"
         "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()", str(cow)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for action in (lambda: overlay.reset(cow, base), lambda: overlay.delete(cow),
                       lambda: umlcow.rebase(cow, base)):
            with pytest.raises(ConflictError, match="in use by a running machine"):
                action()
        assert overlay.info(cow).allocated_bytes == 0  # readers still work
    finally:
        holder.kill()
        holder.wait()
    overlay.reset(cow, base)


def test_sparse_copy(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(b"middle")
        f.seek((64 << 20) - 3)
        f.write(b"end")
    src.chmod(0o640)
    dest = tmp_path / "dest"
    sparse_copy(src, dest)
    assert dest.read_bytes() == src.read_bytes()
    assert os.stat(dest).st_blocks * 512 < 1 << 20
    assert os.stat(dest).st_mode & 0o777 == 0o640
    with pytest.raises(ConflictError):
        sparse_copy(src, dest)
    (tmp_path / "other").write_bytes(b"abc")
    sparse_copy(tmp_path / "other", dest, overwrite=True)
    assert dest.read_bytes() == b"abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "other", "src"]
