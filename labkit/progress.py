"""Progress reports from long work (image builds, boots), so lower layers never print (style guide 11).

The CLI renders events with a progress bar; the web app stores them as job progress.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """One step of a long action: ``done`` out of ``total`` (``total`` None when unknown)."""

    step: str
    done: int = 0
    total: int | None = None
    message: str = ""


Reporter = Callable[[ProgressEvent], None]


def silent(_event: ProgressEvent) -> None:
    """A reporter that drops every event."""
