"""API routes of machines: list, show, start, stop, reset, and snapshots (take, restore, delete)."""

from __future__ import annotations

from typing import Any

from flask import abort, jsonify
from flask.typing import ResponseReturnValue

from labkit.errors import ConflictError, NotFoundError
from labkit.progress import Reporter
from labkit.services.accounts import OwnedMachine
from labkit.services.machine_states import RUNNING_STATE, accepts, is_live
from web.api import bp, scope
from web.api.jobs import machine_job
from web.api_input import Field, json_body
from web.state import services


@bp.get("/machines")
def machines() -> ResponseReturnValue:
    """The caller's machines: a student's own, or every machine of an instructor's courses."""
    user = scope.user()
    owned = services().accounts(user.username).machines_of(user)
    views = {v.name: v for v in services().machines(user.username).status()} if owned else {}
    return jsonify([_machine_json(m, views[m.name]) for m in owned if m.name in views])


@bp.get("/machines/<name>")
def machine(name: str) -> ResponseReturnValue:
    owned = scope.machine(name)
    return jsonify(_machine_json(owned, services().machines(scope.user().username).status(owned.name)[0]))


def _machine_json(owned: OwnedMachine, view: Any) -> dict[str, Any]:
    return {"name": owned.name, "course": owned.course, "lab": owned.lab, "machine": owned.machine,
            "student": owned.student, "student_name": owned.student_name, "state": view.state,
            "forwards": view.forwards, "ssh": view.ssh, "uptime": view.uptime, "memory_mb": view.memory_mb,
            "overlay_bytes": view.overlay_bytes, "snapshots": view.snapshots, "snapshot_kind": view.snapshot_kind,
            "console_read_only": owned.read_only}


def _state_json(view: Any) -> dict[str, Any]:
    return {"name": view.name, "state": view.state}


@bp.post("/machines/<name>/start")
def machine_start(name: str) -> ResponseReturnValue:
    """Start one machine (within the course's memory budget and per-student limit)."""
    owned = scope.machine(name)
    json_body({})
    service = services().courses(scope.user().username)
    return machine_job("start", owned, lambda progress: {"machines": service.start(
        owned.course, student=owned.student, machine=owned.machine, lab=owned.lab, progress=progress)},
        lambda state: f"it is already {state}" if not accepts("start", state) else None)


@bp.post("/machines/<name>/stop")
def machine_stop(name: str) -> ResponseReturnValue:
    owned = scope.machine(name)
    json_body({})
    service = services().machines(scope.user().username)
    return machine_job("stop", owned, lambda progress: _state_json(service.stop(owned.name)),
                       lambda state: None if accepts("stop", state) else f"it is {state}")


@bp.post("/machines/<name>/reset")
def machine_reset(name: str) -> ResponseReturnValue:
    """Give the machine a fresh disk; needs ``{"confirm": true}``. The old disk is kept as snapshot
    ``before-reset-<time>`` unless ``{"discard": true}``."""
    owned = scope.machine(name)
    body = json_body({"confirm": Field(bool), "discard": Field(bool)})
    if body.get("confirm") is not True:
        abort(400, 'a reset gives the machine a fresh disk: send {"confirm": true} to go ahead')
    service = services().machines(scope.user().username)
    discard = body.get("discard", False) is True
    return machine_job("reset", owned, lambda progress: _state_json(service.reset(owned.name, discard=discard)),
                       lambda state: f"it is {state}; stop it first" if is_live(state) else None)


@bp.get("/machines/<name>/snapshots")
def snapshots(name: str) -> ResponseReturnValue:
    owned = scope.machine(name)
    listed = services().machines(scope.user().username).snapshots(owned.name)
    return jsonify([{k: v for k, v in s.items() if k != "path"} for s in listed])


@bp.post("/machines/<name>/snapshots")
def snapshot_take(name: str) -> ResponseReturnValue:
    """Take a named snapshot (a running machine is synced and paused for the copy): a job."""
    from labkit.names import check_name

    owned = scope.machine(name)
    snapshot = check_name(json_body({"name": Field(str, required=True)})["name"], "snapshot name")
    service = services().machines(scope.user().username)
    if any(s["name"] == snapshot for s in service.snapshots(owned.name)):
        raise ConflictError(f"machine {owned.name} already has a snapshot named {snapshot!r}")
    return machine_job("snapshot", owned, lambda progress: _snapshot_json(service, owned.name, snapshot),
                       lambda state: None if accepts("snapshot", state) else f"it is {state}",
                       target=f"{owned.name}/{snapshot}")


@bp.post("/machines/<name>/snapshots/<snapshot>/restore")
def snapshot_restore(name: str, snapshot: str) -> ResponseReturnValue:
    """Bring a snapshot back (the machine must be stopped; changes since are lost): a job."""
    owned = scope.machine(name)
    json_body({})
    service = services().machines(scope.user().username)
    listed = service.snapshots(owned.name)
    _snapshot_or_404(listed, owned.name, snapshot)
    resumes = any(s["name"] == snapshot and s["kind"] == RUNNING_STATE for s in listed)
    courses = services().courses(scope.user().username)

    def run(progress: Reporter) -> dict[str, Any]:
        view = service.restore(owned.name, snapshot, start=False)
        if resumes:  # it goes on where it was: started through the course, within its budget
            courses.start(owned.course, student=owned.student, machine=owned.machine, lab=owned.lab,
                          progress=progress)
            view = service.status(owned.name)[0]
        return {**_state_json(view), "snapshot": snapshot}

    return machine_job("restore", owned, run,
                       lambda state: f"it is {state}; stop it first" if is_live(state) else None,
                       target=f"{owned.name}/{snapshot}")


@bp.delete("/machines/<name>/snapshots/<snapshot>")
def snapshot_delete(name: str, snapshot: str) -> ResponseReturnValue:
    owned = scope.machine(name)
    service = services().machines(scope.user().username)
    _snapshot_or_404(service.snapshots(owned.name), owned.name, snapshot)
    service.delete_snapshot(owned.name, snapshot)
    return "", 204


def _snapshot_json(service: Any, name: str, snapshot: str) -> dict[str, Any]:
    """Take the snapshot; the job's result says the machine's state after it and the snapshot's kind."""
    state = service.snapshot(name, snapshot).state
    kind = next((s["kind"] for s in service.snapshots(name) if s["name"] == snapshot), "disk")
    return {"name": name, "snapshot": snapshot, "state": state, "kind": kind}


def _snapshot_or_404(listed: list[dict[str, object]], machine: str, snapshot: str) -> None:
    if not any(s["name"] == snapshot for s in listed):
        raise NotFoundError(f"machine {machine} has no snapshot {snapshot!r}")
