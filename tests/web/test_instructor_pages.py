"""The instructor dashboard's pages and their rights: an instructor sees only their own courses; another instructor,
a student and a stranger get 404 (or the login page) on every URL. Test client, CSRF on, no guest booted."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from labkit.services.courses import Courses

from .conftest import csrf_token, state


@dataclass
class Teaching:
    """Course c1 (owned by teacher: alice and bob, provisioned, not started) and c2 (owned by other: carol)."""

    app: Flask
    teacher: FlaskClient
    other: FlaskClient
    student: FlaskClient
    anonymous: FlaskClient
    courses: Courses
    machines: dict[str, str]


@pytest.fixture(name="teaching")
def teaching_fixture(app: Flask, courses: Courses, make_instructor: Callable[..., object],
             make_course: Callable[..., str], make_student: Callable[..., object],
             login: Callable[..., object], tmp_path: Path) -> Teaching:
    make_instructor("teacher")
    make_instructor("other")
    make_course("c1", owner="teacher")
    make_student("c1", "alice")
    make_student("c1", "bob", password=None)
    make_student("c2", "carol", owner="other")
    courses.provision("c1")
    courses.provision("c2")
    clients = []
    for name in ("teacher", "other", "alice"):
        client = app.test_client()
        assert login(client, name).status_code == 302
        clients.append(client)
    machines = {str(m["student"]): str(m["name"]) for m in courses.status("c1") + courses.status("c2")}
    return Teaching(app, *clients, app.test_client(), courses, machines)


def page(client: FlaskClient, path: str) -> str:
    answer = client.get(path)
    assert answer.status_code == 200, (path, answer.status_code)
    return answer.get_data(as_text=True)


def c1_gets(t: Teaching) -> list[str]:
    """Every GET URL of course c1 (one machine of it, one job of it)."""
    job = state(t.app).jobs.submit("provision", "course:c1", lambda _r: {}, course_id=_course_id(t, "c1"))
    state(t.app).jobs.wait(job.id, 10)
    return ["/teach/courses/c1", "/teach/courses/c1/grid", "/teach/courses/c1/grid.json",
            "/teach/courses/c1/grades", "/teach/courses/c1/grades.csv", "/teach/courses/c1/audit",
            f"/teach/courses/c1/jobs/{job.id}", f"/teach/courses/c1/machines/{t.machines['alice']}/console"]


C1_POSTS = ["/teach/courses/c1/roster", "/teach/courses/c1/links", "/teach/courses/c1/provision",
            "/teach/courses/c1/start-all", "/teach/courses/c1/stop-all", "/teach/courses/c1/reset-student",
            "/teach/courses/c1/session/begin", "/teach/courses/c1/session/end", "/teach/courses/c1/grade"]


def _course_id(t: Teaching, name: str) -> int:
    user = state(t.app).accounts("test").get("teacher" if name == "c1" else "other")
    found = state(t.app).accounts("test").owned_course(user, name)
    assert found is not None
    return found.id


def test_my_courses_lists_only_mine(teaching: Teaching) -> None:
    html = page(teaching.teacher, "/teach/")
    assert 'data-course="c1"' in html and 'data-course="c2"' not in html
    assert "intro-shell" in html and "0 of 2" in html
    other = page(teaching.other, "/teach/")
    assert 'data-course="c2"' in other and 'data-course="c1"' not in other


def test_every_page_of_my_course_answers(teaching: Teaching) -> None:
    for path in c1_gets(teaching):
        assert teaching.teacher.get(path).status_code == 200, path
    course = page(teaching.teacher, "/teach/courses/c1")
    for action in ("provision", "start-all", "stop-all", "session-begin", "session-end"):
        assert f'data-action="{action}"' in course
    assert 'data-reset-policy="each-session"' in course or 'data-reset-policy="persist"' in course


def test_another_instructor_gets_404_everywhere(teaching: Teaching) -> None:
    token = csrf_token(teaching.other, "/teach/")
    for path in c1_gets(teaching):
        assert teaching.other.get(path).status_code == 404, path
    for path in C1_POSTS:
        assert teaching.other.post(path, data={"csrf_token": token, "student": "alice", "confirm": "yes"}) \
            .status_code == 404, path
    # a machine of c2 through my own course's URL is not found either
    carol = teaching.machines["carol"]
    assert teaching.teacher.get(f"/teach/courses/c1/machines/{carol}/console").status_code == 404
    assert teaching.other.get(f"/teach/courses/c2/machines/{carol}/console").status_code == 200
    # a job of c1 seen through c2's URL: 404
    job_url = next(p for p in c1_gets(teaching) if "/jobs/" in p)
    assert teaching.other.get(job_url.replace("/c1/", "/c2/")).status_code == 404
    assert teaching.teacher.get("/teach/courses/nope").status_code == 404
    assert not state(teaching.app).job_queries.list(course_id=_course_id(teaching, "c1"), active=True)


def test_students_and_strangers_get_nothing(teaching: Teaching) -> None:
    token = csrf_token(teaching.student, "/my/")
    assert teaching.student.get("/teach/").status_code == 404
    for path in c1_gets(teaching):
        assert teaching.student.get(path).status_code == 404, path
        assert teaching.anonymous.get(path).headers["Location"].startswith("/login?next=")
    for path in C1_POSTS:
        assert teaching.student.post(path, data={"csrf_token": token}).status_code == 404, path


def test_grid_shows_students_machines_and_links_to_read_only_consoles(teaching: Teaching) -> None:
    html = page(teaching.teacher, "/teach/courses/c1/grid")
    assert 'id="grid"' in html
    alice = teaching.machines["alice"]
    cell = re.search(rf'<td data-student="alice" data-machine="{alice}"[^>]*>(.*?)</td>', html, re.S)
    assert cell and 'class="state state-stopped"' in cell.group(1)
    assert f"/teach/courses/c1/machines/{alice}/console" in cell.group(1)
    data = teaching.teacher.get("/teach/courses/c1/grid.json").get_json()
    assert [s["id"] for s in data["students"]] == ["alice", "bob"]
    assert {c["name"]: c["state"] for c in data["cells"]} == {alice: "stopped", teaching.machines["bob"]: "stopped"}
    assert data["running"] == 0 and data["jobs"] == []
    console = page(teaching.teacher, f"/teach/courses/c1/machines/{alice}/console")
    assert 'data-read-only="true"' in console and f'data-machine="{alice}"' in console


def test_audit_log_shows_the_course_events_only(teaching: Teaching) -> None:
    html = page(teaching.teacher, "/teach/courses/c1/audit")
    assert "roster-import" in html and "provision" in html and "links-create" in html
    assert teaching.machines["carol"] not in html and "carol" not in html
    # paging back: ?before=<id>
    first = re.search(r'data-event="(\d+)"', html)
    assert first
    older = page(teaching.teacher, f"/teach/courses/c1/audit?before={first.group(1)}")
    assert f'data-event="{first.group(1)}"' not in older


def test_grades_page_without_grades(teaching: Teaching) -> None:
    html = page(teaching.teacher, "/teach/courses/c1/grades")
    assert 'id="grades-table"' in html and 'id="grades-csv"' in html and 'data-action="grade"' in html
    assert "Nothing graded yet" in html
    csv = teaching.teacher.get("/teach/courses/c1/grades.csv")
    assert csv.headers["Content-Disposition"] == 'attachment; filename="grades-c1.csv"'
    assert csv.data.startswith("\ufeffstudent,name,email,archived,intro-shell,intro-shell max,intro-shell status,"
                               "total,max\r\n".encode())
    assert b"alice,Student alice,alice@example.org,,,,best: never graded,0,0\r\n" in csv.data
