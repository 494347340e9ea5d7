"""The student dashboard's reading (`Portal.labs_of`): one plain-row statement, the machines' real states, and a
record brought back in line when its processes say otherwise."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask
from sqlalchemy import select

from labkit.services.accounts import UserView
from labkit.services.courses import Courses
from labkit.services.models import Event, Machine
from labkit.services.portal import Portal

from .conftest import LABS, state


def test_every_lab_of_every_course_with_the_student_s_own_machines(
        app: Flask, courses: Courses, make_student: Callable[..., UserView]) -> None:
    courses.create("net", [LABS / "intro-shell", LABS / "two-hosts"])
    ann = make_student("net", "ann")
    make_student("net", "bob")
    make_student("later", "ann")  # a second course, not provisioned: its lab is listed without machines
    courses.provision("net")
    services = state(app)
    labs = Portal(services.settings, services.db, "ann").labs_of(ann)

    assert [(lab.enrollment.course, lab.enrollment.lab) for lab in labs] == [
        ("later", "intro-shell"), ("net", "intro-shell"), ("net", "two-hosts")]
    assert labs[0].machines == []
    assert labs[1].enrollment.title == "Users, files and permissions"
    two_hosts = labs[2].machines
    assert [m.machine for m in two_hosts] == ["a", "b"]  # by their names in the lab
    with services.db.read() as session:
        mine = {row.name: row for row in session.scalars(select(Machine)) if row.name in {m.name for m in two_hosts}}
        images = {name: row.image.label for name, row in mine.items()}
        passwords = {name: row.console_password for name, row in mine.items()}
    assert len(mine) == 2  # both are ann's own machines, not bob's
    for machine in two_hosts:
        assert machine.image == images[machine.name] and machine.image.startswith("tiny:")
        assert (machine.state, machine.uptime, machine.live) == ("stopped", None, False)
        assert machine.console_password == passwords[machine.name]
        assert machine.ssh_port is None  # the host port is picked at start
        assert all(forward.startswith("0:") for forward in machine.forwards)


def test_a_record_that_says_running_without_processes_is_shown_stopped_and_corrected(
        app: Flask, courses: Courses, make_student: Callable[..., UserView]) -> None:
    ann = make_student("c1", "ann")
    courses.provision("c1")
    services = state(app)
    with services.db.transaction() as session:
        row = session.scalars(select(Machine)).one()
        name, row.state, row.pid, row.supervisor_pid = row.name, "running", 999_999, 999_998

    labs = Portal(services.settings, services.db, "ann").labs_of(ann)

    assert [m.state for m in labs[0].machines] == ["stopped"]
    with services.db.read() as session:
        row = session.scalars(select(Machine).where(Machine.name == name)).one()
        assert (row.state, row.pid, row.supervisor_pid) == ("stopped", None, None)
        found = session.scalars(select(Event.action).where(Event.target == name)).all()
    assert "found-stopped" in found
