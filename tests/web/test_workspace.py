"""The student's lab workspace through the Flask test client, with CSRF on, real SQLite and the shipped two-hosts lab
provisioned on real tiny machines: the page's parts, a step's Check, exam mode hiding feedback, lab checkpoints (all
or nothing), and starting ``a`` starting ``b`` first (``a`` depends on it; the only test here that boots guests).
The browser side (tabs, typing, copy) is tests/web/test_browser_workspace.py.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from labkit.errors import ConflictError, NotFoundError
from labkit.services.lab_checkpoints import LabCheckpoints
from labkit.services.models import Course, CourseLab, Event

from .student_site import Site, alice_client, post, student_site

PAGE = "/my/courses/c1/labs/two-hosts"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with student_site("lkw", "workspace-test", lab_name="two-hosts") as site:
        yield site


def job(site: Site, kind: str, target: str) -> dict[str, object]:
    found = [j for j in site.state.job_queries.list(kind=kind, limit=100) if j.target == target]
    assert found, f"no {kind} job on {target}"
    return site.state.jobs.wait(found[0].id, timeout=180).as_dict()


def set_exam(site: Site, exam: bool, released: dt.datetime | None = None) -> None:
    with site.state.db.transaction() as session:
        row = session.scalar(select(CourseLab).join(Course).where(Course.name == "c1"))
        assert row is not None
        row.exam, row.results_released_at = exam, released


def test_the_workspace_shows_guide_steps_and_a_tab_per_machine(site: Site) -> None:
    page = alice_client(site).get(PAGE).get_data(as_text=True)
    assert [m for m in re.findall(r'class="card ws-step" id="step-([a-z-]+)"', page)] == [
        "look-around", "address", "service", "route"]
    assert "Step 2 of 4" in page and "Give b its service address" in page
    assert re.findall(r'role="tab" class="ws-tab" id="tab-(\w)"', page) == ["a", "b"]
    assert "<kbd>Alt+1</kbd>" in page and "<kbd>Alt+2</kbd>" in page
    assert page.count('class="lk-console"') == 2 and page.count("vendor/xterm.js") == 1
    assert 'data-action="start-lab"' in page and 'data-action="stop-lab"' in page
    assert 'data-action="checkpoint"' in page and 'data-action="check-step"' in page
    assert "Consoles in this lab are recorded; your instructor can replay them." in page
    assert '<pre data-run="a"><code class="language-sh">ping -c 1 ' in page
    assert '<pre data-run="b"><code class="language-sh">httpd -p ' in page
    assert "&lt;!-- step:" not in page and "<!-- step:" not in page  # markers cut the guide, never shown
    assert "needs b" in page  # a's tab says what it depends on


def test_a_steps_check_runs_that_steps_checks_only(site: Site) -> None:
    client = alice_client(site)
    answer = post(client, f"{PAGE}/steps/look-around/check")
    assert answer.status_code == 303 and answer.headers["Location"].endswith("#step-look-around")
    done = job(site, "self-check", "check:c1/alice/two-hosts:look-around")
    assert done["state"] == "done", done
    assert done["result"] == {"run": done["result"]["run"], "step": "look-around", "passed": 0, "checks": 1}
    page = client.get(PAGE).get_data(as_text=True)
    feedback = re.search(r'<ul class="ws-feedback" data-step="look-around">(.*?)</ul>', page, re.S)
    assert feedback and 'data-check="lan-link"' in feedback.group(1) and "not checked" in feedback.group(1)
    assert page.count('<ul class="ws-feedback"') == 1  # only the step that was checked has feedback
    assert post(client, f"{PAGE}/steps/nope/check").status_code == 404
    # a step with a hidden check (bound-to-service): it is neither run for the student nor shown
    post(client, f"{PAGE}/steps/service/check")
    done = job(site, "self-check", "check:c1/alice/two-hosts:service")
    assert (done["state"], done["result"]["checks"]) == ("done", 1), done
    page = client.get(PAGE).get_data(as_text=True)
    feedback = re.search(r'<ul class="ws-feedback" data-step="service">(.*?)</ul>', page, re.S)
    assert feedback and 'data-check="service-listens"' in feedback.group(1)
    assert "bound-to-service" not in page and 'data-check="lan-link"' in page  # step 1's result is still shown


def test_exam_mode_hides_check_buttons_and_feedback_until_released(site: Site) -> None:
    client = alice_client(site)
    post(client, f"{PAGE}/steps/look-around/check")
    job(site, "self-check", "check:c1/alice/two-hosts:look-around")
    set_exam(site, True)
    try:
        page = client.get(PAGE).get_data(as_text=True)
        assert 'data-action="check-step"' not in page and 'class="ws-feedback"' not in page
        assert 'id="self-check"' not in page and "lan-link" not in page
        assert 'data-action="submit"' in page and "Step 1 of 4" in page
        set_exam(site, True, dt.datetime.now(dt.UTC))
        page = client.get(PAGE).get_data(as_text=True)
        assert 'data-action="check-step"' in page and 'data-check="lan-link"' in page
    finally:
        set_exam(site, False)


def test_checkpoints_are_all_or_nothing(site: Site) -> None:
    client, state = alice_client(site), site.state
    points = LabCheckpoints(state.settings, state.db, "test")
    post(client, f"{PAGE}/checkpoints", {"checkpoint": "cp1"})
    assert job(site, "checkpoint", "lab:c1/alice/two-hosts")["state"] == "done"
    machines = state.machines("test")
    for name in site.machines.values():
        assert "cp1" in [s["name"] for s in machines.snapshots(name)]
    # a name one machine already has: refused before anything is copied
    machines.snapshot(site.machines["b"], "cp2")
    with pytest.raises(ConflictError, match="already exists on b"):
        points.take("c1", "alice", "two-hosts", "cp2")
    assert "cp2" not in [s["name"] for s in machines.snapshots(site.machines["a"])]
    # a checkpoint a machine lacks cannot be restored: nothing changes
    with pytest.raises(NotFoundError, match="a has no snapshot 'cp2'"):
        points.restore("c1", "alice", "two-hosts", "cp2")
    page = client.get(PAGE).get_data(as_text=True)
    assert 'data-checkpoint="cp2" data-complete="false"' in page
    assert 'data-checkpoint="cp1" data-complete="true"' in page
    post(client, f"{PAGE}/checkpoints/cp2/restore", {"confirm": "yes"})
    assert "cannot be restored" in client.get(PAGE).get_data(as_text=True)
    # the whole lab back at cp1
    answer = post(client, f"{PAGE}/checkpoints/cp1/restore", {"confirm": "yes"})
    assert answer.status_code == 303
    done = job(site, "restore-checkpoint", "lab:c1/alice/two-hosts")
    assert done["state"] == "done", done
    assert done["result"] == {"checkpoint": "cp1", "machines": {"a": "stopped", "b": "stopped"}}
    assert post(client, f"{PAGE}/checkpoints/cp1/restore").status_code == 400  # no confirmation: refused


def test_starting_a_starts_b_first_and_stop_lab_stops_both(site: Site) -> None:
    client, machines = alice_client(site), site.state.machines("test")
    post(client, f"/my/machines/{site.machines['a']}/start")
    done = job(site, "start", site.machines["a"])
    assert done["state"] == "done", done
    assert {name: machines.status(full)[0].state for name, full in site.machines.items()} == {
        "a": "running", "b": "running"}
    with site.state.db.transaction() as session:  # b came up before a was started (a later wave)
        started = list(session.scalars(select(Event.target).where(Event.action == "start").order_by(Event.id)))
    assert started == [site.machines["b"], site.machines["a"]]
    assert done["message"] == "a is running (and b, which it depends on)"
    assert done["result"]["also_started"] == ["b"]
    post(client, f"{PAGE}/stop")
    assert job(site, "stop-lab", "lab:c1/alice/two-hosts")["state"] == "done"
    assert {machines.status(full)[0].state for full in site.machines.values()} == {"stopped"}
