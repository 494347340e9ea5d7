"""Base images as the rest of labkit sees them: the image store's versions mirrored into the database, so machines can
point at them, and every use checked against tampering with the list of machines it would break."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.config import Settings
from labkit.errors import BadNameError, ConfigError, ConflictError, TamperedImageError
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageRecord, ImageStore
from labkit.progress import Reporter, silent
from labkit.runtime import backend_kinds, get_backend
from labkit.runtime.base import WarmState
from labkit.services.audit import current_actor
from labkit.services.audit import record as record_event
from labkit.services.db import Database
from labkit.services.models import Image, Machine


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:VERSION`` into its parts, with one clear error."""
    name, sep, version = ref.partition(":")
    if sep and not version.isdigit():
        raise BadNameError(f"image {ref!r} must be NAME or NAME:VERSION with a whole-number version")
    return name, int(version) if sep else None


def mirror(session: Session, record: ImageRecord) -> Image:
    """The database row for a stored image version, added on first sight."""
    row = session.scalar(select(Image).where(Image.name == record.name, Image.version == record.version))
    if row is None:
        row = Image(name=record.name, version=record.version, path=str(record.path), sha256=record.sha256,
                    size=record.size, recipe_digest=record.recipe_digest,
                    built_at=dt.datetime.fromisoformat(record.built_at) if isinstance(record.built_at, str)
                    else record.built_at)
        session.add(row)
        session.flush()
    return row


def dependents(session: Session, image: Image) -> list[str]:
    return list(session.scalars(select(Machine.name).where(Machine.image_id == image.id).order_by(Machine.name)))


def require_intact(session: Session, settings: Settings, image: Image) -> None:
    """Refuse to use an image that changed since it was built, naming the overlays it breaks."""
    store = ImageStore(settings)
    try:
        store.require_intact(store.get(image.name, image.version))
    except TamperedImageError as err:
        users = dependents(session, image)
        broken = f"; overlays that depend on it: {', '.join(users)}" if users else ""
        raise TamperedImageError(f"{err}{broken}") from err


class Images:
    """``labkit image ...``: the image store, with the database's knowledge of which machines stand on which image."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.store = ImageStore(settings)

    def build(self, name: str, recipes: Path | None = None, if_missing: bool = False,
              progress: Reporter = silent) -> tuple[ImageRecord, bool]:
        """Build image NAME (a new version); with ``if_missing`` keep the newest one built from the same recipe.

        Returns the record and whether a build happened.
        """
        recipe = find_recipe(recipes or self.settings.recipes, name)
        if if_missing:
            current = [r for r in self.store.list(name) if r.recipe_digest == recipe.digest]
            if current and not self.store.verify(current[-1], full=False):
                return current[-1], False
        record = self.store.build(recipe, progress=progress)
        with self.db.transaction() as session:
            mirror(session, record)
            record_event(session, current_actor(), "image-build", record.ref, record.sha256)
        return record, True

    def verify(self, name: str | None = None, full: bool = True) -> list[ImageCheck]:
        """Every stored version (of ``name``) with its problems and the machines standing on it."""
        records = self.store.list(name)
        if name and not records:
            self.store.get(name)  # raises NotFoundError naming the images there are
        with self.db.transaction() as session:
            return [self._check(session, record, full) for record in records]

    def show(self, ref: str) -> ImageCheck:
        record = self.store.get(*parse_ref(ref))
        with self.db.transaction() as session:
            return self._check(session, record, full=False)

    def _check(self, session: Session, record: ImageRecord, full: bool) -> ImageCheck:
        return ImageCheck(record, self.store.verify(record, full=full), dependents(session, mirror(session, record)))

    def warm(self, ref: str, memory_mb: int, progress: Reporter = silent) -> tuple[ImageRecord, WarmState, bool]:
        """Make the image's warm state for machines of ``memory_mb`` now, rather than at the first start of a fresh
        machine that wants it. Returns the record, the state and whether it was made (False: it was there)."""
        record = self.store.require_intact(self.store.get(*parse_ref(ref)))
        if not record.warm:
            raise ConfigError(f"image {record.ref} cannot start machines warm: its recipe does not say `warm = true` "
                              "(docs/images.md, \"Warm states\")")
        backend = next((b for b in map(get_backend, backend_kinds()) if b.capabilities.warm_start), None)
        if backend is None:
            raise ConfigError("no machine backend here can start machines from a warm state")
        found = backend.warm_state(record.path, memory_mb)
        if found is not None:
            return record, found, False
        made = backend.make_warm(record.path, memory_mb, self.settings.run_dir, progress=progress)
        with self.db.transaction() as session:
            record_event(session, current_actor(), "image-warm", record.ref, f"{memory_mb} MB, {backend.kind}")
        return record, made, True

    def remove(self, ref: str) -> ImageRecord:
        """Delete one stored version, refusing while any machine's overlay depends on it."""
        name, version = parse_ref(ref)
        if version is None:
            raise BadNameError(f"say which version of {name} to remove, as {name}:VERSION")
        record = self.store.get(name, version)
        with self.db.transaction() as session:
            row = mirror(session, record)
            users = dependents(session, row)
            if users:
                raise ConflictError(f"image {record.ref} is the base of machines {', '.join(users)}; remove them first")
            self.store.remove(record)
            session.delete(row)
            record_event(session, current_actor(), "image-remove", record.ref)
        return record


@dataclass(frozen=True)
class ImageCheck:
    record: ImageRecord
    problems: list[str]
    machines: list[str]

    def to_json(self) -> dict[str, object]:
        return {**self.record.to_json(), "ref": self.record.ref, "ok": not self.problems, "problems": self.problems,
                "machines": self.machines}
