"""Login rate limiting: failed attempts counted per username and per client address over a sliding window.

In memory, on purpose: `labkit serve` runs one gunicorn worker process (threads), so one limiter sees every attempt;
a restart forgets the counts. Behind a reverse proxy every client has the proxy's address, so the address limit then
counts the proxy (set it higher, or let the proxy limit).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    failures: int
    window: float


class LoginLimiter:
    """``blocked(username, address)`` before checking a password; ``failed(...)`` after a wrong one."""

    def __init__(self, per_user: Limit = Limit(5, 300.0), per_address: Limit = Limit(20, 300.0),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_user = per_user
        self.per_address = per_address
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], limit: Limit, now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - limit.window:
            times.popleft()
        if not times:
            self._failures.pop(key, None)
        return times

    def blocked(self, username: str, address: str) -> float | None:
        """Seconds to wait if either limit is reached, else None."""
        now = self.clock()
        wait = 0.0
        with self._lock:
            for key, limit in ((("user", username.lower()), self.per_user), (("addr", address), self.per_address)):
                times = self._recent(key, limit, now)
                if len(times) >= limit.failures:
                    wait = max(wait, times[len(times) - limit.failures] + limit.window - now)
        return max(1.0, math.ceil(wait)) if wait > 0 else None

    def failed(self, username: str, address: str) -> None:
        now = self.clock()
        with self._lock:
            if len(self._failures) > 10_000:  # many usernames tried: drop the expired ones
                for key in list(self._failures):
                    self._recent(key, self.per_user if key[0] == "user" else self.per_address, now)
            for key in (("user", username.lower()), ("addr", address)):
                self._failures.setdefault(key, deque()).append(now)
                # a bounded memory: never keep more than needed to decide
                limit = self.per_user if key[0] == "user" else self.per_address
                while len(self._failures[key]) > limit.failures:
                    self._failures[key].popleft()

    def succeeded(self, username: str) -> None:
        """A right password clears that username's failures (not the address's)."""
        with self._lock:
            self._failures.pop(("user", username.lower()), None)
