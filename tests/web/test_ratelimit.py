"""The login limiter: its window on a fake clock, and its counts shared by two apps (two server workers) through the
database."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from labkit.config import Settings
from labkit.services.db import Database
from labkit.services.models import LoginFailure
from web import create_app
from web.ratelimit import Limit, LoginLimiter


@pytest.fixture
def db(web_settings: Settings) -> Iterator[Database]:
    database = Database(web_settings)
    yield database
    database.close()


def test_limits_slide_and_a_success_clears_the_username(db: Database) -> None:
    now = [1000.0]
    limiter = LoginLimiter(db, Limit(3, 60), Limit(5, 60), clock=lambda: now[0])
    for _ in range(3):
        assert limiter.blocked("Alice", "10.0.0.1") is None
        limiter.failed("Alice", "10.0.0.1")
    assert limiter.blocked("alice", "10.0.0.9") == 60  # per username (any case), from any address
    now[0] += 30
    assert limiter.blocked("alice", "10.0.0.9") == 30
    now[0] += 31
    assert limiter.blocked("alice", "10.0.0.9") is None
    for name in ("bob", "carol", "dave", "erin"):  # the earlier failures of 10.0.0.1 are out of the window
        limiter.failed(name, "10.0.0.1")
    assert limiter.blocked("frank", "10.0.0.1") is None
    limiter.failed("grace", "10.0.0.1")
    assert limiter.blocked("frank", "10.0.0.1") == 60  # 5 failures from that address within the window
    limiter.failed("erin", "10.0.0.2")
    limiter.failed("erin", "10.0.0.2")
    limiter.succeeded("erin")
    limiter.failed("erin", "10.0.0.3")
    assert limiter.blocked("erin", "10.0.0.4") is None


def test_old_failures_are_deleted_as_new_ones_come(db: Database) -> None:
    now = [1000.0]
    limiter = LoginLimiter(db, Limit(3, 60), Limit(5, 120), clock=lambda: now[0])
    for name in ("a", "b", "c"):
        limiter.failed(name, "10.0.0.1")
    now[0] += 121  # past the longest window
    limiter.failed("d", "10.0.0.2")
    with db.read() as session:
        assert sorted(session.scalars(select(LoginFailure.key))) == ["addr:10.0.0.2", "user:d"]


def test_two_apps_on_one_database_count_the_same_failures(
        web_settings: Settings, client: FlaskClient, make_instructor: Callable[..., object],
        login: Callable[..., object]) -> None:
    """Two apps are two server workers: failed logins through either count against the one limit."""
    make_instructor("teacher")
    other = create_app({"LABKIT_SETTINGS": web_settings, "TESTING": True})
    try:
        clients = [client, other.test_client()]
        for attempt in range(5):
            assert login(clients[attempt % 2], "teacher", "wrong password").status_code == 401
        for each in clients:
            answer = login(each, "teacher")  # the right password, refused before it is checked
            assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0
            assert "Too many failed logins" in answer.get_data(as_text=True)
        with other.extensions["labkit"].db.read() as session:
            assert session.scalar(select(func.count()).select_from(LoginFailure)) == 10  # user and address rows
    finally:
        other.extensions["labkit"].close()
