"""``labkit serve``: the web app on gunicorn, run in this process through gunicorn's `BaseApplication`.

Several worker processes (``--workers``), each with many threads (gthread) and an app of its own: a job runs in the
worker that accepted it, but its progress, the job deduplication and the login rate limits are in the database, so
every worker sees them; a console WebSocket is one connection, relayed by the worker that took it. The session key
(``<home>/web-secret``) is made here, before the workers fork, so they all sign with it. The arbiter's pid is written
to ``<run_dir>/web.pid``; stop the server with SIGTERM to that pid (or Ctrl-C).
"""

from __future__ import annotations

import contextlib
import gc
import os
import socket
from pathlib import Path
from typing import Any

import click

from labkit.cli.app import App
from labkit.config import Settings
from labkit.errors import ConflictError

pass_app = click.make_pass_decorator(App)


def pid_file(settings: Settings) -> Path:
    return settings.run_dir / "web.pid"


def check_port(host: str, port: int) -> None:
    """Refuse a port in use with one sentence (gunicorn itself would retry for seconds and print a traceback)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise ConflictError(f"cannot serve on host {host!r}: {err.strerror}") from err
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind(address)
        except OSError as err:
            raise ConflictError(f"cannot serve on {host}:{port}: the port is in use or not allowed "
                                f"({err.strerror}); choose another with --port") from err


def check_pid_file(path: Path) -> None:
    """A live server keeps its pid file; a stale one (the process is gone) is removed."""
    try:
        pid = int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        return
    except PermissionError:
        pass
    raise ConflictError(f"labkit serve already runs as pid {pid} (pid file {path}); stop it first")


def default_workers() -> int:
    """The CPU count, from 2 (a worker being replaced leaves one serving) to 4 (requests mostly wait on guests and
    the database, in threads; each worker holds its own job pool and database connections)."""
    return max(2, min(4, os.cpu_count() or 1))


def gunicorn_options(settings: Settings, host: str, port: int, threads: int, workers: int = 1) -> dict[str, Any]:
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return {
        "bind": [bind],
        "workers": workers,
        # gthread, accepting only its share of the connections (web/sharing_worker.py)
        "worker_class": "web.sharing_worker.SharingWorker",
        "threads": threads,
        "pidfile": str(pid_file(settings)),
        "proc_name": "labkit-web",
        "accesslog": "-",
        # gunicorn's default line, plus the pid of the worker that answered
        "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" pid=%(p)s',
        "errorlog": "-",
        # gthread's worker heartbeat, not a request limit: long WebSockets and polls are fine
        "timeout": 60,
        "graceful_timeout": 10,
        "keepalive": 5,
        # gunicorn's control socket would live in ~/.gunicorn, shared by every server of the user: not needed
        "control_socket_disable": True,
    }


def make_server(settings: Settings, options: dict[str, Any], turns: int = 2) -> Any:
    from gunicorn.app.base import BaseApplication

    class LabkitServer(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # control_socket_disable exists only in newer gunicorn
                    self.cfg.set(key, value)

        def load(self) -> Any:
            # in the worker, after the fork: the database and the job threads belong to that process
            from web import create_app

            app = create_app({"LABKIT_SETTINGS": settings, "LABKIT_TURNS": turns, "LABKIT_SWEEPER": True})
            # what is loaded now lives as long as the worker: out of the collector's sight, full collections no
            # longer walk it (they pause every thread; measured in bench/web.py)
            gc.collect()
            gc.freeze()
            return app

    return LabkitServer()


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes  [default: the CPU count, from 2 to 4].")
@click.option("--threads", default=32, show_default=True, type=click.IntRange(2, 1024),
              help="Request threads per worker (each open browser console holds two).")
@click.option("--turns", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Pages computed at once per worker; other requests wait their turn, oldest first.")
@pass_app
def command(app: App, host: str, port: int, workers: int | None, threads: int, turns: int) -> None:
    """Serve the web app (student portal, instructor dashboard, API) until stopped."""
    from web import secret_key

    settings = app.settings
    settings.ensure()
    check_pid_file(pid_file(settings))
    check_port(host, port)
    app.db  # noqa: B018 - open and migrate the database here, so a problem is one clear line before gunicorn starts
    app.close()
    secret_key(settings)  # made once, before the workers fork
    workers = workers or default_workers()
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"labkit: serving http://{shown}:{port}/ with {workers} worker{'s' if workers > 1 else ''} "
               f"(pid file {pid_file(settings)}; stop with Ctrl-C)", err=True)
    with contextlib.suppress(KeyboardInterrupt):
        make_server(settings, gunicorn_options(settings, host, port, threads, workers), turns).run()
