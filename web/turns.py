"""Page requests take turns: at most a few are computed at once in one worker process, the others wait, oldest first.

Why: a page is almost all Python, and Python runs one thread at a time. With gunicorn's 32 threads all computing,
they take the interpreter from each other at random every few milliseconds, so under load a page that needs 2 ms of
work waits behind whichever thread wins and some pages wait many times longer than others. With two turns a
process (one computes while the other waits on SQLite or a file) the others queue in arrival order, and each page
takes about as long as the pages ahead of it: the same throughput, a much shorter tail (docs/benchmarks.md, "Web").

The many threads are still needed: a browser console is a WebSocket that holds its threads for as long as it is
open. Consoles do not take turns (they wait on the guest, not on Python), nor does anything after the app returned
its response (sending it to a slow client).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Turns:
    """A first-come, first-served gate for ``limit`` holders at once."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"turns need a limit of at least 1, not {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._holders = 0
        #: one held lock per waiter, released by the holder that hands its turn over (cheaper than an Event)
        self._waiting: deque[threading.Lock] = deque()

    @contextmanager
    def turn(self) -> Iterator[None]:
        with self._lock:
            if self._holders < self.limit and not self._waiting:
                self._holders += 1
                baton = None
            else:
                baton = threading.Lock()
                baton.acquire()
                self._waiting.append(baton)
        if baton is not None:
            baton.acquire()  # blocks until a holder that left hands its turn to us: _holders already counts us
        try:
            yield
        finally:
            self._leave()

    def _leave(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()
            else:
                self._holders -= 1


def taking_turns(app: WsgiApp, limit: int) -> WsgiApp:
    """``app`` with its page requests taking turns (WebSocket upgrades go straight through)."""
    turns = Turns(limit)

    def gated(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_UPGRADE", "").lower() == "websocket":
            return app(environ, start_response)
        with turns.turn():
            return app(environ, start_response)

    return gated
