"""Fuzzing the UML COW reader: a COW file may come from anywhere (``labkit cow info FILE``, a restored snapshot, a
broken disk), so every function that reads one must answer with the file's facts or an `OverlayError`-like
`LabkitError`, never another exception, and must write nothing when it fails.

Inputs are both raw bytes and headers built field by field (every version, the real backing file or not, sizes and
alignments at their edges, bitmaps and data areas cut anywhere), so the fuzzer gets past the magic and the version.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from labkit.errors import LabkitError
from labkit.overlays import umlcow
from labkit.overlays.umlcow import COW_MAGIC, UmlCow

MTIME = 1_700_000_000
BASE_SECTORS = 40

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cowfuzz") / "base.img"
    path.write_bytes(b"".join(f"sector {n:04d} ".encode().ljust(512, b".") for n in range(BASE_SECTORS)))
    os.utime(path, (MTIME, MTIME))
    return path


def _path_field(draw: st.DrawFn, base: Path, length: int, hostile: bool) -> bytes:
    name = os.fsencode(base)
    if hostile:
        name = draw(st.one_of(st.binary(max_size=40), st.just(b"\0"), st.just(b"/" + b"x" * (length + 10))))
    return name[:length].ljust(length, b"\0")


#: the header field a drawn file gets wrong (None: all are right; most files are wrong in one place only, so the
#: fuzzer gets past the checks to the bitmap, the data area and the backing file)
FIELDS = [None, None, None, "size", "mtime", "sector", "version", "alignment", "format", "path", "layout", "magic"]


@st.composite
def cow_files(draw: st.DrawFn, base: Path) -> bytes:
    """The bytes of a COW file: a header of any version with one hostile field (or none), then bitmap and data."""
    bad = draw(st.sampled_from(FIELDS))
    size = draw(st.one_of(st.integers(0, BASE_SECTORS * 512 + 1000), U64)) if bad == "size" else BASE_SECTORS * 512
    mtime = draw(U32) if bad == "mtime" else MTIME
    sector = draw(U32) if bad == "sector" else 512
    version = draw(st.sampled_from([0, 4, 2**32 - 1, 2**24]) if bad == "version" else st.sampled_from([1, 2, 3, 3]))
    signed = sector - 2**32 if sector >= 2**31 else sector
    if version == 1:
        order = ">" if draw(st.booleans()) else "<"
        header = struct.pack(f"{order}I", COW_MAGIC) + struct.pack("<i", 1) + \
            _path_field(draw, base, 256, bad == "path") + struct.pack("<IQi", mtime, size, signed)
    elif version == 2:
        header = struct.pack(">II", COW_MAGIC, 2) + _path_field(draw, base, 4096, bad == "path") + \
            struct.pack(">IQi", mtime, size, signed)
    else:
        alignment = draw(st.one_of(st.sampled_from([512, 0, 1024, 8192, 2**31]), U32)) if bad == "alignment" \
            else 4096
        cow_format = draw(U32) if bad == "format" else 0
        fields = struct.pack(">IIIQIII", COW_MAGIC, version, mtime, size, sector, alignment, cow_format)
        if bad == "layout":  # the old unpacked 64-bit layout: 4 bytes of padding after the mtime
            fields = fields[:12] + b"\0\0\0\0" + fields[12:]
        header = fields + _path_field(draw, base, 4096, bad == "path")
    if bad == "magic":
        header = draw(st.binary(min_size=4, max_size=4)) + header[4:]
    bitmap = draw(st.one_of(st.binary(max_size=16), st.just(b"\xff" * 8), st.just(b"\x55" * 6)))
    body = header.ljust(8192, b"\0") + bitmap
    full = 8192 + 4096 + BASE_SECTORS * 512
    cut = draw(st.one_of(st.none(), st.none(), st.integers(0, len(body)), st.integers(8192, full)))
    if cut is None:  # a full file: bitmap and then sectors as far as the base's size
        return body.ljust(full, b"d")
    return body[:cut] if cut <= len(body) else body.ljust(cut, b"d")


def _reads(path: Path, base: Path, offset: int, length: int) -> None:
    """Every reading entry point; each must succeed or raise a LabkitError."""
    for read in (lambda: umlcow.read_header(path), lambda: umlcow.count_allocated(path),
                 lambda: list(umlcow.allocated_runs(path)), lambda: UmlCow().info(path),
                 lambda: umlcow.read_range(path, offset, length, base)):
        try:
            read()
        except LabkitError:
            continue


@given(raw=st.binary(max_size=5000))
@fuzz(400)
def test_parse_header_of_any_bytes_is_a_header_or_an_overlay_error(raw: bytes) -> None:
    try:
        header = umlcow.parse_header(raw, "fuzzed")
    except LabkitError as err:
        assert "fuzzed" in str(err)
        return
    assert header.sectorsize == umlcow.SECTOR and header.data_offset >= header.bitmap_offset


@given(data=st.data(), offset=st.integers(0, 2**40), length=st.integers(0, 4096))
@fuzz(300)
def test_reading_a_hostile_cow_file_is_its_facts_or_a_labkit_error(data: st.DataObject, base: Path,
                                                                     tmp_path: Path, offset: int,
                                                                     length: int) -> None:
    raw = data.draw(cow_files(base))
    path = tmp_path / "fuzz.cow"
    path.write_bytes(raw)
    _reads(path, base, offset % (BASE_SECTORS * 512 + 600), length)
    assert path.read_bytes() == raw  # reading never changes the file


@given(data=st.data())
@fuzz(150)
def test_merge_and_rebase_of_a_hostile_cow_file_write_nothing_when_they_fail(data: st.DataObject, base: Path,
                                                                               tmp_path: Path) -> None:
    raw = data.draw(cow_files(base))
    path, output = tmp_path / "fuzz.cow", tmp_path / "merged.img"
    path.write_bytes(raw)
    output.unlink(missing_ok=True)
    before = set(tmp_path.iterdir())
    try:
        umlcow.merge(path, output, base)
    except LabkitError:
        assert set(tmp_path.iterdir()) == before, "a failed merge left a file behind"
    else:
        assert output.stat().st_size == umlcow.read_header(path).size
        output.unlink()
    try:
        umlcow.rebase(path, base)
    except LabkitError:
        assert path.read_bytes() == raw, "a failed rebase changed the COW file"
        assert set(tmp_path.iterdir()) == before, "a failed rebase left a file behind"
    else:
        assert umlcow.read_header(path).variant == "v3"
