"""What one student's Start click costs, on a real tiny guest through the route: the lab is loaded and validated at
most once, only the course's machines are read from their processes (not every machine of the installation), and the
clicked machine's status is read by the services at most three times. (Before, one click read the clicked machine
five times, loaded the lab twice and read every machine of the installation twice.)"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

import labkit.labs.loader
from labkit.runtime.base import MachineSpec, MachineStatus
from labkit.runtime.uml.backend import UmlBackend
from labkit.services.accounts import UserView
from labkit.services.courses import Courses

from .conftest import csrf_token, state

pytestmark = pytest.mark.guest


def test_one_start_click_loads_the_lab_once_and_reads_only_the_course_machines(
        app: Flask, courses: Courses, make_student: Callable[..., UserView],
        login: Callable[..., object], monkeypatch: pytest.MonkeyPatch) -> None:
    for sid in ("alice", "bob"):
        make_student("c1", sid)
    courses.provision("c1")
    make_student("c2", "carol")  # another course and a bare machine share the installation
    courses.provision("c2")
    courses.machines.create("bare", "tiny")
    ours = {str(row["name"]) for row in courses.status("c1")}
    theirs = {view.name for view in courses.machines.status()} - ours
    assert len(ours) == 2 and len(theirs) == 2
    name = next(str(row["name"]) for row in courses.status("c1", student="alice"))

    client = app.test_client()
    login(client, "alice")
    token = csrf_token(client, "/my/")
    reads: Counter[str] = Counter()
    loads: list[object] = []
    status, load = UmlBackend.status, labkit.labs.loader._load

    def counted_status(self: UmlBackend, spec: MachineSpec) -> MachineStatus:
        if not sys._getframe(1).f_globals["__name__"].startswith("labkit.runtime"):
            reads[spec.name] += 1  # the services' reads (the backend's start reads it too, before and after)
        return status(self, spec)

    def counted_load(*args: Any, **kwargs: Any) -> Any:
        loads.append(args[0])
        return load(*args, **kwargs)

    # counting wrappers: the real status reads and the real loader run underneath
    monkeypatch.setattr(UmlBackend, "status", counted_status)
    monkeypatch.setattr(labkit.labs.loader, "_load", counted_load)
    try:
        client.post(f"/my/machines/{name}/start", data={"csrf_token": token})
        [job] = [j.id for j in state(app).job_queries.list(kind="start", limit=10) if j.target == name]
        done = state(app).jobs.wait(job, timeout=180)
        assert done.state == "done", done
        assert done.as_dict()["result"] == {"machine": name, "state": "running"}
        assert len(loads) <= 1, loads
        assert set(reads) <= ours, f"read machines outside course c1: {sorted(set(reads) - ours)}"
        assert reads[name] <= 3, reads
    finally:
        if courses.machines.status(name)[0].state != "stopped":  # stopped by PID, whatever the test left running
            courses.machines.kill(name)
