"""A gunicorn gthread worker that takes only its share of the connections.

Why: a browser keeps its connection open (keep-alive), and every request on it is answered by the worker process
that accepted it. Workers race to accept, and one often wins most of a burst of new connections. Each process can
use one core at most (Python runs one thread at a time), so under load the one holding twice the connections makes
each of them wait twice as long: the slowest pages are those of the busiest worker.

Here each worker publishes how many connections it holds in a small table shared by all workers (made by the
server before it forks them), and stops accepting while it holds more than `SLACK` above the least loaded worker;
that worker is always accepting, so no connection is left waiting. A worker counts only while its main loop is
alive: the loop stamps the table at least once a second, and a worker silent for `STALE_MS` (one that died or
hangs) is left out, so the others accept everything.
"""

from __future__ import annotations

import os
import time
from multiprocessing.sharedctypes import RawArray
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from web.closing import closing

#: how many more connections than the least loaded worker a worker may hold
SLACK = 1
#: rows of the shared table: more than `labkit serve --workers` allows
SLOTS = 64
#: a worker whose main loop has not stamped the table for this long does not count (its loop wakes every second)
STALE_MS = 2500
PID, CONNS, BEAT = range(3)

#: (pid, connections, last stamp in monotonic ms) per slot; made in the server process when gunicorn loads this
#: worker class, before it forks the workers (the monotonic clock is the same in every process)
_TABLE: Any = RawArray("q", 3 * SLOTS)


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


class SharingWorker(ThreadWorker):  # type: ignore[misc]
    """`ThreadWorker` with its connection count published and its accepting capped (see the module's docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._row = -1
        self._conns = 0
        super().__init__(*args, **kwargs)

    def init_process(self) -> None:
        self._row = 3 * (self.age % SLOTS)  # ages are unique and increasing: live workers never share a slot
        _TABLE[self._row + PID], _TABLE[self._row + CONNS], _TABLE[self._row + BEAT] = os.getpid(), 0, _now_ms()
        super().init_process()

    def notify(self) -> None:
        """gthread's main loop calls this at every turn (the arbiter's heartbeat); it stamps the table too."""
        super().notify()
        _TABLE[self._row + BEAT] = _now_ms()

    def handle_exit(self, sig: int, frame: Any) -> None:
        """Asked to stop: long responses (event streams) end now, not at the graceful timeout."""
        closing.set()
        super().handle_exit(sig, frame)

    def run(self) -> None:
        try:
            super().run()
        finally:
            _TABLE[self._row + PID] = 0  # out of the table: the others no longer count this worker

    # gthread counts connections in ``nr_conns`` and accepts while it is below ``worker_connections``
    @property
    def nr_conns(self) -> int:
        return self._conns

    @nr_conns.setter
    def nr_conns(self, value: int) -> None:
        self._conns = value
        if self._row >= 0:
            _TABLE[self._row + CONNS] = value

    @property
    def worker_connections(self) -> int:
        limit: int = self.cfg.worker_connections
        fresh = _now_ms() - STALE_MS
        others = [_TABLE[row + CONNS] for row in range(0, 3 * SLOTS, 3)
                  if row != self._row and _TABLE[row + PID] and _TABLE[row + BEAT] > fresh]
        return min(limit, min(others) + SLACK + 1) if others else limit

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        pass  # ThreadWorker sets it from the configuration; the property above reads that itself
