"""Copy-on-write overlays of read-only base images, one class per kind behind `Overlay` (style guide 1 and 3)."""

from __future__ import annotations

from labkit.errors import OverlayError
from labkit.overlays.base import Overlay, OverlayInfo
from labkit.overlays.qcow2 import Qcow2
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


__all__ = ["OVERLAYS", "Overlay", "OverlayError", "OverlayInfo", "Qcow2", "UmlCow", "get_overlay"]
