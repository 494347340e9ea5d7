"""Recipe loading: every mistake is one ImageError naming the file and the key; the digest is stable and sensitive."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labkit.errors import ImageError, NotFoundError
from labkit.images.build import BUILDERS
from labkit.images.recipe import find_recipe, list_recipe_names, load_recipe

REPO_RECIPES = Path(__file__).resolve().parents[3] / "base_images"

GOOD = """
name = "demo"
description = "a test recipe"
builder = "busybox"
size = "64M"
binaries = []

[modes]
"etc/secret" = "0600"
"""


def make_recipe(parent: Path, text: str = GOOD, files: dict[str, str] | None = None, name: str = "demo") -> Path:
    folder = parent / name
    (folder / "files").mkdir(parents=True)
    (folder / "recipe.toml").write_text(text)
    for rel, content in ({"etc/secret": "s\n", "etc/motd": "hello\n"} if files is None else files).items():
        (folder / "files" / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / "files" / rel).write_text(content)
    return folder


def test_good_recipe_loads(tmp_path: Path) -> None:
    recipe = load_recipe(make_recipe(tmp_path))
    assert (recipe.name, recipe.builder, recipe.size_bytes) == ("demo", "busybox", 64 << 20)
    modes = {entry.path: entry.mode for entry in recipe.files()}
    assert modes == {"etc": 0o755, "etc/motd": 0o644, "etc/secret": 0o600}


def test_a_recipe_may_name_its_machines_backend(tmp_path: Path) -> None:
    """``backend`` is what a machine on the image runs on when its lab names none; it is part of the digest."""
    plain = load_recipe(make_recipe(tmp_path / "a"))
    qemu = load_recipe(make_recipe(tmp_path / "b", 'backend = "qemu"\n' + GOOD))
    assert (plain.backend, qemu.backend) == ("uml", "qemu")
    assert plain.digest != qemu.digest


def test_only_the_debian_recipe_says_its_machines_may_start_warm() -> None:
    assert find_recipe(REPO_RECIPES, "debian-bookworm").warm
    assert not find_recipe(REPO_RECIPES, "tiny").warm


def test_shipped_recipes_load() -> None:
    assert {"tiny", "debian-bookworm"} <= set(list_recipe_names(REPO_RECIPES))
    tiny = find_recipe(REPO_RECIPES, "tiny")
    debian = find_recipe(REPO_RECIPES, "debian-bookworm")
    assert tiny.builder == "busybox" and tiny.size_bytes == 128 << 20
    assert debian.builder == "mmdebstrap" and "openssh-server" in debian.packages
    assert len(tiny.digest) == 64 and tiny.digest != debian.digest
    assert set(BUILDERS) == {"busybox", "mmdebstrap"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('name = "demo"\nbuilder = "busybox"\nsize = "64M\n', ["not valid TOML"]),
        ('colour = "red"\n' + GOOD, ["'colour'", "not a recipe key"]),
        (GOOD.replace('size = "64M"', "size = 64"), ["'size'", "must be a string"]),
        (GOOD.replace('size = "64M"', 'size = "64 megabytes"'), ["'size'"]),
        (GOOD.replace('size = "64M"', 'size = "1M"'), ["'size'", "outside"]),
        (GOOD.replace('builder = "busybox"', 'builder = "docker"'), ["'builder'", "docker"]),
        (GOOD.replace('name = "demo"', 'name = "other"'), ["'name'", "folder"]),
        (GOOD.replace('name = "demo"', 'name = "Demo/x"'), ["'name'"]),
        (GOOD.replace('name = "demo"\n', ""), ["'name'", "required"]),
        (GOOD.replace("binaries = []", 'binaries = "dropbear"'), ["'binaries'", "list of strings"]),
        (GOOD.replace("binaries = []", 'binaries = ["dropbear"]'), ["'binaries'", "absolute"]),
        ('suite = "bookworm"\n' + GOOD, ["'suite'", "busybox"]),
        (GOOD.replace('"0600"', '"rw-------"'), ["'modes.etc/secret'", "octal"]),
        (GOOD.replace('"etc/secret"', '"etc/missing"'), ["'modes.etc/missing'", "does not exist"]),
        ('backend = "vbox"\n' + GOOD, ["'backend'", "'vbox' is not a known backend (known: qemu, uml)"]),
        ("backend = 2\n" + GOOD, ["'backend'", "must be a string"]),
        ('warm = "yes"\n' + GOOD, ["'warm'", "must be true or false, not 'yes'"]),
    ],
)
def test_mistakes_name_file_and_key(tmp_path: Path, text: str, words: list[str]) -> None:
    folder = make_recipe(tmp_path, text)
    with pytest.raises(ImageError) as caught:
        load_recipe(folder)
    message = str(caught.value)
    assert str(folder / "recipe.toml") in message
    for word in words:
        assert word in message


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such recipe file"):
        load_recipe(tmp_path / "nothing")
    make_recipe(tmp_path)
    with pytest.raises(NotFoundError, match="available: demo"):
        find_recipe(tmp_path, "nothing")


def test_missing_host_binary_is_named(tmp_path: Path) -> None:
    recipe = load_recipe(make_recipe(tmp_path, GOOD.replace("binaries = []", 'binaries = ["/nonexistent/dropbear"]')))
    with pytest.raises(ImageError, match="/nonexistent/dropbear"):
        _ = recipe.digest


def test_digest_is_stable_and_independent_of_location(tmp_path: Path) -> None:
    first = load_recipe(make_recipe(tmp_path / "a"))
    second = load_recipe(make_recipe(tmp_path / "b"))
    assert first.digest == second.digest == load_recipe(first.folder).digest


@pytest.mark.parametrize("change", ["content", "new-file", "rename", "mode", "symlink", "toml", "host-binary"])
def test_digest_changes_with_every_input(tmp_path: Path, change: str) -> None:
    host_binary = tmp_path / "hostbin"
    host_binary.write_text("version 1\n")
    text = GOOD.replace("binaries = []", f'binaries = ["{host_binary}"]')
    folder = make_recipe(tmp_path, text)
    (folder / "files/etc/link").symlink_to("motd")
    before = load_recipe(folder).digest
    files = folder / "files/etc"
    if change == "content":
        (files / "motd").write_text("hello!\n")
    elif change == "new-file":
        (files / "issue").write_text("x\n")
    elif change == "rename":
        (files / "motd").rename(files / "motd2")
        (files / "link").unlink()
    elif change == "mode":
        (files / "motd").chmod(0o755)
    elif change == "symlink":
        (files / "link").unlink()
        (files / "link").symlink_to("secret")
    elif change == "toml":
        (folder / "recipe.toml").write_text(text.replace("a test recipe", "another description"))
    elif change == "host-binary":
        host_binary.write_text("version 2\n")
    assert load_recipe(folder).digest != before


def test_group_write_bit_does_not_change_the_digest(tmp_path: Path) -> None:
    """git keeps only the x bit, so a checkout under another umask must give the same digest."""
    folder = make_recipe(tmp_path)
    before = load_recipe(folder).digest
    (folder / "files/etc/motd").chmod(0o664)
    assert load_recipe(folder).digest == before


def test_special_files_are_refused(tmp_path: Path) -> None:
    folder = make_recipe(tmp_path)
    os.mkfifo(folder / "files/etc/fifo")
    with pytest.raises(ImageError, match="not a file, folder or symlink"):
        load_recipe(folder)
