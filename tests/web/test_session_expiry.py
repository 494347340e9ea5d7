"""An expired session is refused by the server itself (the signed cookie carries its age), not only by the browser."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient

from labkit.services.accounts import UserView


def test_an_expired_session_is_anonymous_and_changes_nothing(app: Flask, client: FlaskClient, login: Callable,
                                                             make_student: Callable[..., UserView]) -> None:
    make_student("c1", "alice")
    app.permanent_session_lifetime = dt.timedelta(seconds=1)
    assert login(client, "alice").headers["Location"] == "/my/"  # type: ignore[attr-defined]
    assert client.get("/my/").status_code == 200
    page = client.get("/my/").get_data(as_text=True)
    token = page.split('name="csrf-token" content="')[1].split('"')[0]
    time.sleep(2.1)
    answer = client.get("/my/")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/login?next=/my/")
    # A form sent with the expired session's token starts nothing: the session (and its CSRF secret) is gone.
    refused = client.post("/my/machines/c1s1l1-box/start", data={"csrf_token": token})
    assert refused.status_code == 400 and "refused" in refused.get_data(as_text=True)
