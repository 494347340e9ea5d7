"""``labkit overlay ...`` (and its old name ``labkit cow``) through the real click root group (errors become one line
and exit code 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from labkit.cli import main
from labkit.overlays import umlcow

MTIME = 1_700_000_000


@pytest.fixture
def run(tmp_path: Path):
    runner = CliRunner()
    env = {"LABKIT_HOME": str(tmp_path / "home"), "LABKIT_DEBUG": "0"}

    def invoke(*args: str):
        return runner.invoke(main, list(args), env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.img"
    path.write_bytes(b"".join(bytes([n]) * 512 for n in range(32)))
    os.utime(path, (MTIME, MTIME))
    return path


def write_sector(cow: Path, n: int, fill: bytes) -> None:
    header = umlcow.read_header(cow)
    with open(cow, "r+b") as f:
        f.seek(header.data_offset + n * 512)
        f.write(fill * 512)
        f.seek(header.bitmap_offset + n // 8)
        f.write(bytes([1 << (n % 8)]))


def test_create_and_info(run, tmp_path: Path, base: Path) -> None:
    cow = tmp_path / "a.cow"
    result = run("overlay", "create", str(base), str(cow))
    assert result.exit_code == 0, result.output
    assert "Created" in result.output
    write_sector(cow, 3, b"x")

    result = run("overlay", "info", str(cow))
    assert result.exit_code == 0, result.output
    assert "kind:         umlcow" in result.output
    assert f"backing file: {base}" in result.output
    assert "allocated:    512 bytes" in result.output
    assert "backing:      ok" in result.output

    result = run("overlay", "info", str(cow), "--json")
    facts = json.loads(result.output)
    assert facts["kind"] == "umlcow"
    assert facts["version"] == "3"
    assert facts["variant"] == "v3"
    assert facts["backing_file"] == str(base)
    assert facts["virtual_size"] == 32 * 512
    assert facts["mtime"] == str(MTIME)
    assert facts["allocated_bytes"] == 512
    assert facts["backing_ok"] is True

    # a file whose name says nothing is known by its content
    plain = tmp_path / "disk-of-a"
    cow.rename(plain)
    assert json.loads(run("overlay", "info", str(plain), "--json").output)["kind"] == "umlcow"


def test_create_needs_a_kind_it_can_tell(run, tmp_path: Path, base: Path) -> None:
    result = run("overlay", "create", str(base), str(tmp_path / "a.disk"))
    assert result.exit_code == 1
    assert "cannot tell the overlay kind of a.disk: end it with .qcow2 (qcow2), .cow (umlcow), or give --kind" \
        in result.stderr
    assert run("overlay", "create", str(base), str(tmp_path / "a.disk"), "--kind", "umlcow").exit_code == 0


def test_info_reports_a_changed_base(run, tmp_path: Path, base: Path) -> None:
    cow = tmp_path / "a.cow"
    run("overlay", "create", str(base), str(cow))
    os.utime(base, (MTIME + 9, MTIME + 9))
    facts = json.loads(run("overlay", "info", str(cow), "--json").output)
    assert facts["backing_ok"] is False
    assert f"mtime mismatch ({MTIME} vs {MTIME + 9}) of COW header vs backing file" in facts["backing_problem"]


def test_errors_are_one_line(run, tmp_path: Path, base: Path) -> None:
    (tmp_path / "junk").write_bytes(b"just some text, no magic here")
    result = run("overlay", "info", str(tmp_path / "junk"))
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0
    assert "labkit: error:" in result.stderr
    assert "no overlay of a kind labkit knows" in result.stderr and "not a UML COW file" in result.stderr

    cow = tmp_path / "a.cow"
    run("overlay", "create", str(base), str(cow))
    result = run("overlay", "create", str(base), str(cow))
    assert result.exit_code == 1
    assert "already exists" in result.stderr


@pytest.mark.parametrize("verb", [("overlay", "flatten"), ("cow", "merge")])
def test_flatten_and_its_old_name(run, tmp_path: Path, base: Path, verb: tuple[str, str]) -> None:
    cow = tmp_path / "a.cow"
    run("overlay", "create", str(base), str(cow))
    write_sector(cow, 31, b"z")
    out = tmp_path / "merged.img"
    result = run(*verb, str(cow), str(out))
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data[:31 * 512] == base.read_bytes()[:31 * 512]
    assert data[31 * 512:] == b"z" * 512


def test_rebase(run, tmp_path: Path, base: Path) -> None:
    cow = tmp_path / "a.cow"
    run("overlay", "create", str(base), str(cow))
    moved = tmp_path / "moved.img"
    base.rename(moved)
    assert json.loads(run("overlay", "info", str(cow), "--json").output)["backing_ok"] is False
    result = run("overlay", "rebase", str(cow), str(moved))
    assert result.exit_code == 0, result.output
    facts = json.loads(run("overlay", "info", str(cow), "--json").output)
    assert (facts["backing_file"], facts["backing_ok"]) == (str(moved), True)

    other = tmp_path / "other.img"
    other.write_bytes(b"\0" * 1024)
    result = run("overlay", "rebase", str(cow), str(other))
    assert result.exit_code == 1
    assert "Size mismatch (16384 vs 1024) of COW header vs backing file" in result.stderr
