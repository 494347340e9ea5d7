"""Base images as the rest of labkit sees them: the image store's versions mirrored into the database, so machines can
point at them, and every use checked against tampering with the list of machines it would break."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from labkit.config import Settings
from labkit.errors import BadNameError, ConflictError, TamperedImageError
from labkit.images.store import ImageRecord, ImageStore
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


def resolve(session: Session, settings: Settings, ref: str) -> Image:
    name, version = parse_ref(ref)
    return mirror(session, ImageStore(settings).get(name, version))


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


def verify(session: Session, settings: Settings, name: str | None = None) -> list[tuple[ImageRecord, list[str],
                                                                                      list[str]]]:
    """Every stored version (of ``name``) with its problems and the machines on it."""
    store = ImageStore(settings)
    results = []
    for record in store.list():
        if name and record.name != name:
            continue
        row = mirror(session, record)
        results.append((record, store.verify(record, full=True), dependents(session, row)))
    return results


def remove(session: Session, settings: Settings, ref: str) -> Path:
    """Delete one stored version, refusing while any machine's overlay depends on it."""
    name, version = parse_ref(ref)
    if version is None:
        raise BadNameError(f"say which version of {name} to remove, as {name}:VERSION")
    store = ImageStore(settings)
    record = store.get(name, version)
    row = mirror(session, record)
    users = dependents(session, row)
    if users:
        raise ConflictError(f"image {name}:{version} is the base of machines {', '.join(users)}; remove them first")
    store.remove(record)
    session.delete(row)
    return Path(record.path)
