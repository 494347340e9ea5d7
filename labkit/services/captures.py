"""Packet capture of a student's lab network: for the student (their own labs only), the course's instructor (any
student of the course) and the CLI's operator.

A network is found by name among the networks the student's machines of one lab join, as provisioning recorded them
(`Machine.networks`: the name and the switch folder, one folder per course, student and lab, so two students'
networks of the same name are two switches). The name a user gives is only ever compared with those names; the folder
comes from the database and must lie under the installation's ``run/net``. A network the user may not capture is
"not found", exactly like one that does not exist, so nobody learns what others have.

The capture itself is the backend's (`Backend.open_tap`): a plug on the switch, recorded with the actor as its owner,
ended by its PID when the duration, the size cap or the reader ends it. Each capture is in the audit log.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from labkit.config import Settings
from labkit.errors import BadNameError, ConfigError, NotFoundError
from labkit.names import check_name
from labkit.runtime import get_backend
from labkit.runtime.base import NetworkSpec
from labkit.runtime.capture import CaptureStats, PcapStream, pcap_chunks
from labkit.services.accounts import Accounts, UserView
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.models import Assignment, Course, CourseLab, Machine, Student

#: the longest capture the web app takes (a download holds a request thread that long)
WEB_MAX_SECONDS = 60
#: the longest capture at all (the CLI)
MAX_SECONDS = 3600
#: the largest pcap file a capture writes; it stops before the first packet that does not fit
MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class LabNetwork:
    """One lab network of one student: what a user sees of it (no paths: those are the server's)."""

    course: str
    student: str
    lab: str
    network: str
    #: the lab's machines plugged into it
    machines: tuple[str, ...]

    @property
    def filename(self) -> str:
        """A download name made of checked names only."""
        return f"{self.course}-{self.student}-{self.lab}-{self.network}.pcap"


@dataclass(frozen=True)
class _Place:
    network: LabNetwork
    folder: Path
    backend: str


@dataclass
class Capture:
    """A running capture: iterate `chunks` once for the pcap bytes; `stats` says what it got and why it stopped."""

    network: LabNetwork
    seconds: float
    chunks: PcapStream
    stats: CaptureStats
    #: False when the switch is not a hub (started before lab networks were): it shows broadcasts and its own only
    sees_all: bool


def check_seconds(seconds: float, limit: float = MAX_SECONDS) -> float:
    """Refuse a duration that is not a number of seconds above 0 and at most ``limit``."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= limit:
        raise BadNameError(f"capture duration {seconds!r} must be more than 0 and at most {limit:g} seconds")
    return float(seconds)


class Captures:
    """``Captures(settings, db, actor).start(course, student, network, seconds=10, user=...)``."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()

    def _places(self, course: str, student: str | None, lab: str | None, user: UserView | None) -> list[_Place]:
        """The student's (None: every student's) lab networks the user may capture (``user`` None: the operator,
        every one)."""
        check_name(course, "course name")
        if student is not None:
            check_name(student, "student id")
        if lab is not None:
            check_name(lab, "lab name")
        query = (select(Student.sid, CourseLab.lab_id, Assignment.machine, Machine.name, Machine.networks,
                        Machine.backend)
                 .select_from(Assignment).join(Machine, Assignment.machine_id == Machine.id)
                 .join(Student, Assignment.student_id == Student.id)
                 .join(CourseLab, Assignment.course_lab_id == CourseLab.id)
                 .join(Course, CourseLab.course_id == Course.id)
                 .where(Course.name == course, Student.archived_at.is_(None))
                 .order_by(Student.sid, CourseLab.id, Assignment.machine))
        if student is not None:
            query = query.where(Student.sid == student)
        if lab is not None:
            query = query.where(CourseLab.lab_id == lab)
        allowed = None
        if user is not None:  # the web: the student's own machines, or those of a course the instructor owns
            allowed = {m.name for m in Accounts(self.settings, self.db).machines_of(user, course)}
        found: dict[tuple[str, str, str], tuple[list[str], str, str]] = {}
        with self.db.read() as session:
            for sid, lab_id, machine, name, networks, backend in session.execute(query):
                if allowed is not None and name not in allowed:
                    continue
                for net, folder in networks or []:
                    machines, _, _ = found.setdefault((sid, lab_id, net), ([], folder, backend))
                    machines.append(machine)
        return [_Place(LabNetwork(course, sid, lab_id, net, tuple(machines)), Path(folder), backend)
                for (sid, lab_id, net), (machines, folder, backend) in found.items()]

    def networks(self, course: str, student: str | None, *, lab: str | None = None,
                 user: UserView | None = None) -> list[LabNetwork]:
        """The student's (None: every active student's) lab networks (of one lab, or all) that ``user`` may
        capture."""
        return [place.network for place in self._places(course, student, lab, user)]

    def _find(self, course: str, student: str, network: str, lab: str | None, user: UserView | None) -> _Place:
        check_name(network, "network name")
        places = [p for p in self._places(course, student, lab, user) if p.network.network == network]
        where = f" of lab {lab}" if lab is not None else ""
        if not places:
            raise NotFoundError(f"student {student} of course {course} has no lab network {network}{where} that you "
                                "may capture")
        if len(places) > 1:
            labs = ", ".join(p.network.lab for p in places)
            raise BadNameError(f"network {network} is in more than one lab of {student} ({labs}); name the lab")
        place = places[0]
        nets = (self.settings.run_dir / "net").resolve()
        if not place.folder.resolve().is_relative_to(nets):
            raise ConfigError(f"the recorded folder of network {network} is not under {nets}; refusing to use it")
        return place

    def start(self, course: str, student: str, network: str, *, seconds: float, lab: str | None = None,
              user: UserView | None = None, limit: float = MAX_SECONDS, max_bytes: int = MAX_BYTES,
              stop: threading.Event | None = None) -> Capture:
        """Start capturing the network now; the caller iterates the capture's chunks (the plug ends when they end,
        when ``stop`` is set, or when the caller closes them early)."""
        seconds = check_seconds(seconds, limit)
        place = self._find(course, student, network, lab, user)
        spec = NetworkSpec(network, place.folder)
        backend = get_backend(place.backend)
        tap = backend.open_tap(spec, owner=self.actor, seconds=seconds)
        try:
            with self.db.transaction() as session:
                record(session, self.actor, "capture", f"{course}/{student}/{place.network.lab}/{network}",
                       f"{seconds:g} s")
        except BaseException:
            tap.close()
            raise
        stats = CaptureStats()
        return Capture(place.network, seconds, pcap_chunks(tap, seconds, max_bytes, stats, stop), stats, tap.sees_all)
