"""Image recipes: ``base_images/<name>/recipe.toml`` plus a ``files/`` tree copied over the root file system.

A recipe is checked completely when it is loaded, so a build never starts from a wrong file. Every error names the
file and the key. The recipe's `digest` names its build result: the build cache and the store key images by it.
"""

from __future__ import annotations

import hashlib
import re
import stat
import tomllib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from labkit.errors import BadNameError, ImageError, NotFoundError
from labkit.names import check_name
from labkit.runtime import DEFAULT_BACKEND, backend_kinds

RECIPE_FILE = "recipe.toml"
FILES_DIR = "files"

#: The guest-side boot hook every builder installs (see guest_contract.HOOK_PATH).
BOOT_HOOK_SOURCE = Path(__file__).resolve().parent / "guest" / "boot-hook.sh"

#: Keys every recipe may have, and the keys only one builder understands.
_COMMON_KEYS = {"name", "description", "builder", "size", "modes", "backend", "warm"}
_BUILDER_KEYS = {
    "busybox": {"binaries"},
    "mmdebstrap": {"suite", "variant", "packages", "mirror", "hooks"},
}
_SIZE = re.compile(r"([1-9][0-9]*)([KMG])")
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
MIN_SIZE = 16 << 20
MAX_SIZE = 64 << 30
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class RecipeFile:
    """One entry of a recipe's ``files/`` tree, with the mode it gets in the image."""

    path: str  # relative to files/, with "/" separators
    kind: str  # "dir", "file" or "symlink"
    mode: int  # permission bits in the image (0 for symlinks)
    source: Path
    target: str = ""  # symlink target

    def digest_line(self) -> str:
        if self.kind == "file":
            content = hashlib.sha256(self.source.read_bytes()).hexdigest()
            return f"file {self.path!r} {self.mode:04o} {content}"
        if self.kind == "symlink":
            return f"symlink {self.path!r} {self.target!r}"
        return f"dir {self.path!r} {self.mode:04o}"


@dataclass(frozen=True)
class Recipe:
    """A validated recipe. Builder-specific fields keep their defaults when the builder does not use them."""

    name: str
    description: str
    builder: str
    size: str
    size_bytes: int
    folder: Path
    modes: dict[str, int] = field(default_factory=dict)
    #: the backend a lab machine (or ``vm create``) on this image gets when it names none
    backend: str = DEFAULT_BACKEND
    #: whether its guests can start from a saved warm state (the boot hook's `warm` mode, with systemd, perl and
    #: OpenSSH in the image: docs/images.md, "Warm states")
    warm: bool = False
    # busybox
    binaries: tuple[str, ...] = ()
    # mmdebstrap
    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ()
    mirror: str | None = None
    hooks: tuple[str, ...] = ()

    @property
    def recipe_file(self) -> Path:
        return self.folder / RECIPE_FILE

    @property
    def files_dir(self) -> Path:
        return self.folder / FILES_DIR

    def files(self) -> list[RecipeFile]:
        """The ``files/`` tree in a stable order (parents before children), with the modes the image gets."""
        return list_files(self.files_dir, self.modes, self.recipe_file)

    @cached_property
    def digest(self) -> str:
        """sha256 over everything that decides the built image (see `compute_digest`)."""
        # build.py imports this module, so the builder registry is looked up late.
        from labkit.images.build import BUILDER_VERSION, BUILDERS

        return compute_digest(self, BUILDER_VERSION, BUILDERS[self.builder].host_inputs(self))


