"""The labkit web app: a Flask application factory (style guide 9: flaskr, CTFd).

``create_app(test_config)`` opens the installation's database once and starts one job runner; blueprints do the rest.
Served in production by ``labkit serve`` (gunicorn, several worker processes with threads, each with an app of its own:
see labkit/cli/serve.py).
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import secrets
from typing import Any

from flask import Flask
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFProtect

from labkit.atomic import locked, write_atomic
from labkit.config import Settings
from web.turns import taking_turns

csrf = CSRFProtect()

#: no inline scripts or styles from elsewhere: templates load /static files only (xterm.js is bundled, no CDN)
DEFAULT_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")

#: blueprints of other parts of the app, registered when present: each module has ``bp`` and may have ``init_app``
OPTIONAL_MODULES = ("api", "console", "jobs_view", "sweeper")


def secret_key(settings: Settings) -> str:
    """The key that signs session cookies: made once per installation, kept in ``<home>/web-secret`` (mode 0600).

    Made under a lock: worker processes starting at once must not each make (and keep) a key of their own.
    """
    path = settings.home / "web-secret"
    if not path.exists():
        settings.ensure()
        with locked(settings.home / ".web-secret.lock"):
            if not path.exists():
                write_atomic(path, secrets.token_hex(32), mode=0o600)
    return path.read_text().strip()


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    from web.ids import IdConverter

    # before any route is added: every <int:...> in a URL is bounded to what a row id can be
    app.url_map.converters["int"] = IdConverter
    config = dict(test_config or {})
    settings: Settings = config.pop("LABKIT_SETTINGS", None) or Settings.from_env()
    settings.ensure()
    app.config.update(
        LABKIT_SETTINGS=settings,
        MAX_CONTENT_LENGTH=1 << 20,
        SESSION_COOKIE_NAME="labkit_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        # Secure cookies need HTTPS; set LABKIT_SECURE_COOKIES=1 when a TLS proxy is in front
        SESSION_COOKIE_SECURE=os.environ.get("LABKIT_SECURE_COOKIES") == "1",
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12),
        # the 12 h count from login, and a page view does not re-sign and re-send the cookie
        SESSION_REFRESH_EACH_REQUEST=False,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session (12 h)
        LABKIT_JOB_WORKERS=4,
        # page requests computed at once in this process; the others wait their turn (web/turns.py)
        LABKIT_TURNS=2,
        LABKIT_CSP=DEFAULT_CSP,
    )
    app.config.update(config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = secret_key(settings)

    from labkit.services.db import Database
    from labkit.services.jobs import JobRunner
    from web.state import WebState

    db = Database(settings)
    app.extensions["labkit"] = WebState(settings, db, JobRunner(settings, db, app.config["LABKIT_JOB_WORKERS"]))
    csrf.init_app(app)

    from web import auth, errors, instructor, student

    errors.init_app(app)
    for module in (auth, student, instructor):
        app.register_blueprint(module.bp)
    for name in OPTIONAL_MODULES:
        _register_optional(app, name)
    app.after_request(_security_headers)
    app.wsgi_app = taking_turns(app.wsgi_app, app.config["LABKIT_TURNS"])  # type: ignore[method-assign]

    @app.context_processor
    def _user() -> dict[str, Any]:
        from web.access import current_user

        return {"current_user": current_user()}

    return app


def _register_optional(app: Flask, name: str) -> None:
    """Other helpers' modules (api, console, ...) join the app when their file exists; a fixed list, not a search."""
    try:
        module = importlib.import_module(f"web.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"web.{name}":
            return
        raise
    if hasattr(module, "init_app"):
        module.init_app(app)
    if hasattr(module, "bp"):
        app.register_blueprint(module.bp)


def _security_headers(response: Any) -> ResponseReturnValue:
    from flask import current_app

    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    # set-password links carry their secret in the path: never send it on as a Referer
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if current_app.config.get("LABKIT_CSP"):
        response.headers.setdefault("Content-Security-Policy", current_app.config["LABKIT_CSP"])
    return response
