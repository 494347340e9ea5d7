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
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, abort, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import OptionsDict
from markupsafe import escape

from labkit.errors import LabkitError
from labkit.labs.guide import RUN_OPTION
from labkit.names import check_name
from labkit.progress import ProgressEvent, Reporter
from labkit.services.accounts import OwnedMachine, UserView
from labkit.services.jobs import JobView
from labkit.services.machine_states import RUNNING_STATE, is_live
from labkit.services.portal import Enrollment, Portal, PortalMachine
from web.access import actor, current_user, owned_machine_or_404, student_required
from web.capture import DURATIONS, lab_networks, pcap_download
from web.state import WebState, services

bp = Blueprint("student", __name__, url_prefix="/my")

#: raw HTML in instructions stays text (labs are shared between instructors); links are checked by markdown-it
_MARKDOWN = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
#: the workspace's guide: the same, and a code block whose info string says ``run=<machine>`` (labkit.labs.guide)
#: is marked ``data-run`` for its "Run in" button, when the machine is one of the student's in this lab
_GUIDE = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")


def _fence(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict,
           env: dict[str, Any]) -> str:
    html = RendererHTML.fence(renderer, tokens, idx, options, env)
    run = RUN_OPTION.search(tokens[idx].info)
    if run and run.group(1) in env.get("machines", ()) and html.startswith("<pre>"):
        return f'<pre data-run="{escape(run.group(1))}">' + html[len("<pre>"):]
    return html


_GUIDE.add_render_rule("fence", _fence)
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
    """The lab's workspace: the guide in its steps beside a terminal tab for every machine (docs/web.md)."""
    place = _enrolled(course, lab)
    target = _lab_target(place)
    state = services()
    jobs = _recent_jobs(None)  # first: see index()
    portal = _portal()
    machines = _lab_machines(place, portal)
    problem, space = None, None
    try:
        space = portal.workspace(place.course, place.student, place.lab)
    except LabkitError as err:  # a broken lab: say so on the page; the rest of it still works
        problem = str(err)
    hidden = space.feedback_hidden if space else False
    newest = {} if hidden else _newest_results(state, place)
    from labkit.services.submissions import Submissions

    submitted = [s for s in Submissions(state.settings, state.db, actor()).list(place.course, place.student)
                 if s.lab == place.lab]
    checkpoints = _checkpoints(place) if machines else []
    names = {m.machine for m in machines}
    render = (lambda text: _GUIDE.render(text, {"machines": names})) if space else (lambda text: "")
    return render_template("student/lab.html", place=place, space=space, problem=problem, render=render,
                           newest=newest, feedback_hidden=hidden, submissions=list(reversed(submitted)),
                           machines=machines, jobs=jobs, target=target, checkpoints=checkpoints)


def _lab_machines(place: Enrollment, portal: Portal | None = None) -> list[PortalMachine]:
    """The student's machines of this lab, by lab machine name, in their real states."""
    return [m for p in (portal or _portal()).labs_of(_user())
            if (p.enrollment.course, p.enrollment.lab) == (place.course, place.lab) for m in p.machines]


def _newest_results(state: WebState, place: Enrollment) -> dict[str, tuple[Any, dt.datetime, str]]:
    """Each visible check's newest self-check result (check id -> result, when, title): a step's Check runs only
    that step's checks, so the newest result of a check may come from any earlier run."""
    newest: dict[str, tuple[Any, dt.datetime, str]] = {}
    for grade in state.grading(actor()).grades.history(place.course, place.student, place.lab, include_hidden=False,
                                                        kinds=("self-check",)):
        for result in grade.results:
            newest[result.check_id] = (result, grade.graded_at, grade.titles.get(result.check_id, result.check_id))
    return newest


