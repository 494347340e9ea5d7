"""The image store: base images under ``<home>/images/<name>/<version>/``, and a build cache keyed by recipe digest.

A stored image never changes: it is made read-only and its size, mtime and ctime are recorded, because UML refuses
every copy-on-write overlay whose base changed size or mtime. `quick_check` runs before each use; `verify` is the full
check.

Layout of one version folder (renamed into place last, so a half-finished build never looks like an image)::

    images/<name>/<version>/disk.img    read-only (0444)
    images/<name>/<version>/meta.json   the ImageRecord
    images/<name>/<version>/build.log
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labkit.atomic import locked, write_atomic
from labkit.config import Settings
from labkit.errors import ImageError, NotFoundError, TamperedImageError
from labkit.images.build import BUILDERS, BuildContext
from labkit.images.recipe import Recipe
from labkit.names import check_name
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.runtime import DEFAULT_BACKEND

DISK = "disk.img"
META = "meta.json"
BUILD_LOG = "build.log"
_BUILD_PREFIX = ".build-"
_CHUNK = 4 << 20


@dataclass(frozen=True)
class ImageRecord:
    """One stored image version, as recorded in its meta.json."""

    name: str
    version: int
    path: Path
    sha256: str
    size: int
    mtime_ns: int
    ctime_ns: int
    recipe_digest: str
    built_at: str
    builder: str
    #: the backend its machines get when their lab (or ``vm create``) names none; from the recipe
    backend: str = DEFAULT_BACKEND
    #: whether its guests can start from a warm state (from the recipe)
    warm: bool = False

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def ref(self) -> str:
        """``name:version``, as the CLI spells it."""
        return f"{self.name}:{self.version}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: Path) -> ImageRecord:
        try:
            return cls(
                name=str(data["name"]), version=int(data["version"]), path=Path(data["path"]),
                sha256=str(data["sha256"]), size=int(data["size"]), mtime_ns=int(data["mtime_ns"]),
                ctime_ns=int(data["ctime_ns"]), recipe_digest=str(data["recipe_digest"]),
                built_at=str(data["built_at"]), builder=str(data["builder"]),
                backend=str(data.get("backend", DEFAULT_BACKEND)),  # records made before images named one
                warm=bool(data.get("warm", False)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ImageError(f"{where}: not a valid image record ({err})") from err


def sha256_file(path: Path, progress: Reporter = silent, step: str = "hash") -> str:
    """sha256 of a file, reporting bytes done."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if done % (64 * _CHUNK) < _CHUNK or done == total:
                progress(ProgressEvent(step=step, done=done, total=total, message=path.name))
    return digest.hexdigest()


def sparse_copy(source: Path, dest: Path) -> None:
    """Copy keeping holes (a 2G image holding 250M stays small on disk)."""
    result = subprocess.run(["cp", "--sparse=always", str(source), str(dest)], capture_output=True, text=True,
                            check=False)
    if result.returncode != 0:
        raise ImageError(f"cannot copy {source} to {dest}: {result.stderr.strip()}")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n", durable=True)


def _rmtree(path: Path) -> None:
    """Remove a folder even when it holds read-only files or folders."""

    def onerror(_func: Any, failed: str, _exc: Any) -> None:
        parent = os.path.dirname(failed)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
        with contextlib.suppress(OSError):
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed, ignore_errors=True)
            else:
                os.unlink(failed)

    shutil.rmtree(path, onerror=onerror)


