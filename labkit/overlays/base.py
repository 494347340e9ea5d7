"""The one Overlay interface every copy-on-write kind implements (UML COW now; qcow2 and VirtualBox beside it)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import LabkitError, OverlayError


@dataclass(frozen=True)
class OverlayInfo:
    """What an overlay file says about itself."""

    kind: str
    path: Path
    backing_file: Path
    virtual_size: int
    allocated_bytes: int
    file_bytes: int
    details: tuple[tuple[str, str], ...] = ()


class Overlay(ABC):
    """Create, inspect, reset, snapshot and restore copy-on-write overlays of a read-only base image.

    Methods are abstract so that a kind that forgets one cannot be instantiated (a test proves this for every kind).
    Every write goes to a temporary file that is renamed into place, so a full disk or a crash never leaves half a file.
    """

    #: registry key, e.g. "umlcow"
    kind: str = ""
    #: how this kind's files end (".cow"): callers name overlay and snapshot files with it, never with a literal
    suffix: str = ""

    def file_name(self, stem: str) -> str:
        """The file name of an overlay or snapshot called ``stem``."""
        return f"{stem}{self.suffix}"

    @abstractmethod
    def create(self, base: Path, path: Path) -> OverlayInfo:
        """Write a new, empty overlay of ``base`` at ``path`` (refuse if ``path`` exists)."""

    @abstractmethod
    def reset(self, path: Path, base: Path) -> OverlayInfo:
        """Replace the overlay at ``path`` with a fresh empty one: all changes are gone."""

    @abstractmethod
    def info(self, path: Path) -> OverlayInfo:
        """Read the overlay's header and allocation."""

    @abstractmethod
    def snapshot(self, path: Path, dest: Path) -> OverlayInfo:
        """Keep a sparse copy of the overlay at ``dest``."""

    @abstractmethod
    def restore(self, snapshot: Path, path: Path) -> OverlayInfo:
        """Bring a snapshot back as the overlay at ``path``."""

    @abstractmethod
    def delete(self, path: Path) -> None:
        """Remove the overlay file (the caller has recorded why)."""

    def backing_problem(self, path: Path) -> str | None:
        """Why the overlay's base no longer fits it (None when it does). Kinds that record more than the base's name
        (size, time) check those too."""
        backing = self.info(path).backing_file
        return None if backing.is_file() else f"Backing file '{backing}' of '{path}' does not exist."

    def rebase(self, path: Path, new_base: Path) -> OverlayInfo:
        """Point the overlay at ``new_base`` after the base image moved (the base must be the same image)."""
        raise OverlayError(f"labkit cannot point a {self.kind} overlay at another base ({path})")

    @abstractmethod
    def flatten(self, path: Path, output: Path) -> None:
        """Write at ``output`` (which must not exist) a full raw image of the disk the guest sees: the base plus the
        overlay's changes, for reading a stopped machine offline. Overlay and base are only read."""


def stat_backing(name: str, of: str = "", missing: type[LabkitError] = OverlayError) -> os.stat_result:
    """Stat the base image ``name`` an overlay is (or is to be) made over, refusing one that is missing, unreadable
    or not a regular file, in the same words for every overlay kind. ``of`` names the overlay kind in the message."""
    where = f" of the {of}" if of else ""
    try:
        found = os.stat(name)
    except FileNotFoundError as err:
        raise missing(f"Backing file '{name}'{where} does not exist.") from err
    except OSError as err:
        raise OverlayError(f"Cannot read backing file '{name}'{where}: {err.strerror}.") from err
    if not os.path.isfile(name):
        raise OverlayError(f"Backing file '{name}'{where} is not a regular file.")
    return found
