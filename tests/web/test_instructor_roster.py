"""Roster upload and student links on the course page: the import report, bad rosters reported by line with nothing
changed, huge uploads refused with 413, links shown once or downloaded as CSV."""

from __future__ import annotations

import io
import re

from flask.testing import FlaskClient

from labkit.services.models import Student

from .conftest import PASSWORD, csrf_token, state
from .test_instructor_pages import Teaching, teaching_fixture  # noqa: F401  (the shared fixture)


def upload(client: FlaskClient, data: bytes, name: str = "class.csv", token: str | None = None) -> object:
    token = token if token is not None else csrf_token(client, "/teach/courses/c1")
    return client.post("/teach/courses/c1/roster", data={"csrf_token": token, "roster": (io.BytesIO(data), name)},
                       content_type="multipart/form-data")


def roster_rows(t: Teaching) -> list[tuple[str, str, str, bool]]:
    from sqlalchemy import select

    with state(t.app).db.transaction() as session:
        return [(s.sid, s.name, s.email, s.archived_at is not None)
                for s in session.scalars(select(Student).order_by(Student.course_id, Student.sid))]


def test_a_good_roster_shows_its_import_report(teaching: Teaching) -> None:
    answer = upload(teaching.teacher, b"id,name,email\nalice,Alice L,alice@example.org\ndave,Dave,dave@example.org\n")
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    report = re.search(r'<div class="roster-report".*?</div>', html, re.S)
    assert report and "Imported class.csv" in report.group(0)
    assert "1 added: dave" in report.group(0) and "1 updated: alice" in report.group(0)
    assert "1 archived" in report.group(0) and "bob" in report.group(0)
    assert ("dave", "Dave", "dave@example.org", False) in roster_rows(teaching)


def test_a_bad_roster_lists_every_line_and_changes_nothing(teaching: Teaching) -> None:
    before = roster_rows(teaching)
    answer = upload(teaching.teacher, b"id,name,email\nalice,A,a@x.org\n../evil,E,e@x.org\nalice,B,b@x.org\n"
                                      b"zed,Z\n")
    assert answer.status_code == 400
    html = answer.get_data(as_text=True)
    errors = re.search(r'<div class="roster-errors".*?</div>', html, re.S)
    assert errors and "nothing changed" in errors.group(0)
    lines = re.findall(r"<strong>line (\d+)</strong>", errors.group(0))
    assert lines == ["3", "4", "5"]
    assert "already on line 2" in errors.group(0) and "expected 3 columns" in errors.group(0)
    assert "/tmp" not in html and "lkroster" not in html  # the temporary file's path is not shown
    assert roster_rows(teaching) == before


def test_bad_encoding_is_reported_by_line(teaching: Teaching) -> None:
    before = roster_rows(teaching)
    answer = upload(teaching.teacher, b"id,name,email\nalice,A,a@x.org\nbob,B\xe9b\xff,b@x.org\n")
    assert answer.status_code == 400
    html = answer.get_data(as_text=True)
    assert "<strong>line 3</strong>" in html and "not UTF-8" in html
    assert roster_rows(teaching) == before


def test_a_roster_without_its_header_line_is_refused(teaching: Teaching) -> None:
    before = roster_rows(teaching)
    answer = upload(teaching.teacher, b"alice,Alice,a@x.org\nbob,Bob,b@x.org\n")
    assert answer.status_code == 400
    html = answer.get_data(as_text=True)
    assert "<strong>line 1</strong>" in html and "the first line must be the header id,name,email" in html
    assert roster_rows(teaching) == before


def test_an_empty_form_and_a_missing_file(teaching: Teaching) -> None:
    token = csrf_token(teaching.teacher, "/teach/courses/c1")
    answer = teaching.teacher.post("/teach/courses/c1/roster", data={"csrf_token": token})
    assert answer.status_code == 302
    assert "Choose a roster file" in teaching.teacher.get(answer.headers["Location"]).get_data(as_text=True)
    assert upload(teaching.teacher, b"").status_code == 400  # an empty file: "the roster has no students"


def test_a_huge_upload_is_refused_with_413(teaching: Teaching) -> None:
    before = roster_rows(teaching)
    answer = upload(teaching.teacher, b"a,b,c@d\n" * 200_000)
    assert answer.status_code == 413
    html = answer.get_data(as_text=True)
    assert "too large: the limit is 1 MiB. A roster needs one short line" in html
    assert roster_rows(teaching) == before


def test_csrf_missing_or_forged_is_refused(teaching: Teaching) -> None:
    before = roster_rows(teaching)
    data = b"id,name,email\nzoe,Z,z@x.org\n"
    for token in ("", "forged-token"):
        answer = upload(teaching.teacher, data, token=token)
        assert answer.status_code == 400 and "The form was refused" in answer.get_data(as_text=True)
    assert roster_rows(teaching) == before


def test_links_are_shown_once_and_work(teaching: Teaching) -> None:
    token = csrf_token(teaching.teacher, "/teach/courses/c1")
    answer = teaching.teacher.post("/teach/courses/c1/links", data={"csrf_token": token, "format": "page"})
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    html = answer.get_data(as_text=True)
    urls = re.findall(r'<code class="link-url">([^<]+)</code>', html)
    assert len(urls) == 1 and "/set-password/" in urls[0]  # only bob cannot log in yet (alice has a password)
    assert 'data-student="bob"' in html and 'id="links-csv"' in html
    path = urls[0].split("://", 1)[1].split("/", 1)[1]
    assert teaching.anonymous.get("/" + path).status_code == 200
    # the CSV form: a new link for alice (a reset), as a download with the CLI's columns
    csv = teaching.teacher.post("/teach/courses/c1/links", data={"csrf_token": token, "format": "csv",
                                                                 "student": "alice"})
    assert csv.headers["Content-Disposition"] == 'attachment; filename="links-c1.csv"'
    text = csv.get_data(as_text=True)
    assert text.startswith("id,name,email,url,expires\r\nalice,Student alice,alice@example.org,http")
    # the old link of bob still works, alice's password too until she uses her new link
    assert state(teaching.app).accounts("test").verify("alice", PASSWORD) is not None


def test_links_for_an_unknown_student_change_nothing(teaching: Teaching) -> None:
    token = csrf_token(teaching.teacher, "/teach/courses/c1")
    answer = teaching.teacher.post("/teach/courses/c1/links", data={"csrf_token": token, "student": "carol"})
    assert answer.status_code == 302
    assert "no active student carol" in teaching.teacher.get(answer.headers["Location"]).get_data(as_text=True)
