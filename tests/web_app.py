"""Shared by the web tests (tests/web) and the guest tests that drive the app's routes (tests/guests): the app over a
new short home with the tiny image, cleaned up afterwards; logging a Flask test client in without the login form;
reading a page's CSRF token."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import make_settings, make_short_dir
from flask import Flask
from flask.testing import FlaskClient

from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from web import create_app
from web.access import SESSION_SECRET, SESSION_STAMP, SESSION_USER
from web.state import WebState


@dataclass
class AppHome:
    home: Path  # the short folder; the installation is its home/
    settings: Settings
    app: Flask
    state: WebState


@contextmanager
def app_home(prefix: str, secret_key: str) -> Iterator[AppHome]:
    """The app over a new installation in a short folder (tiny built). Afterwards whatever a failed test left running
    is stopped by PID (the services' kill), the app's state closed and the folder removed."""
    home = make_short_dir(prefix)
    settings = make_settings(home / "home")
    ImageStore(settings).build(find_recipe(settings.recipes, "tiny"))
    app = create_app({"LABKIT_SETTINGS": settings, "SECRET_KEY": secret_key})
    state: WebState = app.extensions["labkit"]
    try:
        yield AppHome(home, settings, app, state)
    finally:
        for view in state.machines("test").status():
            if view.state != "stopped":
                state.machines("test").kill(view.name)
        state.close()
        shutil.rmtree(home, ignore_errors=True)


def session_client(app: Flask, username: str) -> FlaskClient:
    """A client logged in as existing user ``username`` with a session like the login form makes, without the form
    (so no rate limit or CSRF round trip is involved)."""
    state: WebState = app.extensions["labkit"]
    accounts = state.accounts("test")
    user = accounts.get(username)
    client = app.test_client()
    with client.session_transaction() as session:
        session[SESSION_USER], session[SESSION_STAMP] = user.id, user.stamp
        session[SESSION_SECRET] = accounts.open_session(user.id)
    return client


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    """The CSRF token of the client's session, read from a page's meta tag."""
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert found, f"no csrf meta tag on {path}"
    return found.group(1)
