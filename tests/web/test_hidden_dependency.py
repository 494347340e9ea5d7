"""Issue 11 §3: a visible check that depends on a hidden one never reveals the hidden check's id, title or result,
in the student's self-check (web and API), their lab page, or their grades after the instructor's grading run."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask
from lab_snippets import GATED

from labkit.services.accounts import UserView
from labkit.services.courses import Courses

from .conftest import LABS, csrf_token, state

NEUTRAL = "needs an earlier step that"  # did not pass, or (machines stopped here) could not be checked


def _leaks(text: str) -> list[str]:
    return [word for word in ("hidden-gate", "The secret gate") if word in text]


def test_a_hidden_dependency_stays_hidden(app: Flask, courses: Courses, tmp_path: Path, login: Callable[..., Any],
                                          make_instructor: Callable[..., UserView],
                                          make_student: Callable[..., UserView]) -> None:
    lab = tmp_path / "intro-shell"
    shutil.copytree(LABS / "intro-shell", lab)
    (lab / "lab.toml").write_text((lab / "lab.toml").read_text() + GATED)
    make_instructor("teacher")
    courses.create("c1", [lab])
    state(app).accounts("test").set_course_owner("c1", "teacher")
    make_student("c1", "alice")
    courses.provision("c1")  # the machines stay stopped: the hidden gate cannot pass
    jobs = state(app).jobs

    # the self-check on the student's lab page
    client = app.test_client()
    login(client, "alice")
    page_url = "/my/courses/c1/labs/intro-shell"
    answer = client.post(page_url + "/self-check", data={"csrf_token": csrf_token(client, page_url)})
    assert answer.status_code == 303
    [job] = [j for j in state(app).job_queries.list(kind="self-check", limit=10)]
    assert jobs.wait(job.id, timeout=120).state == "done"
    page = client.get(page_url).get_data(as_text=True)
    assert 'data-check="after-gate"' in page and NEUTRAL in page
    assert _leaks(page) == []

    # the self-check through the API
    token = state(app).accounts("test").create_api_token("alice", "t")[1]
    headers = {"Authorization": f"Bearer {token}"}
    started = client.post("/api/v1/labs/c1/intro-shell/self-check", json={}, headers=headers)
    assert started.status_code == 202
    done = jobs.wait(started.get_json()["id"], timeout=120)
    assert done.state == "done"
    text = client.get(f"/api/v1/jobs/{done.id}", headers=headers).get_data(as_text=True)
    assert NEUTRAL in text and _leaks(text) == []

    # the instructor's grading run: the student's view of her grade says nothing of the gate either
    state(app).grading("teacher").grade("c1")
    mine = client.get("/api/v1/courses/c1/students/alice/grades", headers=headers).get_data(as_text=True)
    assert NEUTRAL in mine and _leaks(mine) == []
