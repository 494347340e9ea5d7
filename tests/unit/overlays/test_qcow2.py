"""qcow2 overlays through the real qemu-img: lifecycle, strict backing checks, careless and hostile files, a held lock.

Guest writes are made with the real ``qemu-io``; the lock is held by a real ``qemu-system-x86_64`` that the test starts
(paused, no kernel) and ends by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.errors import ConflictError, NotFoundError, OverlayError
from labkit.overlays import get_overlay
from labkit.overlays.qcow2 import Qcow2

MIB = 1 << 20


def make_base(path: Path, size: int = 4 * MIB) -> Path:
    """A raw base whose first MiB holds a recognisable pattern."""
    with open(path, "wb") as f:
        f.write(b"".join(f"base{n:08d}".encode().ljust(512, b"b") for n in range(2048)))
        f.truncate(size)
    return path


def guest_write(overlay: Path, offset: int, length: int, pattern: int = 0xAB) -> None:
    """Write through the qcow2 as a guest would (qemu-io, format forced)."""
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} {length}", str(overlay)],
                   check=True, capture_output=True, timeout=30)


def raw_qcow2(overlay: Path, backing: Path, backing_fmt: str = "raw", size: str | None = None) -> Path:
    args = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_fmt, "-b", str(backing), str(overlay)]
    subprocess.run([*args, *([size] if size else [])], check=True, capture_output=True, timeout=30)
    return overlay


@pytest.fixture
def running_qemu(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """Start a paused QEMU holding an overlay as its disk, as a running machine does; ended by PID."""
    procs: list[subprocess.Popen[str]] = []

    def start(overlay: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["qemu-system-x86_64", "-S", "-nodefaults", "-display", "none", "-accel", "tcg", "-m", "16",
             "-drive", f"file={overlay},if=virtio,format=qcow2", "-monitor", "stdio"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        seen = ""
        while "(qemu)" not in seen:  # the monitor prompt comes after every drive is open (and locked)
            char = proc.stdout.read(1)
            assert char, f"qemu exited: {seen}"
            seen += char
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def test_registered_with_suffix() -> None:
    overlay = get_overlay("qcow2")
    assert isinstance(overlay, Qcow2)
    assert (overlay.kind, overlay.suffix) == ("qcow2", ".qcow2")


def test_lifecycle(tmp_path: Path) -> None:
    overlay = Qcow2()
    base = make_base(tmp_path / "base.img")
    ov = tmp_path / "m.qcow2"
    info = overlay.create(base, ov)
    assert (info.kind, info.backing_file, info.virtual_size, info.allocated_bytes) == ("qcow2", base, 4 * MIB, 0)
    assert oct(ov.stat().st_mode & 0o777) == "0o600"
    header = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(ov)], capture_output=True,
                                       check=True, text=True).stdout)
    assert (header["backing-filename"], header["backing-filename-format"]) == (str(base), "raw")
    base_bytes = base.read_bytes()

    guest_write(ov, MIB, 128 * 1024)
    assert overlay.info(ov).allocated_bytes == 128 * 1024
    snap = tmp_path / "snap.qcow2"
    assert overlay.snapshot(ov, snap).allocated_bytes == 128 * 1024
    with pytest.raises(ConflictError):
        overlay.snapshot(ov, snap)

    guest_write(ov, 0, 64 * 1024, 0xCD)
    assert overlay.info(ov).allocated_bytes == 192 * 1024
    assert overlay.restore(snap, ov).allocated_bytes == 128 * 1024

    flat = tmp_path / "flat.raw"
    overlay.flatten(ov, flat)
    data = flat.read_bytes()
    assert len(data) == 4 * MIB
    assert data[:MIB] == base_bytes[:MIB]  # the 0xCD write was undone by the restore
    assert data[MIB:MIB + 128 * 1024] == b"\xab" * 128 * 1024
    assert data[MIB + 128 * 1024:] == base_bytes[MIB + 128 * 1024:]
    with pytest.raises(ConflictError, match="already exists"):
        overlay.flatten(ov, flat)

    assert overlay.reset(ov, base).allocated_bytes == 0
    assert base.read_bytes() == base_bytes  # the base is only ever read
    overlay.delete(ov)
    assert not ov.exists()
    with pytest.raises(NotFoundError):
        overlay.delete(ov)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.img", "flat.raw", "snap.qcow2"]  # no temp left


def test_create_refuses_an_existing_file_and_a_missing_or_odd_base(tmp_path: Path) -> None:
    overlay = Qcow2()
    base = make_base(tmp_path / "base.img")
    ov = tmp_path / "m.qcow2"
    ov.write_text("student work")
    with pytest.raises(ConflictError, match="already exists"):
        overlay.create(base, ov)
    assert ov.read_text() == "student work"
    with pytest.raises(NotFoundError, match="does not exist"):
        overlay.create(tmp_path / "gone.img", tmp_path / "n.qcow2")
    with pytest.raises(OverlayError, match="not a regular file"):
        overlay.create(tmp_path, tmp_path / "n.qcow2")
    assert not (tmp_path / "n.qcow2").exists()


def test_relative_and_protocol_looking_names_stay_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nbd:x").mkdir()
    base = make_base(tmp_path / "nbd:x" / "base.img")
    info = Qcow2().create(Path("nbd:x/base.img"), Path("nbd:x/m.qcow2"))
    assert info.backing_file == base
    assert (tmp_path / "nbd:x" / "m.qcow2").exists()


def test_info_refuses_a_base_that_is_missing_or_changed_size(tmp_path: Path) -> None:
    overlay = Qcow2()
    base = make_base(tmp_path / "base.img")
    ov = tmp_path / "m.qcow2"
    overlay.create(base, ov)
    with open(base, "ab") as f:
        f.truncate(8 * MIB)
    with pytest.raises(OverlayError, match=r"changed: Size mismatch \(4194304 vs 8388608\)"):
        overlay.info(ov)
    with pytest.raises(OverlayError, match="changed"):
        overlay.flatten(ov, tmp_path / "flat.raw")
    base.unlink()
    with pytest.raises(OverlayError, match="does not exist"):
        overlay.info(ov)
    assert not (tmp_path / "flat.raw").exists()
    with pytest.raises(NotFoundError):
        overlay.info(tmp_path / "none.qcow2")


def test_files_that_are_not_labkit_overlays(tmp_path: Path) -> None:
    overlay = Qcow2()
    base = make_base(tmp_path / "base.img")
    garbage = tmp_path / "garbage.qcow2"
    garbage.write_bytes(b"QFI\xfb" + b"\xff" * 200)
    with pytest.raises(OverlayError, match="Cannot read qcow2 file"):
        overlay.info(garbage)
    text = tmp_path / "text.qcow2"
    text.write_text("hello\n")
    with pytest.raises(OverlayError, match="not in qcow2 format"):
        overlay.info(text)
    with pytest.raises(OverlayError, match="not in qcow2 format"):
        overlay.snapshot(text, tmp_path / "s.qcow2")
    standalone = tmp_path / "alone.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(standalone), "4M"], check=True, timeout=30)
    with pytest.raises(OverlayError, match="without a backing file"):
        overlay.info(standalone)
    chained = raw_qcow2(tmp_path / "chain.qcow2", standalone, backing_fmt="qcow2")
    with pytest.raises(OverlayError, match="reads its backing file as 'qcow2'"):
        overlay.info(chained)
    relative = tmp_path / "rel.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "json:{\"file\": {\"driver\": "
                    f"\"file\", \"filename\": \"{base}\"}}}}", str(relative), "4M"], check=True, timeout=30,
                   capture_output=True)
    with pytest.raises(OverlayError, match=r"not a file path|backing"):
        overlay.info(relative)
    # a damaged overlay can still be reset (that is what reset is for)
    assert overlay.reset(garbage, base).allocated_bytes == 0


def test_restore_refuses_a_snapshot_of_another_base(tmp_path: Path) -> None:
    overlay = Qcow2()
    base = make_base(tmp_path / "base.img")
    other = make_base(tmp_path / "other.img")
    ov = tmp_path / "m.qcow2"
    overlay.create(base, ov)
    guest_write(ov, 0, 4096)
    foreign = overlay.create(other, tmp_path / "foreign.qcow2").path
    with pytest.raises(OverlayError, match=r"is an overlay of '.*other\.img', not of '.*base\.img'"):
        overlay.restore(foreign, ov)
    assert overlay.info(ov).allocated_bytes == 64 * 1024  # untouched (one cluster)


def test_an_overlay_in_use_by_a_running_qemu(tmp_path: Path, running_qemu) -> None:  # type: ignore[no-untyped-def]
    overlay = Qcow2()
    base = make_base(tmp_path / "base.img")
    ov = tmp_path / "m.qcow2"
    overlay.create(base, ov)
    guest_write(ov, 0, 4096)
    snap = overlay.snapshot(ov, tmp_path / "snap.qcow2").path
    running_qemu(ov)
    for action in (lambda: overlay.reset(ov, base), lambda: overlay.restore(snap, ov), lambda: overlay.delete(ov)):
        with pytest.raises(ConflictError, match="in use by a running machine"):
            action()
    assert ov.exists()
    # reading works while it runs: info, a snapshot copy and a flat image
    assert overlay.info(ov).allocated_bytes == 64 * 1024
    overlay.flatten(ov, tmp_path / "flat.raw")
    assert (tmp_path / "flat.raw").read_bytes()[:4096] == b"\xab" * 4096
    assert os.path.getsize(tmp_path / "flat.raw") == 4 * MIB
