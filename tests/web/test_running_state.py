"""Snapshots that keep the running state, through the student portal and the API on a real QEMU guest (TCG): the
machine page says which kind a snapshot will be, the snapshot list says which kind each is, and restoring a
"running state" snapshot brings back a process, an address and a route that only lived in the guest's memory.

The lab is intro-shell's one machine with ``backend = "qemu"``. TCG guests are slow on a loaded host: every wait is
generous, and every assertion is about an outcome, never a duration.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from .student_site import Site, alice_client, finish, post, student_site

pytestmark = [pytest.mark.guest, pytest.mark.timeout(900)]
JOB_TIMEOUT = 300.0  # as student_site.finish waits


def on_qemu(toml: str) -> str:
    """intro-shell's lab.toml with its machine on QEMU (with the memory QEMU's kernel needs)."""
    assert "memory = 64\n" in toml
    return toml.replace("memory = 64\n", 'memory = 128\nbackend = "qemu"\n', 1)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with student_site("lkr", "running-state-test", on_qemu) as site:
        yield site


@pytest.fixture
def alice(site: Site) -> FlaskClient:
    return alice_client(site)


def guest_out(site: Site, command: str) -> str:
    with site.state.machines("test").open_guest(site.machine) as guest:
        result = guest.run(command, timeout=60)
        assert result.ok, result
        return result.stdout.decode()


def test_running_state_snapshot_brings_back_a_process(site: Site, alice: FlaskClient) -> None:
    name = site.machine
    page = alice.get(f"/my/machines/{name}").get_data(as_text=True)
    assert 'class="snapshot-kind" data-kind="disk"' in page  # stopped: a snapshot keeps the disk only

    post(alice, f"/my/machines/{name}/start")
    finish(site, "start")
    page = alice.get(f"/my/machines/{name}").get_data(as_text=True)
    assert 'class="snapshot-kind" data-kind="running state"' in page

    # what lives only in memory: a process, an address and a route
    guest_out(site, "sleep 7777 </dev/null >/dev/null 2>&1 &")
    guest_out(site, "ip addr add 192.0.2.77/32 dev lo && ip route add 198.51.100.0/24 via 10.0.2.2 dev eth0")
    pid = guest_out(site, "pidof sleep").split()
    assert len(pid) == 1

    post(alice, f"/my/machines/{name}/snapshots", {"snapshot": "live"})
    assert finish(site, "snapshot")["result"] == {"machine": name, "snapshot": "live", "kind": "running state"}
    row = re.search(r'<tr class="snapshot" id="snapshot-live".*?</tr>', alice.get(f"/my/machines/{name}")
                    .get_data(as_text=True), re.S)
    assert row and '<td class="kind">running state</td>' in row.group(0)
    assert guest_out(site, "pidof sleep").split() == pid  # the machine went on running

    post(alice, f"/my/machines/{name}/stop")
    finish(site, "stop")
    assert site.state.machines("test").status(name)[0].state == "stopped"
    confirm = alice.get(f"/my/machines/{name}/snapshots/live/restore").get_data(as_text=True)
    assert "keeps a running state" in confirm
    post(alice, f"/my/machines/{name}/snapshots/live/restore", {"confirm": "yes"})
    assert finish(site, "restore")["result"] == {"machine": name, "snapshot": "live", "state": "running"}

    # the same process (same PID, not a new boot's), the address and the route are back
    assert guest_out(site, "pidof sleep").split() == pid
    assert "192.0.2.77" in guest_out(site, "ip addr show dev lo")
    assert "198.51.100.0/24 via 10.0.2.2" in guest_out(site, "ip route")

    # the services alone: restore(start=True) starts the machine from the state at once
    machines = site.state.machines("test")
    machines.stop(name)
    assert machines.restore(name, "live", discard=True, start=True).state == "running"
    assert guest_out(site, "pidof sleep").split() == pid
    # as `labkit vm restore`: the machine stays stopped, the state waits in the overlay, a copy of it keeps it, and
    # a plain start takes it up
    machines.stop(name)
    assert machines.restore(name, "live", discard=True).state == "stopped"
    machines.snapshot(name, "waiting")
    assert {s["name"]: s["kind"] for s in machines.snapshots(name)}["waiting"] == "running state"
    assert machines.start(name).state == "running"
    assert guest_out(site, "pidof sleep").split() == pid
    # the waiting state is the snapshot's own file, linked and not copied: deleting the snapshot does not lose it
    machines.stop(name)
    machines.restore(name, "waiting", discard=True)
    machines.delete_snapshot(name, "waiting")
    assert machines.start(name).state == "running"
    assert guest_out(site, "pidof sleep").split() == pid
    # a reset gives the machine a new disk: the state restored for the old one is dropped, and the start boots
    machines.stop(name)
    machines.restore(name, "live", discard=True)
    machines.reset(name, discard=True)
    assert machines.start(name).state == "running"
    assert guest_out(site, "pidof sleep || echo none").split() == ["none"]

    # the API says the same: the list holds the kind, and the machine what a snapshot now would be
    token = site.state.accounts("test").create_api_token("alice", "t")[1]
    headers = {"Authorization": f"Bearer {token}"}
    api = site.app.test_client()
    listed = api.get(f"/api/v1/machines/{name}/snapshots", headers=headers).get_json()
    kinds = {s["name"]: s["kind"] for s in listed}
    assert kinds["live"] == "running state"
    assert [kind for snap, kind in kinds.items() if snap.startswith("before-restore-")] == ["disk"]
    assert api.get(f"/api/v1/machines/{name}", headers=headers).get_json()["snapshot_kind"] == "running state"

    def api_job(path: str) -> dict[str, object]:
        answer = api.post(path, headers=headers, json={})
        assert answer.status_code == 202, answer.get_json()
        done = site.state.jobs.wait(answer.get_json()["id"], timeout=JOB_TIMEOUT).as_dict()
        assert done["state"] == "done", done
        return done

    assert api_job(f"/api/v1/machines/{name}/stop")["result"]["state"] == "stopped"  # type: ignore[index]
    restored = api_job(f"/api/v1/machines/{name}/snapshots/live/restore")["result"]
    assert restored == {"name": name, "state": "running", "snapshot": "live"}
    assert guest_out(site, "pidof sleep").split() == pid
