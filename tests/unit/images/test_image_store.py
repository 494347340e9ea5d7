"""The image store with real tiny builds: versions, the build cache, verify and quick_check, interrupted builds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from labkit.config import Settings
from labkit.errors import NotFoundError, TamperedImageError
from labkit.images.build import BUILDERS, BuildContext, Builder
from labkit.images.recipe import Recipe, find_recipe, load_recipe
from labkit.images.store import ImageRecord, ImageStore, sha256_file
from labkit.progress import ProgressEvent

RECIPES = Path(__file__).resolve().parents[3] / "base_images"


def build_tiny(settings: Settings, events: list[ProgressEvent] | None = None) -> ImageRecord:
    recipe = find_recipe(RECIPES, "tiny")
    return ImageStore(settings).build(recipe, progress=events.append if events is not None else lambda _e: None)


def writable(record: ImageRecord) -> None:
    record.path.chmod(0o644)


def test_build_stores_versions_with_meta(lk_settings: Settings) -> None:
    first = build_tiny(lk_settings)
    second = build_tiny(lk_settings)
    store = ImageStore(lk_settings)
    assert (first.version, second.version) == (1, 2)
    assert first.path == lk_settings.images / "tiny" / "1" / "disk.img"
    assert first.sha256 == second.sha256 == sha256_file(first.path)
    assert first.path.stat().st_mode & 0o777 == 0o444
    assert first.size == 128 << 20 and first.builder == "busybox"
    meta = json.loads((first.folder / "meta.json").read_text())
    assert meta == first.to_json()
    assert (first.folder / "build.log").read_text().startswith("labkit image build: tiny")
    assert store.get("tiny") == second
    assert store.get("tiny", 1) == first
    assert store.list() == [first, second]
    assert not list((lk_settings.images / "tiny").glob(".build-*"))


def test_get_names_what_exists(lk_settings: Settings) -> None:
    store = ImageStore(lk_settings)
    with pytest.raises(NotFoundError, match="images: none"):
        store.get("tiny")
    build_tiny(lk_settings)
    with pytest.raises(NotFoundError, match=r"no version 7 \(versions: 1\)"):
        store.get("tiny", 7)
    with pytest.raises(NotFoundError, match="images: tiny"):
        store.get("other")


def test_second_build_comes_from_the_cache(settings_factory, short_tmp: Path) -> None:
    settings = settings_factory("a", cache=short_tmp / "cache")
    events: list[ProgressEvent] = []
    first = build_tiny(settings, events)
    assert "cache" in {e.step for e in events} and "filesystem" in {e.step for e in events}
    digest = find_recipe(RECIPES, "tiny").digest
    cached = short_tmp / "cache" / "images" / digest / "disk.img"
    assert cached.is_file()
    assert cached.stat().st_blocks * 512 < cached.stat().st_size  # copied sparse

    events.clear()
    other = settings_factory("b", cache=short_tmp / "cache")
    second = build_tiny(other, events)
    steps = [e.step for e in events]
    assert "filesystem" not in steps and "bootstrap" not in steps
    assert any(e.step == "cache" and "cached build" in e.message for e in events)
    assert "copying the cached build" in (second.folder / "build.log").read_text()
    assert second.sha256 == first.sha256
    assert second.path.stat().st_blocks * 512 < second.size


def test_damaged_cache_is_rebuilt(settings_factory, short_tmp: Path) -> None:
    settings = settings_factory("a", cache=short_tmp / "cache")
    first = build_tiny(settings)
    cached = short_tmp / "cache" / "images" / first.recipe_digest / "disk.img"
    with cached.open("r+b") as stream:
        stream.seek(4096)
        stream.write(b"garbage")
    events: list[ProgressEvent] = []
    second = build_tiny(settings, events)
    assert "filesystem" in {e.step for e in events}
    assert "damaged" in (second.folder / "build.log").read_text()


def test_fresh_image_verifies(lk_settings: Settings) -> None:
    record = build_tiny(lk_settings)
    store = ImageStore(lk_settings)
    assert store.verify(record) == []
    assert store.quick_check(record) == (record, [])
    assert store.require_intact(record) == record


def test_touched_mtime_is_caught(lk_settings: Settings) -> None:
    record = build_tiny(lk_settings)
    store = ImageStore(lk_settings)
    os.utime(record.path, ns=(record.mtime_ns, record.mtime_ns + 1_000_000_000))
    assert any("modification time" in p for p in store.verify(record))
    with pytest.raises(TamperedImageError) as caught:
        store.require_intact(record)
    message = str(caught.value)
    assert "image tiny version 1" in message and str(record.path) in message


def test_changed_size_is_caught(lk_settings: Settings) -> None:
    record = build_tiny(lk_settings)
    writable(record)
    with record.path.open("ab") as stream:
        stream.write(b"x")
    record.path.chmod(0o444)
    problems = ImageStore(lk_settings).verify(record)
    assert any("size changed" in p for p in problems)


def test_changed_content_with_mtime_restored_is_caught(lk_settings: Settings) -> None:
    record = build_tiny(lk_settings)
    store = ImageStore(lk_settings)
    writable(record)
    with record.path.open("r+b") as stream:
        stream.seek(1 << 20)
        stream.write(b"tampered")
    record.path.chmod(0o444)
    os.utime(record.path, ns=(record.mtime_ns, record.mtime_ns))
    assert store.verify(record, full=False) == []  # size, mtime and mode all look right
    assert store.verify(record) == ["content changed (sha256 differs)"]
    # quick_check sees the ctime move and falls back to the full hash.
    _, problems = store.quick_check(record)
    assert problems == ["content changed (sha256 differs)"]
    with pytest.raises(TamperedImageError, match="content changed"):
        store.require_intact(record)


def test_not_read_only_is_caught(lk_settings: Settings) -> None:
    record = build_tiny(lk_settings)
    writable(record)
    store = ImageStore(lk_settings)
    assert any("writable" in p for p in store.verify(record, full=False))
    with pytest.raises(TamperedImageError, match="writable"):
        store.require_intact(record)


def test_ctime_only_change_is_accepted_and_recorded(lk_settings: Settings) -> None:
    record = build_tiny(lk_settings)
    store = ImageStore(lk_settings)
    record.path.chmod(0o644)
    record.path.chmod(0o444)  # same content, same mtime, new ctime
    updated = store.require_intact(record)
    assert updated.ctime_ns == record.path.stat().st_ctime_ns != record.ctime_ns
    assert store.get("tiny", record.version) == updated


def test_missing_file_is_caught(lk_settings: Settings) -> None:
    record = build_tiny(lk_settings)
    record.path.unlink()
    assert ImageStore(lk_settings).verify(record) == [f"{record.path} is missing"]


def test_remove(lk_settings: Settings) -> None:
    first = build_tiny(lk_settings)
    second = build_tiny(lk_settings)
    store = ImageStore(lk_settings)
    store.remove(first)
    assert store.list() == [second]
    assert not first.folder.exists()
    store.remove(second)
    assert store.list() == []
    with pytest.raises(NotFoundError):
        store.remove(second)


class InterruptedBuilder(Builder):
    """Writes half a disk, then is interrupted (as by ^C or a kill)."""

    def host_inputs(self, recipe: Recipe) -> list[Path]:
        return []

    def build(self, ctx: BuildContext) -> None:
        ctx.disk.write_bytes(b"\0" * 4096)
        raise KeyboardInterrupt


def test_interrupted_build_leaves_no_version(lk_settings: Settings, short_tmp: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder = short_tmp / "recipes" / "tiny"
    shutil.copytree(RECIPES / "tiny", folder)
    (folder / "files/etc/issue").write_text(f"unique {short_tmp}\n")  # a digest the shared cache has not seen
    monkeypatch.setitem(BUILDERS, "busybox", InterruptedBuilder())
    store = ImageStore(lk_settings)
    with pytest.raises(KeyboardInterrupt):
        store.build(load_recipe(folder))
    assert store.list() == []
    assert not [p for p in (lk_settings.images / "tiny").iterdir() if p.name != ".lock"]


def test_stale_build_folder_is_ignored_then_removed(lk_settings: Settings) -> None:
    """A build killed hard leaves a .build-* folder: it never counts as an image, and the next build removes it."""
    stale = lk_settings.images / "tiny" / ".build-killed"
    stale.mkdir(parents=True)
    (stale / "disk.img").write_bytes(b"half")
    store = ImageStore(lk_settings)
    assert store.list() == []
    record = build_tiny(lk_settings)
    assert record.version == 1
    assert not stale.exists()


def test_an_image_records_the_backend_its_recipe_names(lk_settings: Settings, qemu_recipes: Path) -> None:
    """tiny:1 from the shipped recipe (no backend: labkit's default), tiny:2 from one saying qemu: each version keeps
    its own in meta.json, and `known_refs` gives a bare name its newest version's."""
    store = ImageStore(lk_settings)
    first = build_tiny(lk_settings)
    second = store.build(find_recipe(qemu_recipes, "tiny"))
    assert (first.backend, second.backend) == ("uml", "qemu")
    assert json.loads((second.folder / "meta.json").read_text())["backend"] == "qemu"
    assert store.get("tiny", 2).backend == "qemu"
    assert store.known_refs() == {"tiny": "qemu", "tiny:1": "uml", "tiny:2": "qemu"}


def test_a_record_from_before_backends_reads_as_the_default(lk_settings: Settings) -> None:
    record = build_tiny(lk_settings)
    meta = record.folder / "meta.json"
    data = json.loads(meta.read_text())
    del data["backend"]
    meta.write_text(json.dumps(data))
    assert ImageStore(lk_settings).get("tiny").backend == "uml"
    assert ImageStore(lk_settings).known_refs() == {"tiny": "uml", "tiny:1": "uml"}
