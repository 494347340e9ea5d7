"""Packet capture for the instructor: every lab network of every student of their course, each with a Capture
button that downloads a pcap (web/capture.py streams it; the services check that the course is theirs)."""

from __future__ import annotations

from flask import render_template
from flask.typing import ResponseReturnValue

from web.access import instructor_required, owned_course_or_404
from web.capture import DURATIONS, course_networks, pcap_download
from web.instructor import bp


@bp.get("/courses/<course>/capture")
@instructor_required
def capture_page(course: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)
    return render_template("instructor/capture.html", course=owned.name, networks=course_networks(owned.name),
                           durations=DURATIONS)


@bp.post("/courses/<course>/students/<student>/labs/<lab>/capture/<network>")
@instructor_required
def capture(course: str, student: str, lab: str, network: str) -> ResponseReturnValue:
    owned = owned_course_or_404(course)
    return pcap_download(owned.name, student, lab, network)
