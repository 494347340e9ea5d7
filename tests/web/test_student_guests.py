"""The student portal's actions on a real tiny guest, through the routes (Flask test client, CSRF on) and the app's
own JobRunner: start (a double click gives one job), SSH with the shown password, snapshot and restore, reset.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest
from conftest import make_settings, make_short_dir
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.accounts import Accounts
from labkit.services.courses import Courses
from labkit.services.models import Machine
from web import create_app
from web.access import SESSION_SECRET, SESSION_STAMP, SESSION_USER
from web.state import WebState

pytestmark = pytest.mark.guest
LABS = Path(__file__).resolve().parents[2] / "labs"


@dataclass
class Site:
    app: Flask
    state: WebState
    machine: str  # alice's intro-shell box


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    home = make_short_dir("lkg")
    settings = make_settings(home / "home")
    ImageStore(settings).build(find_recipe(settings.recipes, "tiny"))
    app = create_app({"LABKIT_SETTINGS": settings, "SECRET_KEY": "student-guest-test"})
    state: WebState = app.extensions["labkit"]
    courses = Courses(settings, state.db, actor="teach")
    courses.create("c1", [LABS / "intro-shell"])
    roster = home / "roster.csv"
    roster.write_text("id,name,email\nalice,Alice,a@example.org\n")
    courses.import_roster("c1", roster)
    courses.provision("c1")
    Accounts(settings, state.db, "teach").create_links("c1")
    machine = str(courses.status("c1")[0]["name"])
    try:
        yield Site(app, state, machine)
    finally:
        for view in state.machines("test").status():  # stop by PID whatever a failed test left running
            if view.state != "stopped":
                state.machines("test").kill(view.name)
        state.close()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def alice(site: Site) -> FlaskClient:
    user = site.state.accounts("test").get("alice")
    client = site.app.test_client()
    with client.session_transaction() as session:
        session[SESSION_USER], session[SESSION_STAMP] = user.id, user.stamp
        session[SESSION_SECRET] = site.state.accounts("test").open_session(user.id)
    return client


def post(client: FlaskClient, path: str, data: dict[str, str] | None = None) -> object:
    page = client.get("/my/").get_data(as_text=True)
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert token
    return client.post(path, data={**(data or {}), "csrf_token": token.group(1)})


def jobs(site: Site, kind: str) -> list[int]:
    return [j.id for j in site.state.job_queries.list(kind=kind, limit=100) if j.target == site.machine]


def finish(site: Site, kind: str) -> dict[str, object]:
    view = site.state.jobs.wait(jobs(site, kind)[0], timeout=120)
    assert view.state == "done", view
    return view.as_dict()


def state_of(site: Site) -> str:
    return site.state.machines("test").status(site.machine)[0].state


def guest_has(site: Site, path: str) -> bool:
    with site.state.machines("test").open_guest(site.machine) as guest:
        return guest.exists(path)


def guest_run(site: Site, command: str) -> None:
    with site.state.machines("test").open_guest(site.machine) as guest:
        assert guest.run(command, timeout=30).ok


def start(site: Site, client: FlaskClient) -> None:
    post(client, f"/my/machines/{site.machine}/start")
    finish(site, "start")
    assert state_of(site) == "running"


def test_start_double_click_ssh_and_page(site: Site, alice: FlaskClient) -> None:
    name = site.machine
    first = post(alice, f"/my/machines/{name}/start")
    second = post(alice, f"/my/machines/{name}/start")  # the double click, while the first job boots the machine
    assert first.status_code == second.status_code == 303
    assert len(jobs(site, "start")) == 1
    result = finish(site, "start")
    assert result["result"] == {"machine": name, "state": "running"}

    page = alice.get(f"/my/machines/{name}").get_data(as_text=True)
    assert 'data-state="running"' in page and "start it to use its console" not in page
    port = re.search(r"<code>ssh -p (\d+) root@localhost</code>", page)
    assert port, "no ssh command line on the machine page"
    with site.state.db.transaction() as session:
        password = session.scalar(select(Machine.console_password).where(Machine.name == name))
    assert password in page
    ssh = paramiko.SSHClient()  # the shown command line with the shown password (no labkit key)
    ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # a throwaway guest's new host key
    try:
        ssh.connect("127.0.0.1", int(port.group(1)), "root", password, allow_agent=False, look_for_keys=False,
                    timeout=20)
        _, out, _ = ssh.exec_command("hostname")
        assert out.read().decode().strip() == "box"
    finally:
        ssh.close()

    post(alice, f"/my/machines/{name}/start")  # a later start of a running machine: no error, nothing changes
    again = finish(site, "start")
    assert again["result"] == {"machine": name, "state": "running", "note": "already running"}
    assert len(jobs(site, "start")) == 2


def test_snapshot_change_restore(site: Site, alice: FlaskClient) -> None:
    name = site.machine
    if state_of(site) != "running":
        start(site, alice)
    # UML keeps no running state: the page says a snapshot of the running machine keeps its disk only
    assert 'class="snapshot-kind" data-kind="disk"' in alice.get(f"/my/machines/{name}").get_data(as_text=True)
    post(alice, f"/my/machines/{name}/snapshots", {"snapshot": "clean"})  # live: synced and paused for the copy
    assert finish(site, "snapshot")["result"] == {"machine": name, "snapshot": "clean", "kind": "disk"}
    row = re.search(r'<tr class="snapshot" id="snapshot-clean".*?</tr>', alice.get(f"/my/machines/{name}")
                    .get_data(as_text=True), re.S)
    assert row and '<td class="kind">disk</td>' in row.group(0)
    guest_run(site, "echo changed > /root/mark && sync")

    refused = post(alice, f"/my/machines/{name}/snapshots/clean/restore", {"confirm": "yes"})
    assert refused.status_code == 303 and not jobs(site, "restore")
    assert "stop it first" in alice.get(f"/my/machines/{name}").get_data(as_text=True)

    post(alice, f"/my/machines/{name}/stop")
    finish(site, "stop")
    assert state_of(site) == "stopped" and guest_has(site, "/root/mark")
    post(alice, f"/my/machines/{name}/snapshots/clean/restore", {"confirm": "yes"})
    finish(site, "restore")
    assert not guest_has(site, "/root/mark")  # read offline: the change is gone


def test_reset_of_a_running_machine(site: Site, alice: FlaskClient) -> None:
    name = site.machine
    if state_of(site) != "running":
        start(site, alice)
    site.state.machines("test").snapshot(name, "keep")
    guest_run(site, "echo work > /root/work && sync")
    post(alice, f"/my/machines/{name}/reset", {"confirm": "yes"})
    result = finish(site, "reset")
    assert result["result"] == {"machine": name, "state": "stopped"}
    assert state_of(site) == "stopped" and not guest_has(site, "/root/work")
    assert "keep" in [s["name"] for s in site.state.machines("test").snapshots(name)]  # snapshots are kept
