"""Class time in the web app without a guest: the instructor's time and exam forms on the course page (CSRF, one
clear message for bad input, audit events, other instructors get 404), the student's countdown JSON, and the exam's
refused self-check. Test client, CSRF on."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import select

from labkit.errors import ConflictError
from labkit.services.courses import Courses
from labkit.services.grading import Grading
from labkit.services.models import Event

from .conftest import csrf_token, session_client, state


def test_instructor_sets_time_and_exam_and_the_student_sees_the_countdown(
        app: Flask, courses: Courses, make_instructor: Callable[..., object], make_course: Callable[..., str],
        make_student: Callable[..., object]) -> None:
    make_instructor("teacher")
    make_instructor("other")
    make_course("c1", owner="teacher")
    make_student("c1", "alice")
    teacher, other, alice = (session_client(app, name) for name in ("teacher", "other", "alice"))
    base = "/teach/courses/c1/labs/intro-shell"
    token = csrf_token(teacher, "/teach/courses/c1")
    page = teacher.get("/teach/courses/c1").get_data(as_text=True)
    assert 'id="time"' in page and 'data-lab="intro-shell"' in page

    assert teacher.post(f"{base}/time", data={"allowance": "1h"}).status_code == 400  # no CSRF token: refused
    answer = teacher.post(f"{base}/time", data={"csrf_token": token, "opens": "2026-12-08T10:00",
                                                 "closes": "2026-12-08T09:00"}, follow_redirects=True)
    text = answer.get_data(as_text=True)
    assert "Lab intro-shell: nothing changed: the window of intro-shell would close" in text
    answer = teacher.post(f"{base}/time", data={"csrf_token": token, "allowance": "-5", "idle": ""},
                          follow_redirects=True)
    assert "nothing changed: allowance cannot be negative" in answer.get_data(as_text=True)
    answer = teacher.post(f"{base}/time", data={"csrf_token": token, "allowance": "1h30m", "idle": "15"},
                          follow_redirects=True)
    assert "Lab intro-shell: time settings saved." in answer.get_data(as_text=True)
    assert 'name="allowance" size="6" placeholder="90m" value="90"' in answer.get_data(as_text=True)
    assert other.post(f"{base}/exam", data={"csrf_token": csrf_token(other, "/teach/"), "mode": "on"}
                      ).status_code == 404

    countdown = alice.get("/my/courses/c1/labs/intro-shell/time").get_json()
    assert (countdown["state"], countdown["deadline"], countdown["exam"]) == ("waiting", None, False)
    assert teacher.get("/my/courses/c1/labs/intro-shell/time").status_code == 404  # students only

    assert "exam mode on" in teacher.post(f"{base}/exam", data={"csrf_token": token, "mode": "on"},
                                          follow_redirects=True).get_data(as_text=True)
    page = teacher.get("/teach/courses/c1").get_data(as_text=True)
    assert 'class="exam-status"' in page and 'data-student="alice" data-in="no"' in page
    assert alice.get("/my/courses/c1/labs/intro-shell/time").get_json()["exam"] is True
    workspace = alice.get("/my/courses/c1/labs/intro-shell").get_data(as_text=True)
    assert 'id="lk-countdown"' in workspace and "js/countdown.js" in workspace
    # the student's self-check of an exam is refused (its job fails with the reason)
    with pytest.raises(ConflictError, match="is an exam: there is no self-check"):
        Grading(state(app).settings, state(app).db, "alice").self_check("c1", "alice", "intro-shell")
    assert "results released" in teacher.post(f"{base}/release", data={"csrf_token": token},
                                              follow_redirects=True).get_data(as_text=True)
    with state(app).db.transaction() as session:
        actions = [e.action for e in session.scalars(select(Event).where(Event.target == "c1/intro-shell"))]
    assert actions == ["lab-time", "lab-exam", "lab-release"]
    audit = teacher.get("/teach/courses/c1/audit").get_data(as_text=True)  # the course's audit page shows them
    assert all(action in audit for action in actions) and "c1/intro-shell" in audit
