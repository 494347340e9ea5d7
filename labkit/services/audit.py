"""Recording who did what. Every state-changing service call adds one Event row in its own transaction."""

from __future__ import annotations

import getpass
import os

from sqlalchemy.orm import Session

from labkit.services.models import Event


def current_actor() -> str:
    """The person behind a CLI call: ``LABKIT_ACTOR`` when a wrapper sets it, else the login name."""
    return os.environ.get("LABKIT_ACTOR") or getpass.getuser()


def record(session: Session, actor: str, action: str, target: str, detail: str = "") -> None:
    session.add(Event(actor=actor, action=action, target=target, detail=detail))
