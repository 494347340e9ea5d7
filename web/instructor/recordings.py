"""Replaying a student's console recordings (asciicast v2, written by the machine's supervisor) in the browser with
asciinema-player, with markers where the student ran a self-check or submitted. The course's owner only."""

from __future__ import annotations

import datetime as dt

from flask import abort, render_template, request, send_file
from flask.typing import ResponseReturnValue

from labkit.errors import NotFoundError
from labkit.services.accounts import OwnedMachine
from labkit.services.recordings import Recordings
from web import DEFAULT_CSP
from web.access import instructor_required, owned_course_or_404, owned_machine_or_404
from web.instructor import bp
from web.state import services

#: asciinema-player runs its terminal emulator as WebAssembly, which Chromium only compiles with this source keyword
REPLAY_CSP = DEFAULT_CSP.replace("script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'")


def _course_machine(course: str, name: str) -> tuple[str, OwnedMachine]:
    """The course (owned by this instructor) and its machine ``name``; 404 for anything else."""
    owned = owned_course_or_404(course)
    machine = owned_machine_or_404(name)
    if machine.course_id != owned.id:
        abort(404)
    return owned.name, machine


def _recordings() -> Recordings:
    return Recordings(services().settings, services().db)


@bp.get("/courses/<course>/recordings/<name>")
@instructor_required
def recordings(course: str, name: str) -> ResponseReturnValue:
    """The machine's recordings, newest first, and one of them (``?r=<id>``, default the newest that is not an
    instructor watching) in the player."""
    course_name, machine = _course_machine(course, name)
    found = _recordings().of_machine(machine.name)
    wanted = request.args.get("r")
    # by default the newest session someone typed in (an instructor watching is rarely what is looked for)
    default = next((r for r in found if not r.read_only), found[0] if found else None)
    chosen = next((r for r in found if r.id == wanted), None) if wanted else default
    if wanted and chosen is None:
        abort(404)
    markers = _recordings().markers(machine.name, chosen) if chosen else []
    response = render_template(
        "instructor/recordings.html", course=course_name, machine=machine, recordings=found, chosen=chosen,
        markers=markers, when=lambda t: dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S"))
    return response, 200, {"Content-Security-Policy": REPLAY_CSP}


@bp.get("/courses/<course>/recordings/<name>/<recording>.cast")
@instructor_required
def recording_file(course: str, name: str, recording: str) -> ResponseReturnValue:
    """One recording for the player, with the self-check and submission markers in it; ``?download=1``: the file as
    the supervisor wrote it (``asciinema play`` replays either)."""
    _, machine = _course_machine(course, name)
    try:
        if request.args.get("download") == "1":  # the file as recorded
            return send_file(_recordings().path(machine.name, recording), mimetype="application/x-asciicast",
                             as_attachment=True, download_name=f"{machine.name}-{recording}.cast", max_age=0)
        data = _recordings().cast_with_markers(machine.name, recording)
    except NotFoundError:
        abort(404)
    return data, 200, {"Content-Type": "application/x-asciicast", "Cache-Control": "no-store"}