def _checkpoints(place: Enrollment) -> list[Any]:
    from labkit.services.lab_checkpoints import LabCheckpoints

    state = services()
    try:
        return LabCheckpoints(state.settings, state.db, actor()).checkpoints(place.course, place.student, place.lab)
    except LabkitError:  # not provisioned yet: no machines, no checkpoints
        return []


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
        needed = sorted(str(row["machine"]) for row in rows if row["name"] != owned.name)
        also = f" (and {', '.join(needed)}, which it depends on)" if needed else ""
        progress(ProgressEvent("start", 1, 1, f"{owned.machine} is {after}{also}"))
        return {"machine": owned.name, "state": after, **({"also_started": needed} if needed else {})}

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


def _to_lab(place: Enrollment, anchor: str = "") -> ResponseReturnValue:
    return redirect(url_for(".lab_page", course=place.course, lab=place.lab) + anchor, 303)


def _lab_job(place: Enrollment, kind: str, run: Callable[[Reporter], dict[str, Any] | None], what: str,
             anchor: str = "", target: str = "") -> ResponseReturnValue:
    """Queue a job of the whole lab (target ``lab:course/student/lab`` unless given) and go back to the workspace
    at ``anchor``, where its progress shows."""
    _submit(kind, target or f"lab:{_lab_target(place)}", place.course_id, run, what)
    return _to_lab(place, anchor)


def _self_check(place: Enrollment, step: str | None = None) -> Callable[[Reporter], dict[str, Any]]:
    """The job of a student's self-check of the lab (or of one guide step's checks)."""
    state, who = services(), actor()
    of = "" if step is None else " of this step"

    def run(progress: Reporter) -> dict[str, Any]:
        progress(ProgressEvent("self-check", 0, 1, "running the checks" if step is None else f"checking step {step}"))
        report = state.grading(who).self_check(place.course, place.student, place.lab, step=step)
        grades = [g for g in report.grades if g.lab == place.lab]
        passed = sum(g.passed for g in grades)
        checks = sum(len(g.results) for g in grades)
        progress(ProgressEvent("self-check", 1, 1, f"{passed} of {checks} checks{of} pass"))
        return {"run": report.run_id, **({} if step is None else {"step": step}), "passed": passed, "checks": checks}

    return run


def _states(rows: list[dict[str, object]]) -> tuple[dict[str, str], str]:
    """Each lab machine's state from a lab-wide start or restore's rows, and the same as one line (by name)."""
    states = {str(row["machine"]): str(row["state"]) for row in rows}
    return states, ", ".join(f"{m} {s}" for m, s in sorted(states.items()))


@bp.post("/courses/<course>/labs/<lab>/self-check")
@student_required
def self_check(course: str, lab: str) -> ResponseReturnValue:
    place = _enrolled(course, lab)
    return _lab_job(place, "self-check", _self_check(place), "A self-check", "#self-check",
                    f"check:{_lab_target(place)}")


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

    return _lab_job(place, "submit", run, "A submission", "#submit", f"submit:{_lab_target(place)}")


# ---- the workspace's lab-wide actions ----------------------------------------------------------------------------
@bp.post("/courses/<course>/labs/<lab>/start")
@student_required
def start_lab(course: str, lab: str) -> ResponseReturnValue:
    """Every machine of the lab, in ``depends_on`` order (through the course: its memory budget applies)."""
    place = _enrolled(course, lab)
    state, who = services(), actor()

    def run(progress: Reporter) -> dict[str, Any]:
        rows = state.courses(who).start(place.course, student=place.student, lab=place.lab, progress=progress)
        states, line = _states(rows)
        progress(ProgressEvent("start", len(rows), len(rows), line))
        return {"machines": states}

    return _lab_job(place, "start-lab", run, "Starting the lab")


@bp.post("/courses/<course>/labs/<lab>/stop")
@student_required
def stop_lab(course: str, lab: str) -> ResponseReturnValue:
    place = _enrolled(course, lab)
    state, who = services(), actor()

    def run(progress: Reporter) -> dict[str, Any]:
        rows = state.courses(who).stop(place.course, student=place.student, lab=place.lab, progress=progress)
        progress(ProgressEvent("stop", len(rows), len(rows), "every machine of the lab is stopped"))
        return {"machines": {str(row["machine"]): str(row["state"]) for row in rows}}

    return _lab_job(place, "stop-lab", run, "Stopping the lab")


