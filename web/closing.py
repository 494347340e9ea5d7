"""Set when this worker process is asked to stop (``labkit serve`` got SIGTERM or Ctrl-C, or gunicorn replaces the
worker): responses that last, such as the class grid's event stream, end at their next turn instead of holding the
worker for its whole graceful timeout. A plain event, so the gunicorn worker class can set it without importing the
app."""

from __future__ import annotations

import threading

closing = threading.Event()
