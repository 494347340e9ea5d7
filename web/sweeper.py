"""The sweeper in the server process: a daemon thread per web worker of ``labkit serve`` runs
`labkit.services.sweeper.sweep_if_due` every ``LABKIT_SWEEP_SECONDS`` (default 20; 0 turns it off). With several
workers, a file lock and the time of the last sweep let one of them act per period (the others skip). Only the
served app sweeps (``labkit serve`` asks for it with ``LABKIT_SWEEPER``): an app made in another process (a test, a
script) has no thread that outlives it, unless its config gives ``LABKIT_SWEEP_SECONDS``. ``labkit course sweep``
does one round from the command line (cron, tests)."""

from __future__ import annotations

import logging
import os
import threading

from flask import Flask

from labkit.config import Settings
from labkit.services.db import Database

#: seconds between sweeps when neither the app's config nor the environment says
DEFAULT_SECONDS = 20.0

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    every = app.config.get("LABKIT_SWEEP_SECONDS")
    if every is None:
        served = app.config.get("LABKIT_SWEEPER") and not app.testing
        every = (os.environ.get("LABKIT_SWEEP_SECONDS") or DEFAULT_SECONDS) if served else 0
    seconds = float(every)
    if seconds <= 0:
        return
    state = app.extensions["labkit"]
    threading.Thread(target=_run, args=(state.settings, state.db, seconds), name="labkit-sweeper",
                     daemon=True).start()


def _run(settings: Settings, db: Database, every: float) -> None:
    from labkit.services.sweeper import sweep_if_due

    stop = threading.Event()
    while not stop.wait(every):
        try:
            report = sweep_if_due(settings, every, db)
        except Exception:  # one bad round (a locked database, a guest that would not stop) never ends the thread
            log.exception("labkit sweeper: a sweep failed; the next one tries again")
            continue
        if report is not None and report.failed:
            log.warning("labkit sweeper: %s", "; ".join(report.failed))