class ImageStore:
    """Builds, lists, finds, verifies and removes base images of one installation."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.images
        self.cache_root = settings.cache / "images"

    # -- building -----------------------------------------------------------------------------------------------------

    def cache_path(self, digest: str) -> Path:
        return self.cache_root / digest / DISK

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        """Hold ``images/<name>/.lock`` so two builds of one image never pick the same version."""
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        with locked(folder / ".lock"):
            yield folder

    def build(self, recipe: Recipe, progress: Reporter = silent) -> ImageRecord:
        """Build (or copy from the cache) ``recipe`` and store it as the next version."""
        check_name(recipe.name, "image name")
        digest = recipe.digest
        with self._locked(recipe.name) as folder:
            # Under the lock, any .build-* folder is left over from an interrupted build.
            for stale in folder.glob(f"{_BUILD_PREFIX}*"):
                _rmtree(stale)
            staging = Path(tempfile.mkdtemp(prefix=_BUILD_PREFIX, dir=folder))
            try:
                record = self._build_into(recipe, digest, staging, progress)
                version = self._next_version(folder)
                final = folder / str(version)
                record = replace(record, version=version, path=final / DISK)
                write_json_atomic(staging / META, record.to_json())
                os.rename(staging, final)
            except BaseException:
                _rmtree(staging)
                raise
        progress(ProgressEvent(step="done", done=1, total=1, message=f"stored {record.ref} at {record.path}"))
        return record

    def _build_into(self, recipe: Recipe, digest: str, staging: Path, progress: Reporter) -> ImageRecord:
        disk = staging / DISK
        log_path = staging / BUILD_LOG
        with log_path.open("w") as log:
            log.write(f"labkit image build: {recipe.name} ({recipe.builder}), recipe digest {digest}\n")
            workdir = staging / "work"
            workdir.mkdir()
            ctx = BuildContext(recipe=recipe, workdir=workdir, disk=disk, log=log, log_path=log_path,
                               progress=progress)
            cached = self.cache_path(digest)
            sha256 = self._from_cache(ctx, cached) if cached.is_file() else None
            if sha256 is None:
                BUILDERS[recipe.builder].build(ctx)
                _rmtree(workdir)
                ctx.step("hash", "hashing the image")
                sha256 = sha256_file(disk, progress)
                self._fill_cache(ctx, cached, sha256)
            if workdir.exists():
                _rmtree(workdir)
            disk.chmod(0o444)
            info = disk.stat()
            log.write(f"== stored: sha256 {sha256}, {info.st_size} bytes\n")
        return ImageRecord(
            name=recipe.name, version=0, path=disk, sha256=sha256, size=info.st_size, mtime_ns=info.st_mtime_ns,
            ctime_ns=info.st_ctime_ns, recipe_digest=digest, built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            builder=recipe.builder, backend=recipe.backend, warm=recipe.warm,
        )

    def _from_cache(self, ctx: BuildContext, cached: Path) -> str | None:
        """Copy a cached build; None (and the bad entry removed) when it no longer matches its recorded hash."""
        ctx.step("cache", f"recipe unchanged: copying the cached build {cached}")
        sparse_copy(cached, ctx.disk)
        ctx.disk.chmod(0o644)
        ctx.step("hash", "hashing the image")
        sha256 = sha256_file(ctx.disk, ctx.progress)
        recorded = cached.with_name("sha256")
        if recorded.is_file() and recorded.read_text().strip() == sha256:
            return sha256
        ctx.step("cache", f"the cached build {cached} is damaged; building afresh")
        _rmtree(cached.parent)
        ctx.disk.unlink()
        return None

    def _fill_cache(self, ctx: BuildContext, cached: Path, sha256: str) -> None:
        ctx.step("cache", f"saving the build to the cache {cached}")
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{DISK}.tmp")
        sparse_copy(ctx.disk, tmp)
        cached.with_name("sha256").write_text(sha256 + "\n")
        os.replace(tmp, cached)

    @staticmethod
    def _next_version(folder: Path) -> int:
        versions = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
        return max(versions, default=0) + 1

    # -- finding ------------------------------------------------------------------------------------------------------

    def _load(self, meta: Path) -> ImageRecord:
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError) as err:
            raise ImageError(f"{meta}: cannot read the image record: {err}") from err
        return ImageRecord.from_json(data, meta)

    def list(self, name: str | None = None) -> list[ImageRecord]:
        """Every stored image version (of ``name`` only, when given), by name then version."""
        if not self.root.is_dir():
            return []
        folders = [self.root / name] if name else sorted(self.root.iterdir())
        records = []
        for folder in folders:
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            for version in sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
                if (version / META).is_file():
                    records.append(self._load(version / META))
        return records

    def get(self, name: str, version: int | None = None) -> ImageRecord:
        """Image ``name`` at ``version`` (the latest when None); `NotFoundError` names what there is."""
        check_name(name, "image name")
        records = self.list(name)
        if version is None and records:
            return records[-1]
        for record in records:
            if record.version == version:
                return record
        if records:
            have = ", ".join(str(r.version) for r in records)
            raise NotFoundError(f"image {name} has no version {version} (versions: {have})")
        available = ", ".join(sorted({r.name for r in self.list()})) or "none"
        raise NotFoundError(f"there is no image {name!r} (images: {available}); build it with 'labkit image build'")

    def known_refs(self) -> dict[str, str]:
        """What a lab may name, with the backend its machines get by default: every stored image's bare name (->
        the backend of its newest version) and every ``name:version`` ref (-> that version's backend)."""
        refs: dict[str, str] = {}
        for record in self.list():  # by name, then version: a bare name ends on its newest version
            refs[record.name] = refs[record.ref] = record.backend
        return refs

    def remove(self, record: ImageRecord) -> None:
        """Delete one stored version (the caller has checked that no overlay uses it)."""
        folder = self.root / record.name / str(record.version)
        if not (folder / META).is_file():
            raise NotFoundError(f"image {record.ref} is not stored at {folder}")
        # Rename first, so a crash half-way never leaves a version folder without its disk.
        doomed = folder.with_name(f"{_BUILD_PREFIX}rm-{record.version}")
        os.rename(folder, doomed)
        _rmtree(doomed)
        with contextlib.suppress(OSError):
            (self.root / record.name / ".lock").unlink()
            (self.root / record.name).rmdir()

    # -- checking -----------------------------------------------------------------------------------------------------

    def verify(self, record: ImageRecord, full: bool = True) -> list[str]:
        """Every problem with a stored image; empty when it is intact. ``full`` also re-hashes the content."""
        try:
            info = record.path.stat()
        except FileNotFoundError:
            return [f"{record.path} is missing"]
        problems = []
        if info.st_size != record.size:
            problems.append(f"size changed from {record.size} to {info.st_size} bytes (breaks every overlay on it)")
        if info.st_mtime_ns != record.mtime_ns:
            problems.append("modification time changed (UML refuses every overlay on it)")
        if info.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            problems.append(f"is writable (mode {stat.S_IMODE(info.st_mode):04o}); it must stay read-only")
        if full and info.st_size == record.size and sha256_file(record.path) != record.sha256:
            problems.append("content changed (sha256 differs)")
        return problems

    def quick_check(self, record: ImageRecord) -> tuple[ImageRecord, list[str]]:
        """Cheap check before every use: size, mtime and ctime from one stat.

        A ctime change alone (chmod, a backup tool, a hard link) is settled by a full hash: same content means the
        image is fine, and the new ctime is recorded so the next check is cheap again. Returns the (maybe updated)
        record and the problems.
        """
        try:
            info = record.path.stat()
        except FileNotFoundError:
            return record, [f"{record.path} is missing"]
        if (info.st_size, info.st_mtime_ns, info.st_ctime_ns) == (record.size, record.mtime_ns, record.ctime_ns) and \
                not info.st_mode & 0o222:
            return record, []
        problems = self.verify(record, full=True)
        if problems:
            return record, problems
        updated = replace(record, ctime_ns=info.st_ctime_ns)
        write_json_atomic(record.folder / META, updated.to_json())
        return updated, []

    def require_intact(self, record: ImageRecord) -> ImageRecord:
        """`quick_check`, raising `TamperedImageError` naming the image, version and path when it fails."""
        updated, problems = self.quick_check(record)
        if problems:
            raise TamperedImageError(
                f"image {record.name} version {record.version} at {record.path} changed after it was built: "
                + "; ".join(problems)
            )
        return updated
