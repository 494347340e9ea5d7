"""Issue 11 §3: an instructor controls only their own students' accounts.

The attack: the instructor of course B lists a student id of course A on B's roster, asks for that student's one-time
link and sets the password, and so owns the student's account in course A. Every path (web, API, CLI) must refuse it
with a clear message, while a student in two courses of one instructor, or one an admin enrols, keeps working.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from labkit.cli import main
from labkit.config import Settings
from labkit.services.accounts import UserView
from labkit.services.memberships import Memberships

from .conftest import PASSWORD, csrf_token, state

ROSTER = b"id,name,email\nalice,Alice,alice@example.org\nzed,Zed,zed@example.org\n"


@pytest.fixture
def two_courses(app: Flask, make_instructor: Callable[..., UserView], make_course: Callable[..., str],
                make_student: Callable[..., UserView]) -> None:
    """Course A of instructor ann with alice (who set her password); course B of instructor bert, empty."""
    make_instructor("ann")
    make_instructor("bert")
    make_course("ca", owner="ann")
    make_course("cb", owner="bert")
    make_student("ca", "alice")


def _web_login(client: FlaskClient, username: str) -> None:
    answer = client.post("/login", data={"username": username, "password": PASSWORD,
                                         "csrf_token": csrf_token(client)})
    assert answer.status_code == 302, answer.get_data(as_text=True)


def _upload(client: FlaskClient, course: str, data: bytes = ROSTER) -> str:
    answer = client.post(f"/teach/courses/{course}/roster", content_type="multipart/form-data",
                         data={"roster": (io.BytesIO(data), "roster.csv"),
                               "csrf_token": csrf_token(client, f"/teach/courses/{course}")})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_data(as_text=True)


def _links(client: FlaskClient, course: str, student: str = "") -> str:
    answer = client.post(f"/teach/courses/{course}/links", follow_redirects=True,
                         data={"student": student, "csrf_token": csrf_token(client, f"/teach/courses/{course}")})
    return answer.get_data(as_text=True)


def _courses_of(app: Flask, username: str) -> list[str]:
    user = state(app).accounts("test").get(username)
    return [m.course for m in Memberships(state(app).db).of(user)]


def _cli(settings: Settings, *args: str, input: str | None = None) -> Any:
    from conftest import settings_env

    return CliRunner().invoke(main, list(args), env={**settings_env(settings), "LABKIT_ACTOR": "admin"},
                              input=input)


@pytest.mark.usefixtures("two_courses")
def test_the_web_refuses_another_instructors_student(app: Flask, client: FlaskClient) -> None:
    _web_login(client, "bert")
    page = _upload(client, "cb")  # the roster itself is accepted: alice is listed, but held
    assert "held" in page and "alice" in page
    refused = _links(client, "cb", "alice")
    assert "No links were made: no link for alice: the account &#39;alice&#39; is also enrolled in another " \
           "instructor&#39;s course" in refused and "ca" not in refused.split("No links were made")[1].split("</p>")[0]
    assert "/set-password/" not in refused
    bulk = _links(client, "cb")  # the other students get theirs; alice is named as left out
    assert "No link for alice" in bulk and bulk.count("/set-password/") == 1
    accounts = state(app).accounts("test")
    assert accounts.verify("alice", PASSWORD) is not None  # her password still works
    assert _courses_of(app, "alice") == ["ca"]  # and course B has no hold on her account
    assert [s.sid for s in accounts.held("cb")] == ["alice"]


@pytest.mark.usefixtures("two_courses")
def test_the_api_roster_import_holds_another_instructors_student(app: Flask, client: FlaskClient) -> None:
    token = state(app).accounts("test").create_api_token("bert", "t")[1]
    answer = client.post("/api/v1/courses/cb/roster", data=ROSTER, content_type="text/csv",
                         headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert answer.get_json()["added"] == ["alice", "zed"] and answer.get_json()["held"] == ["alice"]
    assert _courses_of(app, "alice") == ["ca"]


@pytest.mark.usefixtures("two_courses")
def test_the_cli_refuses_course_links_for_another_instructors_student(app: Flask, web_settings: Settings,
                                                                     tmp_path: Path) -> None:
    roster = tmp_path / "b.csv"
    roster.write_bytes(ROSTER)
    imported = _cli(web_settings, "course", "roster", "cb", str(roster))
    assert imported.exit_code == 0 and "held: 1 (alice)" in imported.output
    refused = _cli(web_settings, "course", "links", "cb", "--student", "alice")
    assert refused.exit_code == 1
    assert "the account 'alice' is also enrolled in another instructor's course" in refused.output
    assert "labkit user link alice" in refused.output and "Traceback" not in refused.output
    bulk = _cli(web_settings, "course", "links", "cb")
    assert bulk.exit_code == 0 and "zed" in bulk.output and "no link for alice" in bulk.output
    assert state(app).accounts("test").verify("alice", PASSWORD) is not None


@pytest.mark.usefixtures("two_courses")
def test_the_first_course_to_enrol_an_account_keeps_it(app: Flask, client: FlaskClient) -> None:
    """The attack the other way round: bert enrols 'newbie' first, so ann's roster line stays held (bert, who knows
    the password he set, gets nothing of course A)."""
    accounts = state(app).accounts("test")
    _web_login(client, "bert")
    _upload(client, "cb", b"id,name,email\nnewbie,N,n@example.org\n")
    _links(client, "cb")
    ann = app.test_client()
    _web_login(ann, "ann")
    assert "held" in _upload(ann, "ca", b"id,name,email\nalice,A,a@example.org\nnewbie,N,n@example.org\n")
    assert "No links were made: no link for newbie" in _links(ann, "ca", "newbie")
    assert _courses_of(app, "newbie") == ["cb"]
    assert [s.sid for s in accounts.held("ca")] == ["newbie"]


def test_one_instructors_student_in_two_courses_and_an_admins_enrolment(
        app: Flask, web_settings: Settings, make_instructor: Callable[..., UserView],
        make_course: Callable[..., str], make_student: Callable[..., UserView]) -> None:
    make_instructor("ann")
    make_instructor("bert")
    for course, owner in (("ca", "ann"), ("ca2", "ann"), ("cb", "bert")):
        make_course(course, owner=owner)
    make_student("ca", "alice")
    # the same instructor's second course: the roster binds her account, and ann may still reset it
    client = app.test_client()
    _web_login(client, "ann")
    report = _upload(client, "ca2", b"id,name,email\nalice,Alice,a@example.org\n")
    assert "0 held" in report
    assert "/set-password/" not in _links(client, "ca2")  # she can log in already: no link, but now enrolled
    assert _courses_of(app, "alice") == ["ca", "ca2"]
    assert _links(client, "ca2", "alice").count("/set-password/") == 1
    # another instructor's course: only an admin enrols her, and then no instructor resets her account
    bert = app.test_client()
    _web_login(bert, "bert")
    _upload(bert, "cb", b"id,name,email\nalice,Alice,a@example.org\n")
    enrolled = _cli(web_settings, "user", "enrol", "alice", "cb")
    assert enrolled.exit_code == 0 and "enrolled in ca, ca2, cb" in enrolled.output
    assert _courses_of(app, "alice") == ["ca", "ca2", "cb"]
    for who, course in ((client, "ca"), (bert, "cb")):
        assert "No links were made: no link for alice" in _links(who, course, "alice")
    admin = _cli(web_settings, "user", "link", "alice")
    assert admin.exit_code == 0 and "/set-password/" in admin.output
    shown = _cli(web_settings, "user", "show", "alice")
    assert "owner bert" in shown.output and "only an admin issues its links" in shown.output


def _audit_rows(client: FlaskClient, course: str) -> list[tuple[str, str]]:
    """(action, target) of every row of the course's audit page."""
    import re

    html = client.get(f"/teach/courses/{course}/audit").get_data(as_text=True)
    rows = re.findall(r"<tr data-event=\"\d+\">(.*?)</tr>", html, re.S)
    return [tuple(re.findall(r"<td>(.*?)</td>", row, re.S)[2:4]) for row in rows]  # type: ignore[misc]


@pytest.mark.usefixtures("two_courses")
def test_a_course_audit_log_leaves_out_other_courses_account_events(app: Flask, web_settings: Settings) -> None:
    """alice's account events (made in course ca, or by an admin) are not course cb's, even with alice on its
    roster; ca sees them while alice is in ca alone, and no course does once an admin shares her account."""
    ann, bert = app.test_client(), app.test_client()
    _web_login(ann, "ann")
    _web_login(bert, "bert")
    _upload(bert, "cb")
    _links(bert, "cb")
    assert _cli(web_settings, "user", "passwd", "alice", "--password-stdin", input=PASSWORD + "\n").exit_code == 0
    ann_rows = _audit_rows(ann, "ca")
    assert ("link-use", "alice") in ann_rows and ("user-passwd", "alice") in ann_rows
    bert_rows = _audit_rows(bert, "cb")
    assert ("roster-import", "cb") in bert_rows and ("user-create", "zed") in bert_rows
    assert not [row for row in bert_rows if row[1] == "alice"]
    assert _cli(web_settings, "user", "enrol", "alice", "cb").exit_code == 0
    for client, course in ((ann, "ca"), (bert, "cb")):
        assert not [row for row in _audit_rows(client, course) if row[1] == "alice"]
