"""The class grid's live stream (server-sent events) and its extra-time form, through Flask's test client with CSRF
on and no guest booted: only the course's owner gets them; the stream sends the whole grid, then only what changed,
skips the grid the browser already has (Last-Event-ID), and ends by itself; an extension is recorded."""

from __future__ import annotations

import json
import re
import time

from sqlalchemy import select

from labkit.services.models import Attempt, Event, Machine
from web.closing import closing

from .conftest import csrf_token, state
from .test_instructor_pages import Teaching, teaching_fixture  # noqa: F401 - the fixture

EVENTS = "/teach/courses/c1/grid/events"


def events_of(text: str) -> list[tuple[str, dict[str, object], str | None]]:
    """(event, data, id) of each event in an SSE body."""
    found = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            found.append((fields["event"], json.loads(fields["data"]), fields.get("id")))
    return found


def fast(t: Teaching, seconds: float) -> None:
    t.app.config.update(LABKIT_GRID_TICK_S=0.05, LABKIT_GRID_STREAM_S=seconds)


def test_only_the_owner_gets_the_stream_and_the_form(teaching: Teaching) -> None:
    fast(teaching, 0.3)
    for client, home in ((teaching.other, "/teach/"), (teaching.student, "/my/")):
        assert client.get(EVENTS).status_code == 404
        assert client.post("/teach/courses/c1/extend", data={
            "csrf_token": csrf_token(client, home), "student": "alice", "lab": "intro-shell", "minutes": "5"}
        ).status_code == 404
    assert teaching.anonymous.get(EVENTS).headers["Location"].startswith("/login?next=")
    assert teaching.other.get("/teach/courses/c2/grid/events").status_code == 200  # their own course: yes
    mine = teaching.teacher.get(EVENTS)
    assert mine.status_code == 200 and mine.mimetype == "text/event-stream"
    with state(teaching.app).db.read() as session:
        assert session.scalars(select(Attempt)).all() == []


def test_the_stream_sends_the_grid_then_changes_and_ends(teaching: Teaching) -> None:
    fast(teaching, 8.0)
    alice = teaching.machines["alice"]
    answer = teaching.teacher.get(EVENTS, buffered=False)
    chunks = iter(answer.response)
    text = ""
    while "event: grid" not in text:
        text += next(chunks).decode()
    (kind, grid, version), = events_of(text)
    assert kind == "grid" and version == grid["version"]
    assert [s["id"] for s in grid["students"]] == ["alice", "bob"]  # type: ignore[index]
    assert {c["name"]: c["state"] for c in grid["cells"]}[alice] == "stopped"  # type: ignore[index, union-attr]
    # a machine changes while the page is open: the next event names that cell only
    with state(teaching.app).db.transaction() as session:
        session.scalar(select(Machine).where(Machine.name == alice)).state = "paused"
    rest = ""
    while "event: changes" not in rest:
        rest += next(chunks).decode()
    (kind, changes, newer), = events_of(rest)
    assert kind == "changes" and changes["cells"] == {alice: "paused"} and changes["students"] == []
    assert newer == changes["version"] != version
    answer.close()  # the browser leaves: the stream's generator is closed

    # a reconnect with the version the browser has: no grid again, only the retry hint until the stream ends
    fast(teaching, 0.5)
    began = time.monotonic()
    again = teaching.teacher.get(EVENTS, headers={"Last-Event-ID": str(newer)}).get_data(as_text=True)
    assert time.monotonic() - began < 5 and again.startswith("retry: ") and events_of(again) == []
    stale = teaching.teacher.get(EVENTS, headers={"Last-Event-ID": str(version)}).get_data(as_text=True)
    assert [e[0] for e in events_of(stale)] == ["grid"]
    since = teaching.teacher.get(f"{EVENTS}?since={newer}").get_data(as_text=True)
    assert events_of(since) == []


def test_a_stopping_server_ends_the_stream_at_once(teaching: Teaching) -> None:
    fast(teaching, 60.0)
    closing.set()  # what the gunicorn worker does when it is asked to stop
    try:
        began = time.monotonic()
        body = teaching.teacher.get(EVENTS).get_data(as_text=True)
        assert time.monotonic() - began < 5 and [e[0] for e in events_of(body)] == ["grid"]
    finally:
        closing.clear()


def test_extend_from_the_grid_is_recorded(teaching: Teaching) -> None:
    token = csrf_token(teaching.teacher, "/teach/")
    page = teaching.teacher.get("/teach/courses/c1/grid").get_data(as_text=True)
    assert 'id="extend-form"' in page and 'data-action="extend"' in page
    assert 'href="/teach/courses/c1/grades?student=alice"' in page
    refused = teaching.teacher.post("/teach/courses/c1/extend", data={"student": "alice", "lab": "intro-shell",
                                                                      "minutes": "20"})
    assert refused.status_code == 400  # no CSRF token
    bad = teaching.teacher.post("/teach/courses/c1/extend", data={
        "csrf_token": token, "student": "alice", "lab": "intro-shell", "minutes": "99999"}, follow_redirects=True)
    assert "No time was added: extra time must be a whole number of minutes from 1 to 1440" in bad.get_data(
        as_text=True)
    done = teaching.teacher.post("/teach/courses/c1/extend", data={
        "csrf_token": token, "student": "alice", "lab": "intro-shell", "minutes": "20"})
    assert done.status_code == 302 and done.headers["Location"] == "/teach/courses/c1/grid"
    shown = teaching.teacher.get("/teach/courses/c1/grid").get_data(as_text=True)
    assert "alice has 20 more minutes on intro-shell" in shown
    assert re.search(r'<td class="time" data-student="alice".*?<span class="extra">\+20 min</span>', shown, re.S)
    with state(teaching.app).db.read() as session:
        assert [(a.began_at, a.extra_minutes) for a in session.scalars(select(Attempt))] == [(None, 20)]
        assert [(e.actor, e.target, e.detail) for e in session.scalars(
            select(Event).where(Event.action == "time-extend"))] == [
            ("teacher", "c1", "student alice, lab intro-shell: +20 min (extra time now 20 min)")]
    audit = teaching.teacher.get("/teach/courses/c1/audit").get_data(as_text=True)
    assert "time-extend" in audit


def test_grades_of_one_student(teaching: Teaching) -> None:
    html = teaching.teacher.get("/teach/courses/c1/grades?student=bob").get_data(as_text=True)
    table = re.search(r'<table id="grades-table">.*?</table>', html, re.S)
    assert table and re.findall(r'<tr data-student="([^"]+)"', table.group(0)) == ["bob"]
    assert 'id="grades-only"' in html
