"""Inputs that once answered HTTP 500 with a traceback in the log (issue 11, section 6): each now gets a clear 4xx or a
safe redirect, and nothing is changed.

The app runs with TESTING on, so an unexpected exception is raised into the test instead of becoming a 500 page.
"""

from __future__ import annotations

import io

from flask.testing import FlaskClient
from sqlalchemy import select

from labkit.services.models import Student

from .conftest import csrf_token, state
from .test_instructor_pages import Teaching, teaching_fixture  # noqa: F401  (the shared fixture)

#: one past the largest id a database row can have (SQLite integers are signed 64-bit)
HUGE = 2**63


def roster_rows(t: Teaching) -> list[tuple[str, str, str]]:
    with state(t.app).db.transaction() as session:
        return [(s.sid, s.name, s.email) for s in session.scalars(select(Student).order_by(Student.id))]


def long_field_roster() -> bytes:
    """A roster whose second student's name is 200 KiB: over the csv module's 128 KiB field limit."""
    return b"id,name,email\nalice,Alice,a@example.org\nzed," + b"Z" * (200 << 10) + b",z@example.org\n"


def test_a_roster_field_over_128_kib_is_a_roster_error_on_the_page_and_the_api(teaching: Teaching) -> None:
    before = roster_rows(teaching)
    token = csrf_token(teaching.teacher, "/teach/courses/c1")
    answer = teaching.teacher.post("/teach/courses/c1/roster", content_type="multipart/form-data",
                                   data={"csrf_token": token, "roster": (io.BytesIO(long_field_roster()), "big.csv")})
    html = answer.get_data(as_text=True)
    assert answer.status_code == 400 and "big.csv" in html and "cannot be read as CSV" in html
    assert "Z" * 100 not in html  # the field is not echoed back

    accounts = state(teaching.app).accounts("test")
    secret = accounts.create_api_token("teacher", "t")[1]
    answer = teaching.anonymous.post("/api/v1/courses/c1/roster", data=long_field_roster(), content_type="text/csv",
                                     headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 400
    assert answer.get_json()["error"].startswith("roster.csv:3: cannot be read as CSV")
    assert roster_rows(teaching) == before


def test_json_nested_100000_deep_is_a_400(teaching: Teaching) -> None:
    secret = state(teaching.app).accounts("test").create_api_token("teacher", "t")[1]
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"student": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        answer = teaching.anonymous.post("/api/v1/courses/c1/start", data=body, content_type="application/json",
                                         headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code == 400 and "nested too deeply" in answer.get_json()["error"]


def test_ids_of_2_63_and_more_are_not_found(teaching: Teaching) -> None:
    secret = state(teaching.app).accounts("test").create_api_token("teacher", "t")[1]
    for number in (HUGE, HUGE * 10, 10**40):
        for client in (teaching.teacher, teaching.student):
            answer = client.get(f"/jobs/{number}")
            assert answer.status_code == 404 and answer.get_json()["error"]
        assert teaching.teacher.get(f"/teach/courses/c1/jobs/{number}").status_code == 404
        answer = teaching.anonymous.get(f"/api/v1/jobs/{number}", headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code == 404
        # a page number past every event is the newest page, as if none was given
        for query in (f"before={number}", f"before=-{number}", "before=0", "before=x"):
            answer = teaching.teacher.get(f"/teach/courses/c1/audit?{query}")
            assert answer.status_code == 200, query
        for page in ("/teach/courses/c1", "/teach/courses/c1/grid", "/teach/courses/c1/grades"):
            assert teaching.teacher.get(f"{page}?job={number}").status_code == 200
    # the largest real id still reaches the lookup (and is not found)
    assert teaching.teacher.get(f"/jobs/{HUGE - 1}").status_code == 404


def test_cr_lf_in_the_login_next_redirects_home_without_a_header(teaching: Teaching, login: object) -> None:
    hostile = ["/my\r\nSet-Cookie: evil=1", "/my\rSet-Cookie: evil=1", "/\t/evil.example", "/\n/evil.example",
               "/my\x00", "/my\x7f", "/ /evil.example"]
    for target in hostile:
        # logged in: GET /login?next=... redirects at once
        answer = teaching.teacher.get("/login", query_string={"next": target})
        assert answer.status_code == 302, target
        assert answer.headers["Location"] == "/teach/", (target, answer.headers["Location"])
        assert "evil" not in str(answer.headers)
        # logging in with that next
        fresh: FlaskClient = teaching.app.test_client()
        token = csrf_token(fresh)
        answer = fresh.post("/login", data={"username": "alice", "password": "correct horse battery",
                                            "csrf_token": token, "next": target})
        assert answer.status_code == 302 and answer.headers["Location"] == "/my/", (target, answer.headers)
        assert "evil" not in str(answer.headers)
    # percent-encoded, CR/LF are only characters of a path on this site: they stay encoded, no header is made
    answer = teaching.teacher.get("/login?next=/my%250d%250aSet-Cookie:%2520evil=1")
    assert answer.headers["Location"] == "/my%0d%0aSet-Cookie:%20evil=1"
    assert all("evil" not in value for name, value in answer.headers if name != "Location")
    # a plain path on the site is still followed
    assert teaching.teacher.get("/login?next=/teach/courses/c1").headers["Location"] == "/teach/courses/c1"
