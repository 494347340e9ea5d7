"""Failed logins, stored so that every web worker process counts the same attempts (`web.ratelimit` decides).

One row per failure and key (``user:<name>``, ``addr:<address>``). Rows older than the longest window are deleted
when new ones are written, so the table stays as small as the attempts of the last few minutes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import delete, select

from labkit.services.db import Database
from labkit.services.models import LoginFailure


class LoginFailures:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, keys: Iterable[str], at: dt.datetime, forget_before: dt.datetime) -> None:
        """One failure at ``at`` for each key; failures at or before ``forget_before`` (of any key) are deleted."""
        with self.db.transaction() as session:
            session.execute(delete(LoginFailure).where(LoginFailure.at <= forget_before))
            session.add_all(LoginFailure(key=key, at=at) for key in keys)

    def recent(self, key: str, since: dt.datetime, limit: int) -> list[dt.datetime]:
        """The newest ``limit`` failures of ``key`` after ``since``, newest first."""
        query = (select(LoginFailure.at).where(LoginFailure.key == key, LoginFailure.at > since)
                 .order_by(LoginFailure.at.desc()).limit(limit))
        with self.db.read() as session:
            return list(session.scalars(query))

    def clear(self, key: str) -> None:
        with self.db.transaction() as session:
            session.execute(delete(LoginFailure).where(LoginFailure.key == key))