def compute_digest(recipe: Recipe, builder_version: str, host_inputs: list[Path]) -> str:
    """Hash recipe.toml, files/ (paths, modes, content), the boot hook, the builder version and host inputs.

    Host inputs are the host binaries a builder copies in (busybox, dropbear and their libraries), so a host upgrade
    makes a new digest and therefore a new build rather than a stale cache hit.
    """
    lines = [
        "labkit-recipe 1",
        f"builder {recipe.builder} {builder_version}",
        f"recipe.toml {hashlib.sha256(recipe.recipe_file.read_bytes()).hexdigest()}",
        f"boot-hook {hashlib.sha256(BOOT_HOOK_SOURCE.read_bytes()).hexdigest()}",
    ]
    lines.extend(entry.digest_line() for entry in recipe.files())
    for path in host_inputs:
        try:
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as err:
            raise ImageError(f"cannot read the host file {path} that recipe {recipe.name} copies in: {err}") from err
        lines.append(f"host {str(path)!r} {content}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def list_files(files_dir: Path, modes: dict[str, int], where: Path) -> list[RecipeFile]:
    """Walk ``files_dir``: dirs 0755, files 0755 when executable else 0644 (git keeps only the x bit), then
    ``modes``."""
    if not files_dir.exists():
        return []
    entries: list[RecipeFile] = []

    def walk(folder: Path) -> None:
        for child in sorted(folder.iterdir(), key=lambda p: p.name):
            rel = child.relative_to(files_dir).as_posix()
            info = child.lstat()
            if stat.S_ISLNK(info.st_mode):
                entries.append(RecipeFile(rel, "symlink", 0, child, target=str(child.readlink())))
            elif stat.S_ISDIR(info.st_mode):
                entries.append(RecipeFile(rel, "dir", modes.get(rel, 0o755), child))
                walk(child)
            elif stat.S_ISREG(info.st_mode):
                default = 0o755 if info.st_mode & 0o111 else 0o644
                entries.append(RecipeFile(rel, "file", modes.get(rel, default), child))
            else:
                raise ImageError(f"{where}: {child} is not a file, folder or symlink; files/ may only hold those")

    walk(files_dir)
    return entries


def _fail(file: Path, key: str, problem: str) -> ImageError:
    return ImageError(f"{file}: key {key!r}: {problem}")


def _get_str(data: dict[str, Any], file: Path, key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if value is None:
        raise _fail(file, key, "is required")
    if not isinstance(value, str):
        raise _fail(file, key, f"must be a string, not {type(value).__name__}")
    return value


def _get_bool(data: dict[str, Any], file: Path, key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise _fail(file, key, f"must be true or false, not {value!r}")
    return value


def _get_list(data: dict[str, Any], file: Path, key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(file, key, "must be a list of strings")
    return tuple(value)


def parse_size(text: str, file: Path, key: str = "size") -> int:
    """``"128M"`` -> bytes, between 16M and 64G."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise _fail(file, key, f"{text!r} is not a size like '128M' or '2G'")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise _fail(file, key, f"{text} is outside 16M .. 64G")
    return size


def _parse_modes(data: dict[str, Any], file: Path, files_dir: Path) -> dict[str, int]:
    raw = data.get("modes", {})
    if not isinstance(raw, dict):
        raise _fail(file, "modes", "must be a table of \"path\" = \"0644\"")
    modes: dict[str, int] = {}
    for rel, text in raw.items():
        key = f"modes.{rel}"
        if not isinstance(text, str) or not re.fullmatch(r"0?[0-7]{3,4}", text):
            raise _fail(file, key, "must be an octal mode string such as \"0600\"")
        if rel.startswith("/") or ".." in rel.split("/"):
            raise _fail(file, key, "must be a path relative to files/ without '..'")
        if not (files_dir / rel).exists():
            raise _fail(file, key, f"names {files_dir / rel}, which does not exist")
        mode = int(text, 8)
        if mode & ~0o7777:
            raise _fail(file, key, f"{text} is not a permission mode")
        modes[rel] = mode
    return modes


def load_recipe(folder: Path) -> Recipe:
    """Read and validate ``folder/recipe.toml``; raise `ImageError` naming the file and key."""
    folder = Path(folder).absolute()
    file = folder / RECIPE_FILE
    try:
        with file.open("rb") as stream:
            data = tomllib.load(stream)
    except FileNotFoundError as err:
        raise ImageError(f"{file}: no such recipe file") from err
    except tomllib.TOMLDecodeError as err:
        raise ImageError(f"{file}: not valid TOML: {err}") from err
    except OSError as err:
        raise ImageError(f"{file}: cannot read: {err}") from err

    builder = _get_str(data, file, "builder")
    if builder not in _BUILDER_KEYS:
        raise _fail(file, "builder", f"{builder!r} is not one of {', '.join(sorted(_BUILDER_KEYS))}")
    allowed = _COMMON_KEYS | _BUILDER_KEYS[builder]
    for key in data:
        if key not in allowed:
            raise _fail(file, key, f"is not a recipe key for builder {builder} (known: {', '.join(sorted(allowed))})")

    name = _get_str(data, file, "name")
    try:
        check_name(name, "image name")
    except BadNameError as err:
        raise _fail(file, "name", str(err)) from err
    if name != folder.name:
        raise _fail(file, "name", f"{name!r} must match its folder name {folder.name!r}")
    size = _get_str(data, file, "size")
    backend = _get_str(data, file, "backend", DEFAULT_BACKEND)
    if backend not in backend_kinds():
        raise _fail(file, "backend", f"{backend!r} is not a known backend (known: {', '.join(backend_kinds())})")
    files_dir = folder / FILES_DIR
    if files_dir.exists() and not files_dir.is_dir():
        raise ImageError(f"{files_dir}: must be a folder")

    recipe = Recipe(
        name=name,
        description=_get_str(data, file, "description", ""),
        builder=builder,
        size=size,
        size_bytes=parse_size(size, file),
        folder=folder,
        modes=_parse_modes(data, file, files_dir),
        backend=backend,
        warm=_get_bool(data, file, "warm", False),
        binaries=_get_list(data, file, "binaries"),
        suite=_get_str(data, file, "suite", "bookworm"),
        variant=_get_str(data, file, "variant", "minbase"),
        packages=_get_list(data, file, "packages"),
        mirror=None if data.get("mirror") is None else _get_str(data, file, "mirror"),
        hooks=_get_list(data, file, "hooks"),
    )
    for binary in recipe.binaries:
        if not binary.startswith("/"):
            raise _fail(file, "binaries", f"{binary!r} must be an absolute path on the host")
    for package in recipe.packages:
        if not _PACKAGE.fullmatch(package):
            raise _fail(file, "packages", f"{package!r} is not a Debian package name")
    for key in ("suite", "variant"):
        if not _WORD.fullmatch(getattr(recipe, key)):
            raise _fail(file, key, f"{getattr(recipe, key)!r} is not a single word")
    recipe.files()  # reject sockets, devices and the like now, not half-way through a build
    return recipe


def find_recipe(recipes: Path, name: str) -> Recipe:
    """Load recipe ``name`` from the recipes folder; `NotFoundError` names the ones there are."""
    check_name(name, "image name")
    folder = Path(recipes) / name
    if not (folder / RECIPE_FILE).is_file():
        available = ", ".join(list_recipe_names(recipes)) or "none"
        raise NotFoundError(f"there is no recipe {name!r} in {recipes} (available: {available})")
    return load_recipe(folder)


def list_recipe_names(recipes: Path) -> list[str]:
    """Names of the folders in ``recipes`` that hold a recipe.toml."""
    if not Path(recipes).is_dir():
        return []
    return sorted(p.name for p in Path(recipes).iterdir() if (p / RECIPE_FILE).is_file())