@bp.post("/courses/<course>/labs/<lab>/checkpoints")
@student_required
def take_checkpoint(course: str, lab: str) -> ResponseReturnValue:
    """A snapshot of the same name on every machine of the lab (`LabCheckpoints.take`: all or nothing)."""
    place = _enrolled(course, lab)
    wanted = request.form.get("checkpoint", "").strip()
    try:
        check_name(wanted, "checkpoint name")
    except LabkitError as err:
        flash(f"No checkpoint taken: {err}.", "error")
        return _to_lab(place, "#checkpoints")
    state, who = services(), actor()

    def run(progress: Reporter) -> dict[str, Any]:
        from labkit.services.lab_checkpoints import LabCheckpoints

        point = LabCheckpoints(state.settings, state.db, who).take(place.course, place.student, place.lab, wanted,
                                                                   progress=progress)
        return {"checkpoint": point.name, "machines": list(point.machines)}

    return _lab_job(place, "checkpoint", run, "A checkpoint of the lab", "#checkpoints")


@bp.post("/courses/<course>/labs/<lab>/checkpoints/<name>/restore")
@student_required
def restore_checkpoint(course: str, lab: str, name: str) -> ResponseReturnValue:
    """The whole lab back at a checkpoint; refused (nothing changed) when a machine lacks it."""
    place = _enrolled(course, lab)
    if request.form.get("confirm") != "yes":
        abort(400, "Restoring a checkpoint needs its confirmation: nothing was changed.")
    point = next((c for c in _checkpoints(place) if c.name == name), None)
    if point is None:
        abort(404)
    if not point.complete:
        flash(f"Checkpoint {name} cannot be restored: {', '.join(point.missing)} has no snapshot {name}. "
              "Nothing was changed.", "error")
        return _to_lab(place, "#checkpoints")
    state, who = services(), actor()
    was_live = any(m.live for m in _lab_machines(place))

    def run(progress: Reporter) -> dict[str, Any]:
        from labkit.services.lab_checkpoints import LabCheckpoints

        rows = LabCheckpoints(state.settings, state.db, who).restore(place.course, place.student, place.lab, name,
                                                                     start=was_live, progress=progress)
        states, line = _states(rows)
        progress(ProgressEvent("restore", 1, 1, f"back at {name}: {line}"))
        return {"checkpoint": name, "machines": states}

    return _lab_job(place, "restore-checkpoint", run, "Restoring a checkpoint", "#checkpoints")


@bp.post("/courses/<course>/labs/<lab>/steps/<step>/check")
@student_required
def check_step(course: str, lab: str, step: str) -> ResponseReturnValue:
    """The self-check of one guide step: only its (visible) checks run; its feedback shows under the step."""
    place = _enrolled(course, lab)
    try:
        space = _portal().workspace(place.course, place.student, place.lab)
    except LabkitError:
        abort(404)
    if step not in space.step_checks or not space.step_checks[step]:
        abort(404)
    return _lab_job(place, "self-check", _self_check(place, step), "A check of this step", f"#step-{step}",
                    f"check:{_lab_target(place)}:{step}")

# ---- packet capture (web/capture.py; the buttons are student/_capture.html) -----------------------------------------
@bp.post("/courses/<course>/labs/<lab>/capture/<network>")
@student_required
def capture(course: str, lab: str, network: str) -> ResponseReturnValue:
    place = _enrolled(course, lab)
    return pcap_download(place.course, place.student, place.lab, network)


@bp.context_processor
def _capture_helpers() -> dict[str, Any]:
    return {"capture_networks": lab_networks, "capture_durations": DURATIONS}
