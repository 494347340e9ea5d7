"""The student portal's actions on a real tiny guest, through the routes (Flask test client, CSRF on) and the app's
own JobRunner: start (a double click gives one job), SSH with the shown password, snapshot and restore, reset.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import paramiko
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from labkit.services.models import Machine

from .student_site import Site, alice_client, finish, jobs, post, student_site

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with student_site("lkg", "student-guest-test") as site:
        yield site


@pytest.fixture
def alice(site: Site) -> FlaskClient:
    return alice_client(site)


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
