"""The student portal through the Flask test client, with CSRF on, real SQLite and a provisioned course of real tiny
machines (none of them booted here: tests/web/test_student_guests.py boots them).

Every route is tried by the owner, by a second student of the same course (404), by an instructor (404: /my/ is for
students), and without a session; every state-changing route also without and with a forged CSRF token.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_settings, make_short_dir
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.accounts import Accounts
from labkit.services.courses import Courses
from labkit.services.models import Event
from web import create_app
from web.state import WebState

from .conftest import session_client

LABS = Path(__file__).resolve().parents[2] / "labs"
PASSWORD = "a long test password"
HTML_LINE = '\n\nRaw <script>alert("x")</script> and <b>bold</b> stay text.\n'


@dataclass
class Site:
    app: Flask
    state: WebState
    machines: dict[str, str]  # student -> their intro-shell box
    home: Path


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    home = make_short_dir("lkp")
    settings = make_settings(home / "home")
    ImageStore(settings).build(find_recipe(settings.recipes, "tiny"))
    lab = home / "intro-shell"  # the real lab, with raw HTML added to its instructions
    shutil.copytree(LABS / "intro-shell", lab)
    (lab / "instructions.md").write_text((lab / "instructions.md").read_text() + HTML_LINE)
    app = create_app({"LABKIT_SETTINGS": settings, "SECRET_KEY": "student-portal-test"})
    state: WebState = app.extensions["labkit"]
    courses = Courses(settings, state.db, actor="teach")
    accounts = Accounts(settings, state.db, "teach")
    for user, role in (("teach", "instructor"), ("other", "instructor")):
        accounts.create_user(user, role, PASSWORD)
    for course, students in (("c1", ("alice", "bob")), ("c2", ("carol",))):
        courses.create(course, [lab])
        roster = home / f"{course}.csv"
        roster.write_text("id,name,email\n" + "".join(f"{s},{s.title()},{s}@example.org\n" for s in students))
        courses.import_roster(course, roster)
        accounts.create_links(course)
    accounts.set_course_owner("c1", "teach")
    courses.provision("c1")
    machines = {str(row["student"]): str(row["name"]) for row in courses.status("c1")}
    try:
        yield Site(app, state, machines, home)
    finally:
        state.close()
        shutil.rmtree(home, ignore_errors=True)


def client_of(site: Site, username: str | None) -> FlaskClient:
    """A client logged in as ``username`` (a session like the login form makes), or anonymous."""
    return site.app.test_client() if username is None else session_client(site.app, username)


def token(client: FlaskClient, path: str = "/my/") -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert found, f"no CSRF token on {path}"
    return found.group(1)


def post(client: FlaskClient, path: str, data: dict[str, str] | None = None, csrf: str | None = "real") -> object:
    form = dict(data or {})
    if csrf == "real":
        form["csrf_token"] = token(client)
    elif csrf is not None:
        form["csrf_token"] = csrf
    return client.post(path, data=form)


def job_count(site: Site) -> int:
    return len(site.state.job_queries.list(limit=1000))


def last_job(site: Site, kind: str, target: str) -> int:
    found = [j for j in site.state.job_queries.list(kind=kind, limit=100) if j.target == target]
    assert found, f"no {kind} job on {target}"
    return found[0].id


def wait(site: Site, job_id: int) -> dict[str, object]:
    view = site.state.jobs.wait(job_id, timeout=120)
    return view.as_dict()


# ---- what each user sees -----------------------------------------------------------------------------------------
def test_my_labs_lists_only_my_machines_with_hooks(site: Site) -> None:
    alice, bob = site.machines["alice"], site.machines["bob"]
    page = client_of(site, "alice").get("/my/").get_data(as_text=True)
    assert f'id="machine-{alice}"' in page and bob not in page
    assert 'class="state state-stopped"' in page
    for action in ("start", "stop", "reset"):
        assert f'data-action="{action}"' in page
    assert "Users, files and permissions" in page  # the lab's title, linked to its instructions
    assert "/my/courses/c1/labs/intro-shell" in page
    carol = client_of(site, "carol").get("/my/").get_data(as_text=True)
    assert "not provisioned this lab" in carol and "machine-" not in carol


def test_machine_page_of_a_stopped_machine(site: Site) -> None:
    name = site.machines["alice"]
    page = client_of(site, "alice").get(f"/my/machines/{name}").get_data(as_text=True)
    assert f'id="machine-{name}"' in page and 'data-state="stopped"' in page
    assert "is stopped: start it to use its console" in page
    assert 'class="lk-console"' in page and f'data-machine="{name}"' in page
    with site.state.db.transaction() as session:
        from labkit.services.models import Machine

        password = session.scalar(select(Machine.console_password).where(Machine.name == name))
    assert password and password in page  # root's password, for its owner (in a closed <details>)
    assert 'data-action="snapshot"' in page


def test_anonymous_is_sent_to_login(site: Site) -> None:
    client = client_of(site, None)
    for path in ("/my/", f"/my/machines/{site.machines['alice']}", "/my/courses/c1/labs/intro-shell"):
        answer = client.get(path)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/login")


def _routes(site: Site, name: str) -> tuple[list[str], list[tuple[str, dict[str, str]]]]:
    pages = [f"/my/machines/{name}", f"/my/machines/{name}/reset", f"/my/machines/{name}/snapshots/s1/restore"]
    actions = [(f"/my/machines/{name}/start", {}), (f"/my/machines/{name}/stop", {}),
               (f"/my/machines/{name}/reset", {"confirm": "yes"}),
               (f"/my/machines/{name}/snapshots", {"snapshot": "s2"}),
               (f"/my/machines/{name}/snapshots/s1/restore", {"confirm": "yes"}),
               (f"/my/machines/{name}/snapshots/s1/delete", {})]
    return pages, actions


def test_another_student_and_instructors_get_404_everywhere(site: Site) -> None:
    name = site.machines["alice"]
    site.state.machines("alice").snapshot(name, "s1")  # so that the snapshot routes exist for alice
    try:
        pages, actions = _routes(site, name)
        owner = client_of(site, "alice")
        for path in pages:
            assert owner.get(path).status_code == 200, path
        before = job_count(site)
        for who in ("bob", "carol", "teach", "other"):
            client = client_of(site, who)
            for path in pages:
                assert client.get(path).status_code == 404, (who, path)
            for path, data in actions:
                assert post(client, path, data).status_code == 404, (who, path)
            for path in ("/my/courses/c2/labs/intro-shell", "/my/courses/c1/labs/nope", "/my/courses/c9/labs/x"):
                if who == "carol" and path.startswith("/my/courses/c2/"):
                    continue
                assert client.get(path).status_code == 404, (who, path)
                assert post(client, path + "/self-check").status_code == 404, (who, path)
                assert post(client, path + "/submit").status_code == 404, (who, path)
        # an instructor gets 404 on the students' own pages too, even for a course they own
        assert client_of(site, "teach").get("/my/").status_code == 404
        assert client_of(site, "teach").get("/my/courses/c1/labs/intro-shell").status_code == 404
        assert job_count(site) == before  # no refused request queued anything
        assert [s["name"] for s in site.state.machines("test").snapshots(name)] == ["s1"]
        mine = client_of(site, "alice").get("/my/").get_data(as_text=True)
        assert 'data-course="c1"' in mine  # (not the bare "c2" below: tokens may hold it)
        assert 'data-course="c2"' not in mine and "/my/courses/c2/" not in mine
    finally:
        site.state.machines("test").delete_snapshot(name, "s1")


def test_unknown_machine_and_snapshot_are_404(site: Site) -> None:
    client = client_of(site, "alice")
    name = site.machines["alice"]
    assert client.get("/my/machines/nope").status_code == 404
    assert client.get(f"/my/machines/{name}/snapshots/none/restore").status_code == 404
    assert post(client, f"/my/machines/{name}/snapshots/none/delete").status_code == 404
    assert post(client, "/my/machines/nope/start").status_code == 404


# ---- CSRF ------------------------------------------------------------------------------------------------------------
def test_missing_or_forged_csrf_is_refused_and_changes_nothing(site: Site) -> None:
    name = site.machines["alice"]
    client = client_of(site, "alice")
    client.get("/my/")  # a session with a CSRF secret, as a browser that loaded the page has
    before = job_count(site)
    other = client_of(site, "bob")
    forged = token(other)  # a real token, of another session
    _, actions = _routes(site, name)
    actions += [("/my/courses/c1/labs/intro-shell/self-check", {}), ("/my/courses/c1/labs/intro-shell/submit", {})]
    for path, data in actions:
        for csrf in (None, "forged-token", forged):
            answer = post(client, path, data, csrf=csrf)
            assert answer.status_code == 400, (path, csrf)
            assert "The form was refused" in answer.get_data(as_text=True)
    assert job_count(site) == before


# ---- actions ---------------------------------------------------------------------------------------------------------
def test_stop_of_a_stopped_machine_is_a_quiet_no_op(site: Site) -> None:
    name = site.machines["alice"]
    client = client_of(site, "alice")
    answer = post(client, f"/my/machines/{name}/stop", {"next": "/my/"})
    assert answer.status_code == 303 and answer.headers["Location"] == "/my/"
    job = wait(site, last_job(site, "stop", name))
    assert job["state"] == "done" and job["result"]["note"] == "already stopped"  # type: ignore[index]
    answer = post(client, f"/my/machines/{name}/stop", {"next": "https://evil.example/"})
    assert answer.headers["Location"] == f"/my/machines/{name}"  # never an open redirect
    wait(site, last_job(site, "stop", name))


def test_jobs_json_for_owner_and_course_instructor_only(site: Site) -> None:
    name = site.machines["alice"]
    post(client_of(site, "alice"), f"/my/machines/{name}/stop")
    job_id = last_job(site, "stop", name)
    wait(site, job_id)
    answer = client_of(site, "alice").get(f"/jobs/{job_id}")
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    body = answer.get_json()
    assert {"state", "done", "total", "percent", "message", "error"} <= set(body)
    assert body["state"] == "done" and body["percent"] == 100
    assert client_of(site, "teach").get(f"/jobs/{job_id}").status_code == 200  # owns course c1
    for who in ("bob", "carol", "other", None):
        answer = client_of(site, who).get(f"/jobs/{job_id}")
        assert answer.status_code == 404 and answer.get_json() == {"error": "There is no such job, or it is not yours."}
    assert client_of(site, "alice").get("/jobs/999999").status_code == 404


def test_snapshot_restore_delete(site: Site) -> None:
    name = site.machines["alice"]
    client = client_of(site, "alice")
    answer = post(client, f"/my/machines/{name}/snapshots", {"snapshot": "Bad Name"})
    assert answer.status_code == 303
    assert "No snapshot taken: snapshot name" in client.get(f"/my/machines/{name}").get_data(as_text=True)
    post(client, f"/my/machines/{name}/snapshots", {"snapshot": "first"})
    assert wait(site, last_job(site, "snapshot", name))["state"] == "done"
    page = client.get(f"/my/machines/{name}").get_data(as_text=True)
    assert 'id="snapshot-first"' in page and 'data-action="restore"' in page

    confirm = client.get(f"/my/machines/{name}/snapshots/first/restore").get_data(as_text=True)
    assert "is lost" in confirm and 'data-action="restore"' in confirm
    refused = post(client, f"/my/machines/{name}/snapshots/first/restore")  # no confirmation: nothing happens
    assert refused.status_code == 400 and "nothing was changed" in refused.get_data(as_text=True)
    post(client, f"/my/machines/{name}/snapshots/first/restore", {"confirm": "yes"})
    assert wait(site, last_job(site, "restore", name))["state"] == "done"

    post(client, f"/my/machines/{name}/snapshots/first/delete")
    assert site.state.machines("test").snapshots(name) == []
    with site.state.db.transaction() as session:
        actions = [(e.actor, e.action) for e in session.scalars(select(Event).where(Event.target == name))]
    assert {("alice", "snapshot"), ("alice", "restore"), ("alice", "snapshot-delete")} <= set(actions)


def test_reset_asks_first_and_says_the_work_is_lost(site: Site) -> None:
    name = site.machines["bob"]
    client = client_of(site, "bob")
    confirm = client.get(f"/my/machines/{name}/reset").get_data(as_text=True)
    assert "All your work on box is lost from the machine" in confirm and "before-reset-" in confirm
    assert 'name="confirm" value="yes"' in confirm
    refused = post(client, f"/my/machines/{name}/reset")
    assert refused.status_code == 400 and job_count(site) >= 0
    assert not [j for j in site.state.job_queries.list(kind="reset", limit=100) if j.target == name]
    post(client, f"/my/machines/{name}/reset", {"confirm": "yes"})
    job = wait(site, last_job(site, "reset", name))
    assert job["state"] == "done", job
    with site.state.db.transaction() as session:
        assert session.scalar(select(Event).where(Event.target == name, Event.action == "reset",
                                                  Event.actor == "bob")) is not None


# ---- the lab page ----------------------------------------------------------------------------------------------------
def test_instructions_have_my_values_and_no_raw_html(site: Site) -> None:
    from labkit.labs.loader import load_lab
    from labkit.labs.params import student_params

    page = client_of(site, "alice").get("/my/courses/c1/labs/intro-shell").get_data(as_text=True)
    with site.state.db.transaction() as session:
        from labkit.services.models import Course

        secret = session.scalar(select(Course.secret).where(Course.name == "c1"))
    mine = student_params(load_lab(site.home / "intro-shell"), "c1", "alice", secret)
    theirs = student_params(load_lab(site.home / "intro-shell"), "c1", "bob", secret)
    assert f"<code>{mine['user']}</code>" in page and str(mine["phrase"]) in page
    assert str(theirs["phrase"]) not in page
    assert "<table>" in page  # Markdown tables are on
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert 'data-action="self-check"' in page and 'data-action="submit"' in page
    assert "Nothing submitted yet" in page


def test_self_check_shows_visible_checks_only(site: Site) -> None:
    client = client_of(site, "alice")
    answer = post(client, "/my/courses/c1/labs/intro-shell/self-check")
    assert answer.status_code == 303 and answer.headers["Location"].endswith("#self-check")
    job = wait(site, last_job(site, "self-check", "check:c1/alice/intro-shell"))
    assert job["state"] == "done", job
    page = client.get("/my/courses/c1/labs/intro-shell").get_data(as_text=True)
    assert 'data-check="root-intact"' in page and "was never started" in page  # the box never ran: not checked
    assert 'class="check check-unchecked"' in page and "not checked</span>" in page and "check-fail" not in page
    assert 'data-check="user-exists"' in page
    for hidden in ("user-entry", "secret-perms"):  # hidden checks never reach a student
        assert hidden not in page


def test_submit_shows_when_and_what(site: Site) -> None:
    client = client_of(site, "alice")
    post(client, "/my/courses/c1/labs/intro-shell/submit")
    job = wait(site, last_job(site, "submit", "submit:c1/alice/intro-shell"))
    assert job["state"] == "done", job
    page = client.get("/my/courses/c1/labs/intro-shell").get_data(as_text=True)
    assert 'class="submission"' in page and "(latest)" in page and "<td>box</td>" in page
    assert "Nothing submitted yet" not in page
    assert "Nothing submitted yet" in client_of(site, "bob").get("/my/courses/c1/labs/intro-shell").get_data(
        as_text=True)
