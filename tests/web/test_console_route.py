"""The console route's refusals, which all happen before the WebSocket handshake (Flask test client, no guest).

Another student's machine, an instructor's view and the relay itself are covered by test_console_websocket.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from conftest import make_settings, make_short_dir
from flask import Flask
from flask.testing import FlaskClient

from labkit.services.accounts import Accounts
from web import create_app

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
PASSWORD = "a long test password"


@pytest.fixture
def app() -> Iterator[Flask]:
    home = make_short_dir("lkr")
    app = create_app({"LABKIT_SETTINGS": make_settings(home / "home"), "SECRET_KEY": "route-test"})
    yield app
    app.extensions["labkit"].close()
    shutil.rmtree(home, ignore_errors=True)


def logged_in(app: Flask, username: str, role: str) -> FlaskClient:
    from web.access import SESSION_SECRET, SESSION_STAMP, SESSION_USER

    state = app.extensions["labkit"]
    user = Accounts(state.settings, state.db, "test").create_user(username, role, PASSWORD)
    client = app.test_client()
    with client.session_transaction() as session:
        session[SESSION_USER], session[SESSION_STAMP] = user.id, user.stamp
        session[SESSION_SECRET] = Accounts(state.settings, state.db, "test").open_session(user.id)
    return client


def test_refusals_before_the_handshake(app: Flask) -> None:
    anonymous = app.test_client()
    assert anonymous.get("/ws/console/box", headers=UPGRADE).status_code == 404
    student = logged_in(app, "alice", "student")
    assert student.get("/ws/console/box", headers=UPGRADE).status_code == 404  # not hers (not anyone's)
    assert student.get("/ws/console/box", headers={**UPGRADE, "Origin": "http://evil.example"}).status_code == 403
    assert student.get("/ws/console/box").status_code == 400  # not a WebSocket request at all
