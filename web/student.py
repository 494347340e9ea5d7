"""The student portal, ``/my/...``: a student's labs and machines, their console, snapshots, instructions,
self-check and submission. Students only, their own machines only: anything else answers 404.

Every action is a POST with a CSRF token (flask-wtf's `CSRFProtect` checks them all) that queues a job and redirects
back (303); the page shows the job's progress (static/js/jobs.js polls ``/jobs/<id>``). A second click while the
first job of the same action on the same machine runs gets that job back (`JobRunner` dedupes), and starting a
machine that already runs is a no-op. The services record every action in the audit log with the student as actor.

Decision: a student's machine page shows root's password of that machine (in a closed ``<details>``), to the owning
student only: images whose console asks for a login need it, and so does ``ssh -p PORT root@HOST`` (guests take
only labkit's key or this password; students have no labkit key).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from markdown_it import MarkdownIt

from labkit.errors import LabkitError
from labkit.names import check_name
from labkit.progress import ProgressEvent, Reporter
from labkit.services.accounts import OwnedMachine, UserView
from labkit.services.jobs import JobView
from labkit.services.machine_states import RUNNING_STATE, is_live
from labkit.services.portal import Enrollment, Portal
from web.access import actor, current_user, owned_machine_or_404, student_required
from web.state import WebState, services

bp = Blueprint("student", __name__, url_prefix="/my")

#: raw HTML in instructions stays text (labs are shared between instructors); links are checked by markdown-it
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
#: a finished job stays on the page this long, so its error (or result) can be read after the reload
RECENT = dt.timedelta(minutes=15)


def _user() -> UserView:
    user = current_user()
    assert user is not None  # student_required ran first
    return user


def _portal() -> Portal:
    state = services()
    return Portal(state.settings, state.db, actor())


def _mine(name: str) -> OwnedMachine:
    owned = owned_machine_or_404(name)
    if owned.read_only:  # an instructor: they use /teach/
        abort(404)
    return owned


def _enrolled(course: str, lab: str) -> Enrollment:
    found = _portal().enrollment(_user(), course, lab)
    if found is None:
        abort(404)
    return found


def _back(default: str) -> ResponseReturnValue:
    """Back to the page the form was on (a path under /my/ only), else ``default``; 303 so the reload is a GET."""
    target = request.form.get("next", "")
    parts = urlsplit(target)
    if not target.startswith("/my/") or parts.scheme or parts.netloc or "\\" in target:
        target = default
    return redirect(target, 303)


def _submit(kind: str, target: str, course_id: int, function: Callable[[Reporter], dict[str, Any] | None],
            what: str) -> JobView:
    user = _user()
    job = services().jobs.submit(kind, target, function, course_id=course_id, owner_user_id=user.id)
    if job.owner_user_id != user.id:
        flash(f"{what} is already under way (started by your instructor).", "info")
    return job


def _recent_jobs(targets: set[str] | None = None) -> dict[str, list[JobView]]:
    """The user's jobs (on ``targets``, default all) that run or ended a short while ago, newest first, by target."""
    found: dict[str, list[JobView]] = {}
    for job in services().job_queries.recent(_user().id, since=dt.datetime.now(dt.UTC) - RECENT):
        if targets is None or job.target in targets:
            found.setdefault(job.target, []).append(job)
    return found


def _ssh_host() -> str:
    """The host name the student reached this site by: forwarded ports listen on every address of that host."""
    return urlsplit(f"//{request.host}").hostname or "127.0.0.1"


