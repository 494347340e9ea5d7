"""The JSON API with the Flask test client: tokens, every route × every rights rule, bad input, the OpenAPI document.

Two courses over the real intro-shell lab, provisioned (overlays and seed disks made, nothing booted): c1 of
"teacher" with students alice and bob, c2 of "other" with carol. The courses' memory budget is 1 MB, so a start is
always refused by admission and no test here boots a guest (tests/web/test_api_guest.py does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from sqlalchemy import func, select

from labkit.services.accounts import UserView
from labkit.services.courses import Courses
from labkit.services.models import Event, Job

from .conftest import LABS, state

WHO = ("teacher", "other", "alice", "bob", "carol")


@dataclass
class World:
    app: Flask
    client: FlaskClient
    tokens: dict[str, str] = field(default_factory=dict)
    machines: dict[str, str] = field(default_factory=dict)

    def call(self, who: str | None, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        if body is not None:
            kwargs["json"] = body
        return self.client.open(path, method=method, headers=headers, **kwargs)

    def wait(self, response: Any) -> dict[str, Any]:
        """The finished job of a 202 answer."""
        assert response.status_code == 202, response.get_json()
        assert response.headers["Location"] == f"/api/v1/jobs/{response.get_json()['id']}"
        return state(self.app).jobs.wait(response.get_json()["id"], timeout=120).as_dict()


@pytest.fixture
def world(app: Flask, courses: Courses, make_instructor: Callable[..., UserView],
          make_student: Callable[..., UserView]) -> Iterator[World]:
    accounts = state(app).accounts("test")
    for name in ("teacher", "other"):
        make_instructor(name)
    for course, owner in (("c1", "teacher"), ("c2", "other")):
        courses.create(course, [LABS / "intro-shell"], memory_budget_mb=1)
        accounts.set_course_owner(course, owner)
    for course, sid in (("c1", "alice"), ("c1", "bob"), ("c2", "carol")):
        make_student(course, sid)
    courses.provision("c1")
    courses.provision("c2")
    world = World(app, app.test_client())
    for who in WHO:
        world.tokens[who] = accounts.create_api_token(who, "t")[1]
        user = accounts.get(who)
        if user.is_student:
            world.machines[who] = accounts.machines_of(user)[0].name
    accounts.create_api_token("alice", "old")
    world.tokens["revoked"] = accounts.create_api_token("alice", "gone")[1]
    accounts.revoke_api_token("alice", "gone")
    state(app).machines("test").snapshot(world.machines["alice"], "s1")
    yield world


# ---- authentication ----------------------------------------------------------------------------------------------
def test_no_token_bad_tokens_and_cookies_get_401(world: World, login: Callable[..., Any]) -> None:
    answer = world.call(None, "GET", "/api/v1/me")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert answer.get_json() == {"error": answer.get_json()["error"], "status": 401}
    assert "labkit user token create" in answer.get_json()["error"]
    for header in ("Basic YWxpY2U6eA==", "Bearer", "Bearer lk_nothing", world.tokens["alice"]):
        answer = world.call(None, "GET", "/api/v1/me", headers={"Authorization": header})
        assert answer.status_code == 401, header
        assert "Bearer" in answer.headers["WWW-Authenticate"]
    revoked = world.call("revoked", "GET", "/api/v1/me")
    assert revoked.status_code == 401 and 'error="invalid_token"' in revoked.headers["WWW-Authenticate"]
    answer = world.call("alice", "GET", "/api/v1/me")
    assert answer.status_code == 200 and "Set-Cookie" not in answer.headers  # the API makes no sessions
    # a logged-in browser session is no credential here
    assert login(world.client, "alice").status_code == 302
    assert world.call(None, "GET", "/api/v1/me").status_code == 401
    assert world.call(None, "POST", "/api/v1/machines/x/start").status_code == 401


def test_a_disabled_user_token_stops_working(world: World) -> None:
    assert world.call("bob", "GET", "/api/v1/me").status_code == 200
    state(world.app).accounts("test").disable("bob")
    assert world.call("bob", "GET", "/api/v1/me").status_code == 401


def test_me_and_courses(world: World) -> None:
    me = world.call("alice", "GET", "/api/v1/me").get_json()
    assert me["username"] == "alice" and me["role"] == "student"
    assert me["courses"] == [{"name": "c1", "role": "student", "student": "alice", "labs": ["intro-shell"]}]
    assert [c["name"] for c in world.call("teacher", "GET", "/api/v1/courses").get_json()] == ["c1"]
    assert [c["name"] for c in world.call("carol", "GET", "/api/v1/courses").get_json()] == ["c2"]
    teacher = world.call("teacher", "GET", "/api/v1/courses/c1").get_json()
    assert [s["id"] for s in teacher["students"]] == ["alice", "bob"] and teacher["session_open"] is False
    assert teacher["labs"] == ["intro-shell"] and teacher["lab_details"][0]["id"] == "intro-shell"
    assert all("path" not in lab for lab in teacher["lab_details"])
    student = world.call("alice", "GET", "/api/v1/courses/c1").get_json()
    assert "students" not in student and student["student"] == "alice"
    rows = world.call("teacher", "GET", "/api/v1/courses/c1/status").get_json()
    assert {r["student"] for r in rows} == {"alice", "bob"} and {r["state"] for r in rows} == {"stopped"}
    assert [r["student"] for r in world.call("alice", "GET", "/api/v1/courses/c1/status").get_json()] == ["alice"]


# ---- every route × every rights rule -----------------------------------------------------------------------------
# (method, path, body, who may: "member" = the course's instructor and students, "owner" = its instructor only,
#  "machine"/"self" = the student and their instructor, "student" = the student only, "any" = any token)
ROUTES: list[tuple[str, str, Any, str]] = [
    ("GET", "/api/v1/me", None, "any"),
    ("GET", "/api/v1/courses", None, "any"),
    ("GET", "/api/v1/machines", None, "any"),
    ("GET", "/api/v1/courses/c1", None, "member"),
    ("GET", "/api/v1/courses/c1/status", None, "member"),
    ("POST", "/api/v1/courses/c1/start", {}, "owner"),
    ("POST", "/api/v1/courses/c1/stop", {}, "owner"),
    ("POST", "/api/v1/courses/c1/provision", {}, "owner"),
    ("POST", "/api/v1/courses/c1/roster", None, "owner"),
    ("POST", "/api/v1/courses/c1/sessions/begin", {}, "owner"),
    ("POST", "/api/v1/courses/c1/sessions/end", {}, "owner"),
    ("GET", "/api/v1/courses/c1/grades", None, "owner"),
    ("GET", "/api/v1/courses/c1/grades.csv", None, "owner"),
    ("POST", "/api/v1/courses/c1/grade", {}, "owner"),
    ("GET", "/api/v1/courses/c1/students/alice/grades", None, "self"),
    ("GET", "/api/v1/courses/c1/students/alice/submissions", None, "self"),
    ("POST", "/api/v1/courses/c1/students/alice/submit", {}, "self"),
    ("POST", "/api/v1/courses/c1/students/alice/extend", {"lab": "intro-shell", "minutes": 5}, "owner"),
    ("POST", "/api/v1/labs/c1/intro-shell/self-check", {}, "student"),
    ("POST", "/api/v1/labs/c1/intro-shell/submit", {}, "student"),
    ("GET", "/api/v1/machines/{alice}", None, "machine"),
    ("POST", "/api/v1/machines/{alice}/start", {}, "machine"),
    ("POST", "/api/v1/machines/{alice}/stop", {}, "machine"),
    ("POST", "/api/v1/machines/{alice}/reset", {"confirm": True}, "machine"),
    ("GET", "/api/v1/machines/{alice}/snapshots", None, "machine"),
    ("POST", "/api/v1/machines/{alice}/snapshots", {"name": "s2"}, "machine"),
    ("POST", "/api/v1/machines/{alice}/snapshots/s1/restore", {}, "machine"),
    ("DELETE", "/api/v1/machines/{alice}/snapshots/s1", None, "machine"),
    ("GET", "/api/v1/jobs/{job}", None, "machine"),
]

#: what each caller gets on a route of each kind, when it is not theirs to use
REFUSED: dict[str, dict[str, int]] = {
    "any": {},
    "member": {"other": 404, "carol": 404},
    "owner": {"other": 404, "carol": 404, "alice": 403, "bob": 403},
    "self": {"other": 404, "carol": 404, "bob": 404},
    "student": {"other": 404, "carol": 404, "teacher": 403},
    "machine": {"other": 404, "carol": 404, "bob": 404},
}


def _count(app: Flask, model: Any) -> int:
    with state(app).db.transaction() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_every_route_refuses_what_is_not_the_callers(world: World) -> None:
    """Other students, other instructors, the other role, no token and a revoked token: nothing changes."""
    job = world.call("alice", "POST", f"/api/v1/machines/{world.machines['alice']}/reset", {"confirm": True})
    world.wait(job)
    values = {"alice": world.machines["alice"], "job": job.get_json()["id"]}
    events, jobs = _count(world.app, Event), _count(world.app, Job)
    for method, template, body, kind in ROUTES:
        path = template.format(**values)
        for who in (None, "revoked"):
            assert world.call(who, method, path, body).status_code == 401, (who, method, path)
        for who, status in REFUSED[kind].items():
            answer = world.call(who, method, path, body)
            assert answer.status_code == status, (who, method, path, answer.get_json())
            assert answer.get_json()["status"] == status
            if status == 404:  # the same answer as for something that does not exist
                assert "of yours" in answer.get_json()["error"] or "no " in answer.get_json()["error"]
    assert (_count(world.app, Event), _count(world.app, Job)) == (events, jobs)
    missing = world.call("teacher", "GET", "/api/v1/jobs/999999").get_json()["error"]
    other = world.call("other", "GET", f"/api/v1/jobs/{values['job']}").get_json()["error"]
    assert missing.replace("999999", "N") == other.replace(str(values["job"]), "N")


def test_extra_time_for_one_student(world: World) -> None:
    path = "/api/v1/courses/c1/students/alice/extend"
    granted = world.call("teacher", "POST", path, {"lab": "intro-shell", "minutes": 30})
    assert granted.status_code == 200
    assert granted.get_json() == {"course": "c1", "student": "alice", "lab": "intro-shell", "added": 30,
                                  "extra_minutes": 30, "deadline": None}
    for body, status, words in (({"lab": "intro-shell", "minutes": 0}, 400, "from 1 to 1440"),
                                ({"lab": "intro-shell", "minutes": True}, 400, "must be an integer"),
                                ({"lab": "intro-shell"}, 400, "'minutes' is required"),
                                ({"lab": "nope", "minutes": 5}, 404, "has no lab 'nope'")):
        answer = world.call("teacher", "POST", path, body)
        assert answer.status_code == status and words in answer.get_json()["error"], answer.get_json()
    assert world.call("teacher", "POST", path.replace("alice", "zed"), {"lab": "intro-shell", "minutes": 5}) \
        .status_code == 404
    with state(world.app).db.read() as session:
        assert [e.detail for e in session.scalars(select(Event).where(Event.action == "time-extend"))] == [
            "student alice, lab intro-shell: +30 min (extra time now 30 min)"]


def test_the_rights_table_covers_every_route(app: Flask) -> None:
    described = {(method, re.sub(r"{(alice|job)}", "<x>", path)) for method, path, _, _ in ROUTES}
    routes = {(method, re.sub(r"<[^>]+>", "<x>", rule.rule).replace("/c1", "/<x>").replace("/alice", "/<x>"))
              for rule in app.url_map.iter_rules() if rule.endpoint.startswith("api.")
              for method in rule.methods - {"HEAD", "OPTIONS"} if rule.endpoint != "api.openapi"}
    normalized = {(m, p.replace("/c1", "/<x>").replace("/alice", "/<x>").replace("/intro-shell", "/<x>")
                   .replace("/s1", "/<x>")) for m, p in described}
    assert routes == normalized


# ---- machines ----------------------------------------------------------------------------------------------------
def test_machine_list_and_view(world: World) -> None:
    mine = world.call("alice", "GET", "/api/v1/machines").get_json()
    assert [m["name"] for m in mine] == [world.machines["alice"]]
    assert mine[0]["state"] == "stopped" and mine[0]["console_read_only"] is False and mine[0]["snapshots"] == ["s1"]
    class_ = world.call("teacher", "GET", "/api/v1/machines").get_json()
    assert {m["student"] for m in class_} == {"alice", "bob"} and all(m["console_read_only"] for m in class_)
    one = world.call("teacher", "GET", f"/api/v1/machines/{world.machines['bob']}").get_json()
    assert one["student"] == "bob" and one["lab"] == "intro-shell"
    assert world.call("alice", "GET", "/api/v1/machines/nothing").status_code == 404


def test_start_is_a_job_and_the_budget_refusal_its_error(world: World) -> None:
    path = f"/api/v1/machines/{world.machines['alice']}/start"
    job = world.wait(world.call("alice", "POST", path))
    assert job["kind"] == "start" and job["state"] == "failed" and "memory budget" in job["error"]
    stop = world.call("alice", "POST", f"/api/v1/machines/{world.machines['alice']}/stop")
    assert stop.status_code == 409 and "stopped" in stop.get_json()["error"]
    course = world.wait(world.call("teacher", "POST", "/api/v1/courses/c1/start", {"student": "bob"}))
    assert course["state"] == "failed" and "memory budget" in course["error"]


def test_reset_needs_confirmation(world: World) -> None:
    path = f"/api/v1/machines/{world.machines['alice']}/reset"
    for body, needle in ((None, "confirm"), ({}, "confirm"), ({"confirm": False}, "confirm"),
                         ({"confirm": "yes"}, "'confirm' must be true or false"),
                         ({"confirm": True, "force": 1}, "unknown field 'force'")):
        answer = world.call("alice", "POST", path, body)
        assert answer.status_code == 400 and needle in answer.get_json()["error"], answer.get_json()
    job = world.wait(world.call("alice", "POST", path, {"confirm": True}))
    assert job["state"] == "done" and job["result"]["state"] == "stopped"


def test_snapshots_take_list_restore_delete(world: World) -> None:
    base = f"/api/v1/machines/{world.machines['alice']}/snapshots"
    bad = world.call("alice", "POST", base, {"name": "Bad Name"})
    assert bad.status_code == 400 and "snapshot name" in bad.get_json()["error"]
    assert world.call("alice", "POST", base).status_code == 400  # name is required
    assert world.wait(world.call("alice", "POST", base, {"name": "s2"}))["state"] == "done"
    assert [s["name"] for s in world.call("alice", "GET", base).get_json()] == ["s1", "s2"]
    assert all("path" not in s for s in world.call("alice", "GET", base).get_json())
    assert world.call("alice", "POST", base, {"name": "s2"}).status_code == 409
    assert world.wait(world.call("teacher", "POST", f"{base}/s2/restore"))["state"] == "done"
    assert world.call("alice", "POST", f"{base}/nope/restore").status_code == 404
    assert world.call("alice", "DELETE", f"{base}/s2").status_code == 204
    assert world.call("alice", "DELETE", f"{base}/s2").status_code == 404


# ---- bad input ---------------------------------------------------------------------------------------------------
def test_malformed_bodies_are_400_naming_the_problem(world: World) -> None:
    path = "/api/v1/courses/c1/start"
    cases = [
        (b"{", "application/json", 400, "not valid JSON"),
        (b"[1]", "application/json", 400, "JSON object"),
        (b"\xff\xfe", "application/json", 400, "UTF-8"),
        (b'{"student": 5}', "application/json", 400, "'student' must be a string"),
        (b'{"student": ""}', "application/json", 400, "'student' is empty"),
        (b'{"studnet": "alice"}', "application/json", 400, "unknown field 'studnet'"),
        (b'{"student": "../x"}', "application/json", 400, "student id"),
        (b"student=alice", "application/x-www-form-urlencoded", 415, "application/json"),
    ]
    for data, content_type, status, needle in cases:
        answer = world.call("teacher", "POST", path, data=data, content_type=content_type)
        assert answer.status_code == status and needle in answer.get_json()["error"], (data, answer.get_json())
        assert answer.get_json()["status"] == status
    for route in ("/api/v1/labs/c1/intro-shell/submit", "/api/v1/labs/c1/intro-shell/self-check",
                  f"/api/v1/machines/{world.machines['alice']}/start"):
        answer = world.call("alice", "POST", route, data=b"true", content_type="application/json")
        assert answer.status_code == 400 and "JSON object" in answer.get_json()["error"], route
        answer = world.call("alice", "POST", route, {"x": 1})
        assert answer.status_code == 400 and "takes no fields" in answer.get_json()["error"], route
    answer = world.call("teacher", "POST", path, {"student": "zoe"})
    assert answer.status_code == 404 and "zoe" in answer.get_json()["error"]
    assert world.call("teacher", "GET", "/api/v1/courses/c1/grades?detail=maybe").status_code == 400
    assert world.call("teacher", "GET", "/api/v1/jobs/99999999999999999999999").status_code == 404


def test_roster_upload(world: World) -> None:
    path = "/api/v1/courses/c1/roster"

    def send(data: bytes, content_type: str = "text/csv") -> Any:
        return world.call("teacher", "POST", path, data=data, content_type=content_type)

    answer = send(b"id,name,email\nalice,Alice,a@example.org\nbob,Bob,b@example.org\ndan,Dan,d@example.org\n")
    assert answer.status_code == 200 and answer.get_json()["added"] == ["dan"]
    bad = send(b"id,name,email\nalice,Alice,a@example.org\nbad id,X,x@example.org\n")
    assert bad.status_code == 400 and "roster.csv:3:" in bad.get_json()["error"]
    latin = send(b"id,name,email\nalice,Alice,a@example.org\neve,\xe9ve,e@example.org\n")
    assert latin.status_code == 400 and "roster.csv:3:" in latin.get_json()["error"] and "UTF-8" in \
        latin.get_json()["error"]
    assert send(b"x" * (2 << 20)).status_code == 413
    assert send(b"id,name,email\n", "application/json").status_code == 415
    assert [s["id"] for s in world.call("teacher", "GET", "/api/v1/courses/c1").get_json()["students"]] == \
        ["alice", "bob", "dan"]


def test_provision_and_sessions(world: World) -> None:
    job = world.wait(world.call("teacher", "POST", "/api/v1/courses/c1/provision", {"upgrade": False}))
    assert job["state"] == "done" and job["result"] == {"created": 0, "kept": 2, "upgraded": 0}
    assert world.call("teacher", "POST", "/api/v1/courses/c1/sessions/end").status_code == 409
    begun = world.call("teacher", "POST", "/api/v1/courses/c1/sessions/begin")
    assert begun.status_code == 201 and begun.get_json()["course"] == "c1"
    assert world.call("teacher", "POST", "/api/v1/courses/c1/sessions/begin").status_code == 409
    ended = world.wait(world.call("teacher", "POST", "/api/v1/courses/c1/sessions/end"))
    assert ended["state"] == "done" and ended["result"]["course"] == "c1"


# ---- grading, self-check and submissions -------------------------------------------------------------------------
def test_grading_hidden_checks_stay_with_the_instructor(world: World) -> None:
    assert world.call("teacher", "POST", "/api/v1/courses/c1/grade", {"lab": "nope"}).status_code == 404
    assert world.call("teacher", "POST", "/api/v1/courses/c1/grade", {"student": "carol"}).status_code == 404
    job = world.wait(world.call("teacher", "POST", "/api/v1/courses/c1/grade", {"lab": "intro-shell"}))
    assert job["state"] == "done" and {g["student"] for g in job["result"]["grades"]} == {"alice", "bob"}
    book = world.call("teacher", "GET", "/api/v1/courses/c1/grades?detail=1").get_json()
    assert book["columns"][:4] == ["student", "name", "email", "archived"]
    assert any(c.startswith("intro-shell:") for c in book["columns"]) and len(book["rows"]) == 2
    assert book["pass_rates"] == []  # machines never started: not graded, so no rates
    csv = world.call("teacher", "GET", "/api/v1/courses/c1/grades.csv")
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    assert csv.get_data(as_text=True).lstrip("\ufeff").startswith(
        "student,name,email,archived,intro-shell,intro-shell max,intro-shell status")
    teacher = world.call("teacher", "GET", "/api/v1/courses/c1/students/alice/grades").get_json()
    checks = teacher["grades"][0]["checks"]
    assert any(c["hidden"] for c in checks) and all("evidence" in c for c in checks)
    alice = world.call("alice", "GET", "/api/v1/courses/c1/students/alice/grades").get_json()
    hidden = {c["id"] for c in checks if c["hidden"]}
    shown = alice["grades"][0]["checks"]
    assert shown and not hidden & {c["id"] for c in shown} and all("evidence" not in c for c in shown)


def test_self_check_and_submit(world: World) -> None:
    job = world.wait(world.call("alice", "POST", "/api/v1/labs/c1/intro-shell/self-check"))
    assert job["state"] == "done"
    assert all("evidence" not in c and "hidden" not in c for c in job["result"]["grades"][0]["checks"])
    assert world.call("alice", "POST", "/api/v1/labs/c1/nope/self-check").status_code == 404
    job = world.wait(world.call("alice", "POST", "/api/v1/labs/c1/intro-shell/submit"))
    assert job["state"] == "done" and job["result"]["submissions"][0]["lab"] == "intro-shell"
    job = world.wait(world.call("teacher", "POST", "/api/v1/courses/c1/students/alice/submit",
                                {"lab": "intro-shell"}))
    assert job["state"] == "done"
    # the instructor's answer holds the submission's grade: the machine never ran, so it could not be checked
    [made] = job["result"]["submissions"]
    assert made["not_checked"] == 8 and "was never started" in made["not_graded_because"]
    listed = world.call("alice", "GET", "/api/v1/courses/c1/students/alice/submissions").get_json()
    assert [s["lab"] for s in listed] == ["intro-shell", "intro-shell"]
    assert all("points" not in s for s in listed)  # a student never sees hidden checks' points
    seen = world.call("teacher", "GET", "/api/v1/courses/c1/students/alice/submissions").get_json()
    assert [(s["not_checked"], s["points"]) for s in seen] == [(8, 0), (8, 0)]


def test_jobs_are_seen_by_their_owner_the_instructor_and_the_machines_student(world: World) -> None:
    teachers = world.call("teacher", "POST", f"/api/v1/machines/{world.machines['alice']}/reset", {"confirm": True})
    world.wait(teachers)
    job_id = teachers.get_json()["id"]
    assert world.call("alice", "GET", f"/api/v1/jobs/{job_id}").status_code == 200  # her machine
    assert world.call("teacher", "GET", f"/api/v1/jobs/{job_id}").get_json()["state"] == "done"
    grade = world.call("teacher", "POST", "/api/v1/courses/c1/grade")
    world.wait(grade)
    assert world.call("alice", "GET", f"/api/v1/jobs/{grade.get_json()['id']}").status_code == 404


# ---- the OpenAPI document ----------------------------------------------------------------------------------------
def test_openapi_is_valid_public_and_complete(app: Flask, client: FlaskClient) -> None:
    answer = client.get("/api/v1/openapi.json")
    assert answer.status_code == 200
    document = json.loads(answer.get_data())
    validate(document)
    served = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
            served.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    described = {path: {m for m in item if m in ("get", "post", "put", "patch", "delete")}
                 for path, item in document["paths"].items()}
    assert served == described
    for path, item in document["paths"].items():
        names = set(re.findall(r"{(\w+)}", path))
        assert {p["name"] for p in item.get("parameters", [])} == names, path


def test_docs_mention_every_route() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    from web.openapi import PATHS

    for path in PATHS:
        assert path.replace("/api/v1", "") in docs, path
