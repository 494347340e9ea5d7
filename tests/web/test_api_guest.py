"""The JSON API on a real tiny guest: a student starts, snapshots, stops, restores and resets their machine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from labkit.services.accounts import UserView
from labkit.services.courses import Courses

from .conftest import state

pytestmark = pytest.mark.guest


def test_a_student_runs_their_machine_through_the_api(app: Flask, courses: Courses,
                                                      make_student: Callable[..., UserView]) -> None:
    make_student("c1", "alice")
    courses.provision("c1")
    accounts = state(app).accounts("test")
    headers = {"Authorization": f"Bearer {accounts.create_api_token('alice', 't')[1]}"}
    client = app.test_client()
    name = client.get("/api/v1/machines", headers=headers).get_json()[0]["name"]
    base = f"/api/v1/machines/{name}"

    def job(path: str, body: Any = None) -> dict[str, Any]:
        answer = client.post(path, headers=headers, json=body)
        assert answer.status_code == 202, answer.get_json()
        done = state(app).jobs.wait(answer.get_json()["id"], timeout=240).as_dict()
        assert done["state"] == "done", done
        return done

    try:
        first = client.post(f"{base}/start", headers=headers)
        again = client.post(f"{base}/start", headers=headers)  # a double click: the same job, not a second boot
        assert again.status_code == 202 and again.get_json()["id"] == first.get_json()["id"]
        assert state(app).jobs.wait(first.get_json()["id"], timeout=240).state == "done"
        view = client.get(base, headers=headers).get_json()
        assert view["state"] == "running" and view["ssh"]
        assert client.post(f"{base}/start", headers=headers).status_code == 409
        assert client.post(f"{base}/reset", headers=headers, json={"confirm": True}).status_code == 409
        assert job(f"{base}/snapshots", {"name": "before"})["result"]["state"] == "running"
        assert job(f"{base}/stop")["result"]["state"] == "stopped"
        assert job(f"{base}/snapshots/before/restore")["result"]["state"] == "stopped"
        assert job(f"{base}/reset", {"confirm": True})["result"]["state"] == "stopped"
    finally:
        machines = state(app).machines("test")
        if machines.status(name)[0].state != "stopped":
            machines.kill(name)
