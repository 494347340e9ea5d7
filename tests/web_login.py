"""Logging a Flask test client in without the login form, and reading a page's CSRF token: shared by the web tests
(tests/web) and the guest tests that drive the app's routes (tests/guests)."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

from web.access import SESSION_SECRET, SESSION_STAMP, SESSION_USER
from web.state import WebState


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