def format_uptime(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def format_bytes(size: object) -> str:
    value = float(size) if isinstance(size, int | float) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@bp.context_processor
def _helpers() -> dict[str, Any]:
    return {"format_uptime": format_uptime, "format_bytes": format_bytes, "ssh_host": _ssh_host}


# ---- pages -------------------------------------------------------------------------------------------------------
@bp.get("/")
@student_required
def index() -> ResponseReturnValue:
    # jobs are read before what they change: a job that ends in between is then still shown as running, and the
    # page reloads when it sees it end (read the other way round, the page would show old data and a finished job)
    portal, user = _portal(), _user()
    jobs = _recent_jobs()
    return render_template("student/index.html", labs=portal.labs_of(user), jobs=jobs)


@bp.get("/machines/<name>")
@student_required
def machine(name: str) -> ResponseReturnValue:
    owned = _mine(name)
    jobs = _recent_jobs({owned.name}).get(owned.name, [])  # first: see index()
    portal = _portal()
    view = portal.machine(owned.name, owned.machine)
    return render_template("student/machine.html", owned=owned, machine=view, snapshots=portal.snapshots(owned.name),
                           jobs=jobs)


@bp.get("/courses/<course>/labs/<lab>")
@student_required
def lab_page(course: str, lab: str) -> ResponseReturnValue:
    place = _enrolled(course, lab)
    target = _lab_target(place)
    jobs = _recent_jobs({f"check:{target}", f"submit:{target}"})  # first: see index()
    state = services()
    portal = _portal()
    problem = None
    try:
        instructions = _MARKDOWN.render(portal.instructions(place.course, place.student, place.lab))
    except LabkitError as err:  # a broken lab: say so on the page; the rest of it still works
        instructions, problem = "", str(err)
    checks = [grade for grade in state.grading(actor()).latest(place.course, place.student, include_hidden=False,
                                                               kinds=("self-check",)) if grade.lab == place.lab]
    from labkit.services.submissions import Submissions

    submitted = [s for s in Submissions(state.settings, state.db, actor()).list(place.course, place.student)
                 if s.lab == place.lab]
    machines = [m for p in portal.labs_of(_user()) if (p.enrollment.course, p.enrollment.lab) == (course, lab)
                for m in p.machines]
    return render_template("student/lab.html", place=place, instructions=instructions, problem=problem,
                           self_check=checks[0] if checks else None, submissions=list(reversed(submitted)),
                           machines=machines, jobs=jobs)


@bp.get("/courses/<course>/labs/<lab>/time")
@student_required
def lab_time(course: str, lab: str) -> ResponseReturnValue:
    """The workspace's countdown (static/js/countdown.js): the state of the student's time, their deadline and the
    seconds left (`labkit.services.timing.Countdown`)."""
    from labkit.services.timing import Timing

    place = _enrolled(course, lab)
    state = services()
    return jsonify(Timing(state.settings, state.db, actor()).countdown(place.course, place.student,
                                                                       place.lab).to_json())


@bp.post("/courses/<course>/labs/<lab>/here")
@student_required
def lab_here(course: str, lab: str) -> ResponseReturnValue:
    """The student opened the lab's workspace: their machines paused for being idle go on where they were."""
    from labkit.services.sweeper import come_back

    place = _enrolled(course, lab)
    state = services()
    return jsonify(resumed=come_back(state.settings, state.db, actor(), place.course, place.student, place.lab))


# ---- machine actions ---------------------------------------------------------------------------------------------
def _state_of(state: WebState, who: str, name: str) -> str:
    return state.machines(who).status(name)[0].state


def _already(progress: Reporter, kind: str, owned: OwnedMachine, state: str) -> dict[str, Any]:
    """A second click after the first job ended: nothing to do, and no error."""
    progress(ProgressEvent(kind, 1, 1, f"{owned.machine} is already {state}"))
    return {"machine": owned.name, "state": state, "note": f"already {state}"}


def _machine_job(owned: OwnedMachine, kind: str, function: Callable[[Reporter], dict[str, Any]], what: str) -> None:
    """Queue ``function`` as the ``kind`` job of the machine; ``what`` begins the sentence ("Starting")."""
    _submit(kind, owned.name, owned.course_id, function, f"{what} {owned.machine}")


def _to_machine(owned: OwnedMachine) -> ResponseReturnValue:
    return redirect(url_for(".machine", name=owned.name), 303)


@bp.post("/machines/<name>/start")
@student_required
def start(name: str) -> ResponseReturnValue:
    owned = _mine(name)
    state, who = services(), actor()

    def run(progress: Reporter) -> dict[str, Any]:
        before = _state_of(state, who, owned.name)
        if is_live(before) and before != "paused":  # a paused machine is resumed by the course's start
            return _already(progress, "start", owned, before)
        # through the course: its memory budget and per-student limit apply to students too
        rows = state.courses(who).start(owned.course, student=owned.student, machine=owned.machine, lab=owned.lab,
                                        progress=progress)
        after = next(str(row["state"]) for row in rows if row["name"] == owned.name)
        progress(ProgressEvent("start", 1, 1, f"{owned.machine} is {after}"))
        return {"machine": owned.name, "state": after}

    _machine_job(owned, "start", run, "Starting")
    return _back(url_for(".machine", name=owned.name))


@bp.post("/machines/<name>/stop")
@student_required
def stop(name: str) -> ResponseReturnValue:
    owned = _mine(name)
    state, who = services(), actor()

    def run(progress: Reporter) -> dict[str, Any]:
        before = _state_of(state, who, owned.name)
        if not is_live(before):
            return _already(progress, "stop", owned, before)
        progress(ProgressEvent("stop", 0, 1, f"stopping {owned.machine}"))
        view = state.machines(who).stop(owned.name)
        progress(ProgressEvent("stop", 1, 1, f"{owned.machine} stopped"))
        return {"machine": owned.name, "state": view.state}

    _machine_job(owned, "stop", run, "Stopping")
    return _back(url_for(".machine", name=owned.name))


@bp.get("/machines/<name>/reset")
@student_required
def reset_confirm(name: str) -> ResponseReturnValue:
    owned = _mine(name)
    view = _portal().machine(owned.name, owned.machine)
    return render_template("student/confirm.html", owned=owned, machine=view, action="reset",
                           form_action=url_for(".reset", name=owned.name))


@bp.post("/machines/<name>/reset")
@student_required
def reset(name: str) -> ResponseReturnValue:
    owned = _mine(name)
    if request.form.get("confirm") != "yes":
        abort(400, "Reset needs the confirmation from the reset page: nothing was changed.")
    state, who = services(), actor()

    def run(progress: Reporter) -> dict[str, Any]:
        machines = state.machines(who)
        if is_live(_state_of(state, who, owned.name)):
            progress(ProgressEvent("reset", 0, 2, f"stopping {owned.machine}"))
            machines.stop(owned.name)
        progress(ProgressEvent("reset", 1, 2, f"replacing the disk of {owned.machine}"))
        view = machines.reset(owned.name)
        progress(ProgressEvent("reset", 2, 2, f"{owned.machine} is as new (stopped)"))
        return {"machine": owned.name, "state": view.state}

    _machine_job(owned, "reset", run, "Resetting")
    flash(f"{owned.machine} is being reset: its disk is replaced by a new one (the old one is kept as a snapshot).",
          "info")
    return _to_machine(owned)


# ---- snapshots ---------------------------------------------------------------------------------------------------
@bp.post("/machines/<name>/snapshots")
@student_required
def snapshot(name: str) -> ResponseReturnValue:
    owned = _mine(name)
    wanted = request.form.get("snapshot", "").strip()
    try:
        check_name(wanted, "snapshot name")
    except LabkitError as err:
        flash(f"No snapshot taken: {err}.", "error")
        return _to_machine(owned)
    state, who = services(), actor()

    def run(progress: Reporter) -> dict[str, Any]:
        progress(ProgressEvent("snapshot", 0, 1, f"copying the disk of {owned.machine} to {wanted}"))
        state.machines(who).snapshot(owned.name, wanted)
        kind = next((s["kind"] for s in state.machines(who).snapshots(owned.name) if s["name"] == wanted), "disk")
        progress(ProgressEvent("snapshot", 1, 1, f"snapshot {wanted} taken ({kind})"))
        return {"machine": owned.name, "snapshot": wanted, "kind": kind}

    _machine_job(owned, "snapshot", run, "A snapshot of")
    return _to_machine(owned)


def _snapshot_or_404(owned: OwnedMachine, snap: str) -> dict[str, object]:
    found = next((s for s in _portal().snapshots(owned.name) if s["name"] == snap), None)
    if found is None:
        abort(404)
    return found


@bp.get("/machines/<name>/snapshots/<snap>/restore")
@student_required
def restore_confirm(name: str, snap: str) -> ResponseReturnValue:
    owned = _mine(name)
    chosen = _snapshot_or_404(owned, snap)
    view = _portal().machine(owned.name, owned.machine)
    return render_template("student/confirm.html", owned=owned, machine=view, action="restore", snapshot=chosen,
                           form_action=url_for(".restore", name=owned.name, snap=snap))


@bp.post("/machines/<name>/snapshots/<snap>/restore")
@student_required
def restore(name: str, snap: str) -> ResponseReturnValue:
    owned = _mine(name)
    chosen = _snapshot_or_404(owned, snap)
    if request.form.get("confirm") != "yes":
        abort(400, "Restore needs the confirmation from the restore page: nothing was changed.")
    state, who = services(), actor()
    current = _state_of(state, who, owned.name)
    if is_live(current):
        flash(f"{owned.machine} is {current}: stop it first, then restore {snap}. Nothing was changed.", "error")
        return _to_machine(owned)

    def run(progress: Reporter) -> dict[str, Any]:
        progress(ProgressEvent("restore", 0, 1, f"bringing back {snap}"))
        state.machines(who).restore(owned.name, snap, start=False)
        if chosen["kind"] == RUNNING_STATE:  # it goes on where it was: started through the course, within its budget
            progress(ProgressEvent("restore", 0, 1, f"starting {owned.machine} where it was at {snap}"))
            state.courses(who).start(owned.course, student=owned.student, machine=owned.machine, lab=owned.lab,
                                     progress=progress)
        after = _state_of(state, who, owned.name)
        progress(ProgressEvent("restore", 1, 1, f"{owned.machine} is back at {snap} ({after})"))
        return {"machine": owned.name, "snapshot": snap, "state": after}

    _machine_job(owned, "restore", run, "Restoring")
    return _to_machine(owned)


@bp.post("/machines/<name>/snapshots/<snap>/delete")
@student_required
def delete_snapshot(name: str, snap: str) -> ResponseReturnValue:
    owned = _mine(name)
    _snapshot_or_404(owned, snap)
    services().machines(actor()).delete_snapshot(owned.name, snap)  # a file removal: quick, no job
    flash(f"Snapshot {snap} deleted.", "success")
    return _to_machine(owned)


# ---- self-check and submit ---------------------------------------------------------------------------------------
def _lab_target(place: Enrollment) -> str:
    """Job targets are unique across courses: the course, the student and the lab."""
    return f"{place.course}/{place.student}/{place.lab}"


@bp.post("/courses/<course>/labs/<lab>/self-check")
@student_required
def self_check(course: str, lab: str) -> ResponseReturnValue:
    place = _enrolled(course, lab)
    state, who = services(), actor()

    def run(progress: Reporter) -> dict[str, Any]:
        progress(ProgressEvent("self-check", 0, 1, "running the checks"))
        report = state.grading(who).self_check(place.course, place.student, place.lab)
        grades = [g for g in report.grades if g.lab == place.lab]
        passed = sum(g.passed for g in grades)
        checks = sum(len(g.results) for g in grades)
        progress(ProgressEvent("self-check", 1, 1, f"{passed} of {checks} checks pass"))
        return {"run": report.run_id, "passed": passed, "checks": checks}

    _submit("self-check", f"check:{_lab_target(place)}", place.course_id, run, "A self-check")
    return redirect(url_for(".lab_page", course=place.course, lab=place.lab) + "#self-check", 303)


@bp.post("/courses/<course>/labs/<lab>/submit")
@student_required
def submit(course: str, lab: str) -> ResponseReturnValue:
    place = _enrolled(course, lab)
    state, who = services(), actor()

    def run(progress: Reporter) -> dict[str, Any]:
        from labkit.services.exams import Exams

        progress(ProgressEvent("submit", 0, 1, "checking and freezing your machines"))
        views = Exams(state.settings, state.db, who).submit(place.course, place.student, place.lab)  # final in exams
        progress(ProgressEvent("submit", 1, 1, "submitted"))
        return {"submissions": [{"id": v.id, "created_at": v.created_at.isoformat(), "machines": v.machines}
                                for v in views]}

    _submit("submit", f"submit:{_lab_target(place)}", place.course_id, run, "A submission")
    return redirect(url_for(".lab_page", course=place.course, lab=place.lab) + "#submit", 303)
