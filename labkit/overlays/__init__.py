"""Copy-on-write overlays of read-only base images, one class per kind behind `Overlay` (style guide 1 and 3)."""

from __future__ import annotations

from pathlib import Path

from labkit.errors import LabkitError, OverlayError
from labkit.overlays.base import Overlay, OverlayInfo
from labkit.overlays.qcow2 import Qcow2
from labkit.overlays.sparse import sparse_copy
from labkit.overlays.umlcow import UmlCow

#: Every overlay kind labkit knows, by the name lab files and the database use.
OVERLAYS: dict[str, type[Overlay]] = {"umlcow": UmlCow, "qcow2": Qcow2}


def get_overlay(kind: str) -> Overlay:
    """The overlay implementation for ``kind``."""
    try:
        cls = OVERLAYS[kind]
    except KeyError as err:
        known = ", ".join(sorted(OVERLAYS))
        raise OverlayError(f"Unknown overlay kind '{kind}' (known: {known}).") from err
    return cls()


def overlay_of_file(path: Path) -> Overlay:
    """The overlay kind of the file at ``path``: the kind whose suffix it has, else the first kind that can read it
    (sorted by name), else one error naming what each kind said."""
    for kind in sorted(OVERLAYS):
        overlay = get_overlay(kind)
        if overlay.suffix and path.name.endswith(overlay.suffix):
            return overlay
    said = []
    for kind in sorted(OVERLAYS):
        overlay = get_overlay(kind)
        try:
            overlay.info(path)
        except LabkitError as err:
            said.append(f"{kind}: {err}")
            continue
        return overlay
    raise OverlayError(f"'{path}' is no overlay of a kind labkit knows ({'; '.join(said)})")


__all__ = ["OVERLAYS", "Overlay", "OverlayError", "OverlayInfo", "Qcow2", "UmlCow", "get_overlay", "overlay_of_file",
           "sparse_copy"]
