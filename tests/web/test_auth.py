"""Logging in and out, one-time links, rate limits, CSRF, cookies and the 404 rules of the pages, through the test
client with CSRF on."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from labkit.services.accounts import UserView
from labkit.services.models import Event, PasswordToken, User

from .conftest import PASSWORD, csrf_token, state

Login = Callable[..., object]


def logged_in_as(client: FlaskClient) -> str | None:
    page = client.get("/login")
    if page.status_code != 302:
        return None
    return page.headers["Location"]


def test_passwords_are_stored_as_scrypt_hashes(app: Flask, make_instructor: Callable[..., UserView]) -> None:
    make_instructor("teacher")
    with state(app).db.transaction() as session:
        stored = session.scalar(select(User.password_hash).where(User.username == "teacher"))
    assert stored is not None and stored.startswith("scrypt:") and PASSWORD not in stored


def test_login_logout_and_role_homes(client: FlaskClient, make_instructor: Callable[..., UserView],
                                     make_student: Callable[..., UserView], login: Login) -> None:
    make_instructor("teacher")
    make_student("c1", "alice")
    answer = login(client, "teacher")
    assert answer.status_code == 302 and answer.headers["Location"] == "/teach/"
    page = client.get("/teach/")
    assert page.status_code == 200 and "teacher" in page.get_data(as_text=True)
    assert client.get("/my/").status_code == 404  # not an instructor's page
    assert client.get("/").headers["Location"] == "/teach/"
    # logging out is a POST with the CSRF token
    assert client.get("/logout").status_code == 405
    out = client.post("/logout", data={"csrf_token": csrf_token(client, "/teach/")})
    assert out.status_code == 302 and out.headers["Location"] == "/login"
    assert client.get("/teach/").headers["Location"].startswith("/login?next=/teach/")

    assert login(client, "alice").headers["Location"] == "/my/"
    assert client.get("/my/").status_code == 200
    assert client.get("/teach/").status_code == 404


def test_wrong_password_unknown_user_and_no_password(client: FlaskClient, make_instructor: Callable[..., UserView],
                                                      login: Login) -> None:
    make_instructor("teacher")
    make_instructor("nopass", password=None)
    for user, password in (("teacher", "wrong password"), ("nobody", PASSWORD), ("nopass", "")):
        answer = login(client, user, password)
        assert answer.status_code in (400, 401)
        assert logged_in_as(client) is None
    answer = login(client, "teacher", "not it either")
    assert answer.status_code == 401 and "Wrong username or password." in answer.get_data(as_text=True)


def test_next_only_goes_to_this_site(client: FlaskClient, make_instructor: Callable[..., UserView]) -> None:
    make_instructor("teacher")
    for target, expected in (("/teach/?x=1", "/teach/?x=1"), ("//evil.example/", "/teach/"),
                             ("https://evil.example/", "/teach/"), ("/\\evil.example", "/teach/")):
        token = csrf_token(client)
        answer = client.post("/login", data={"username": "teacher", "password": PASSWORD, "next": target,
                                             "csrf_token": token})
        assert answer.headers["Location"] == expected, target
        client.post("/logout", data={"csrf_token": csrf_token(client, "/teach/")})


def test_login_is_rate_limited_per_username_and_per_address(client: FlaskClient, app: Flask,
                                                             make_instructor: Callable[..., UserView],
                                                             login: Login) -> None:
    make_instructor("teacher")
    for _ in range(5):
        assert login(client, "teacher", "wrong password").status_code == 401
    limited = login(client, "teacher", PASSWORD)  # even the right password is not checked now
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
    assert "Too many failed logins" in limited.get_data(as_text=True)
    assert logged_in_as(client) is None
    # the address limit: 20 failures from one address, whatever the usernames
    make_instructor("other")
    for n in range(15):  # 5 + 15 = 20
        assert login(client, f"guess{n}", "wrong password").status_code == 401
    assert login(client, "other", PASSWORD).status_code == 429
    # another address is not limited (and the username limit of "other" is not reached)
    elsewhere = app.test_client()
    elsewhere.environ_base["REMOTE_ADDR"] = "127.0.0.2"
    assert login(elsewhere, "other", PASSWORD).status_code == 302
    third = app.test_client()
    third.environ_base["REMOTE_ADDR"] = "127.0.0.3"
    assert login(third, "teacher", PASSWORD).status_code == 429  # but the username limit holds everywhere


def test_csrf_missing_or_forged_is_refused_and_changes_nothing(client: FlaskClient,
                                                               make_instructor: Callable[..., UserView],
                                                               login: Login) -> None:
    make_instructor("teacher")
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": csrf_token(client) + "x"}):
        answer = client.post("/login", data={"username": "teacher", "password": PASSWORD, **data})
        assert answer.status_code == 400 and "The form was refused" in answer.get_data(as_text=True)
        assert logged_in_as(client) is None
    # a token of another session does not work either
    other = client.application.test_client()
    foreign = csrf_token(other)
    assert client.post("/login", data={"username": "teacher", "password": PASSWORD,
                                       "csrf_token": foreign}).status_code == 400
    login(client, "teacher")
    assert client.post("/logout").status_code == 400
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 400
    assert client.get("/teach/").status_code == 200  # still logged in


def test_session_cookie_flags(client: FlaskClient, make_instructor: Callable[..., UserView], login: Login) -> None:
    make_instructor("teacher")
    answer = login(client, "teacher")
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith("labkit_session=")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback unless LABKIT_SECURE_COOKIES=1
    expires = dt.datetime.strptime(cookie.split("Expires=")[1].split(";")[0], "%a, %d %b %Y %H:%M:%S GMT")
    lifetime = expires.replace(tzinfo=dt.UTC) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=11, minutes=55) < lifetime <= dt.timedelta(hours=12)


def test_security_headers(client: FlaskClient) -> None:
    page = client.get("/login")
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


def test_one_time_link_sets_a_password_once(client: FlaskClient, app: Flask,
                                             make_student: Callable[..., UserView], login: Login) -> None:
    make_student("c1", "alice", password=None)
    [link] = state(app).accounts("teacher").create_links("c1")
    url = f"/set-password/{link.token}"
    page = client.get(url)
    assert page.status_code == 200 and "alice" in page.get_data(as_text=True)
    token = csrf_token(client, url)
    # too short, then different, then right
    assert client.post(url, data={"password": "short", "confirm": "short", "csrf_token": token}).status_code == 400
    assert client.post(url, data={"password": PASSWORD, "confirm": PASSWORD + "x",
                                  "csrf_token": token}).status_code == 400
    done = client.post(url, data={"password": PASSWORD, "confirm": PASSWORD, "csrf_token": token})
    assert done.status_code == 302 and done.headers["Location"].startswith("/login")
    assert login(client, "alice").headers["Location"] == "/my/"
    # used twice: refused, and the password stays
    again = client.post(url, data={"password": "another password", "confirm": "another password",
                                   "csrf_token": csrf_token(client, "/my/")})
    assert again.status_code == 409 and "already used" in again.get_data(as_text=True)
    assert client.get(url).status_code == 409
    assert state(app).accounts("t").verify("alice", PASSWORD) is not None
    with state(app).db.transaction() as session:
        assert session.scalar(select(Event).where(Event.action == "link-use")).actor == "alice"
        # only the hash is stored
        assert session.scalar(select(PasswordToken.token_hash)) != link.token


def test_expired_and_unknown_links(client: FlaskClient, app: Flask, make_student: Callable[..., UserView]) -> None:
    make_student("c1", "alice", password=None)
    [link] = state(app).accounts("teacher").create_links("c1")
    with state(app).db.transaction() as session:
        session.execute(update(PasswordToken).values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)))
    page = client.get(f"/set-password/{link.token}")
    assert page.status_code == 409 and "expired" in page.get_data(as_text=True)
    assert client.get("/set-password/not-a-token").status_code == 404


def test_a_new_password_ends_older_sessions(client: FlaskClient, app: Flask,
                                            make_instructor: Callable[..., UserView], login: Login) -> None:
    make_instructor("teacher")
    login(client, "teacher")
    assert client.get("/teach/").status_code == 200
    state(app).accounts("admin").set_password("teacher", "a brand new password")
    assert client.get("/teach/").status_code == 302
    login(client, "teacher", "a brand new password")
    state(app).accounts("admin").disable("teacher")
    assert client.get("/teach/").status_code == 302
    assert login(client, "teacher", "a brand new password").status_code == 401


def test_errors_are_json_under_api_and_pages_elsewhere(client: FlaskClient) -> None:
    api = client.get("/api/v1/no-such-thing-here")
    assert api.status_code == 404 and api.is_json and "error" in api.get_json()
    page = client.get("/no-such-page")
    assert page.status_code == 404 and "not yours" in page.get_data(as_text=True)


def test_uploads_over_one_mebibyte_are_refused(client: FlaskClient) -> None:
    answer = client.post("/login", data={"username": "x" * (1 << 20), "password": "p"})
    assert answer.status_code == 413 and "1 MiB" in answer.get_data(as_text=True)


@pytest.mark.parametrize("path", ["/my/", "/teach/"])
def test_anonymous_is_sent_to_login(client: FlaskClient, path: str) -> None:
    answer = client.get(path)
    assert answer.status_code == 302 and answer.headers["Location"] == f"/login?next={path}"


def test_logging_out_ends_the_session_on_the_server(app: Flask, client: FlaskClient,
                                                    make_student: Callable[..., UserView], login: Login) -> None:
    """A cookie copied before logging out (a shared computer, a stolen cookie) no longer logs anyone in."""
    make_student("c1", "alice")
    login(client, "alice")
    cookie = client.get_cookie("labkit_session")
    assert cookie is not None and client.get("/my/").status_code == 200
    thief = app.test_client()
    thief.set_cookie("labkit_session", cookie.value)
    assert thief.get("/my/").status_code == 200  # the copy works while the session is open
    other = app.test_client()  # the same user in another browser stays logged in
    login(other, "alice")
    out = client.post("/logout", data={"csrf_token": csrf_token(client, "/my/")})
    assert out.status_code == 302 and out.headers["Location"] == "/login"
    replay = app.test_client()
    replay.set_cookie("labkit_session", cookie.value)
    answer = replay.get("/my/")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/login?next=/my/")
    assert thief.get("/my/").status_code == 302
    assert other.get("/my/").status_code == 200


def test_a_user_changes_their_own_password(app: Flask, client: FlaskClient, make_student: Callable[..., UserView],
                                           login: Login) -> None:
    """The account itself may change its password (the only one besides an admin, for an account two instructors'
    courses share): the current password is needed, and the user's other sessions end."""
    make_student("c1", "alice")
    assert client.get("/password").headers["Location"].startswith("/login?next=/password")
    login(client, "alice")
    other = app.test_client()
    login(other, "alice")
    token = csrf_token(client, "/password")
    wrong = client.post("/password", data={"current": "not it at all", "password": "a new password",
                                           "confirm": "a new password", "csrf_token": token})
    assert wrong.status_code == 400 and "The current password is wrong." in wrong.get_data(as_text=True)
    done = client.post("/password", data={"current": PASSWORD, "password": "a new password",
                                          "confirm": "a new password", "csrf_token": token})
    assert done.status_code == 302 and done.headers["Location"] == "/my/"
    assert client.get("/my/").status_code == 200  # this browser stays logged in
    assert other.get("/my/").status_code == 302  # the other one is logged out
    accounts = state(app).accounts("test")
    assert accounts.verify("alice", "a new password") is not None and accounts.verify("alice", PASSWORD) is None
