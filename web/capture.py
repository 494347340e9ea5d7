"""Packet capture as a download: the pcap of one lab network, streamed while the capture runs (Wireshark opens it).

Shared by the student portal (their own labs: ``POST /my/courses/<course>/labs/<lab>/capture/<network>``) and the
instructor dashboard (any student of their course: ``POST /teach/courses/<course>/students/<student>/labs/<lab>/
capture/<network>``). Both are CSRF-checked POSTs with a ``duration`` of 1 to 60 seconds; the services decide what the
user may capture (a network that is not theirs is a 404, like one that does not exist). The response streams as the
frames come; when the browser goes away, the generator is closed and the capture's plug ended by its PID.
"""

from __future__ import annotations

from flask import Response, abort, request
from flask.typing import ResponseReturnValue

from labkit.errors import LabkitError
from labkit.services.accounts import UserView
from labkit.services.captures import WEB_MAX_SECONDS, Captures, LabNetwork, check_seconds
from web.access import actor, current_user
from web.state import services

#: the durations the Capture button offers (seconds)
DURATIONS = (5, 10, 30, 60)


def _captures() -> Captures:
    state = services()
    return Captures(state.settings, state.db, actor())


def _user() -> UserView:
    user = current_user()
    if user is None:
        abort(404)
    return user


def lab_networks(course: str, student: str, lab: str) -> list[LabNetwork]:
    """The lab's networks the current user may capture (for the Capture buttons)."""
    try:
        return _captures().networks(course, student, lab=lab, user=_user())
    except LabkitError:
        return []


def course_networks(course: str) -> list[LabNetwork]:
    """Every active student's lab networks of ``course`` that the current user may capture."""
    return _captures().networks(course, None, user=_user())


def duration_or_400() -> float:
    """The form's ``duration``, a number of seconds from 1 to `WEB_MAX_SECONDS`, or a 400 that says so."""
    text = request.form.get("duration", "10").strip()
    try:
        seconds = float(text)
    except ValueError:
        abort(400, f"The capture duration {text[:20]!r} is not a number of seconds.")
    try:
        return check_seconds(seconds, WEB_MAX_SECONDS)
    except LabkitError as err:
        abort(400, f"No capture: {err}.")


def pcap_download(course: str, student: str, lab: str, network: str) -> ResponseReturnValue:
    """Start the capture (errors answer before anything is sent) and stream it as an attachment."""
    seconds = duration_or_400()
    capture = _captures().start(course, student, network, lab=lab, seconds=seconds, user=_user(),
                                limit=WEB_MAX_SECONDS)
    headers = {"Content-Disposition": f'attachment; filename="{capture.network.filename}"',
               "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    return Response(capture.chunks, mimetype="application/vnd.tcpdump.pcap", headers=headers,
                    direct_passthrough=True)
