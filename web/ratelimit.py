"""Login rate limiting: failed attempts counted per username and per client address over a sliding window.

The failures are rows in the database (`labkit.services.login_failures`), so every worker process of `labkit serve`
counts the same attempts and a restart keeps them. Behind a reverse proxy every client has the proxy's address, so
the address limit then counts the proxy (set it higher, or let the proxy limit).
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from labkit.services.db import Database
from labkit.services.login_failures import LoginFailures

#: the key column's width
_KEY_LENGTH = 128


@dataclass(frozen=True)
class Limit:
    failures: int
    window: float


def _moment(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


class LoginLimiter:
    """``blocked(username, address)`` before checking a password; ``failed(...)`` after a wrong one.

    ``clock`` gives seconds since the epoch: every worker process must read the same clock.
    """

    def __init__(self, db: Database, per_user: Limit = Limit(5, 300.0), per_address: Limit = Limit(20, 300.0),
                 clock: Callable[[], float] = time.time) -> None:
        self.failures = LoginFailures(db)
        self.per_user = per_user
        self.per_address = per_address
        self.clock = clock

    def _keys(self, username: str, address: str) -> tuple[tuple[str, Limit], tuple[str, Limit]]:
        return ((f"user:{username.lower()}"[:_KEY_LENGTH], self.per_user),
                (f"addr:{address}"[:_KEY_LENGTH], self.per_address))

    def blocked(self, username: str, address: str) -> float | None:
        """Seconds to wait if either limit is reached, else None."""
        now = self.clock()
        wait = 0.0
        for key, limit in self._keys(username, address):
            times = self.failures.recent(key, _moment(now - limit.window), limit.failures)
            if len(times) >= limit.failures:  # the oldest of the last `failures` leaves the window first
                wait = max(wait, times[-1].timestamp() + limit.window - now)
        return max(1.0, math.ceil(wait)) if wait > 0 else None

    def failed(self, username: str, address: str) -> None:
        now = self.clock()
        longest = max(self.per_user.window, self.per_address.window)
        self.failures.record([key for key, _limit in self._keys(username, address)], _moment(now),
                             forget_before=_moment(now - longest))

    def succeeded(self, username: str) -> None:
        """A right password clears that username's failures (not the address's)."""
        self.failures.clear(self._keys(username, "")[0][0])
