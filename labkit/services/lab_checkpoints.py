"""Lab checkpoints: one student's whole lab saved and brought back under one name.

A checkpoint named ``NAME`` is a snapshot named ``NAME`` on every machine of the student's lab (`Machines.snapshot`),
so each machine's page lists it too. Taking one is all-or-nothing: a name already used on any machine is refused
before anything is copied, and when one machine's snapshot fails the others taken so far are deleted again.
Restoring one is refused, with nothing changed, when any machine lacks the snapshot; the lab is stopped first, then
every machine gets its snapshot back (each machine's replaced disk is kept as ``before-restore-<time>``, as for any
restore), and with ``start`` the lab starts again in ``depends_on`` order, through the course (its memory budget
applies). CLI: ``labkit checkpoint``; web: the student's workspace.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from labkit.errors import ConflictError, LabkitError, NotFoundError
from labkit.names import check_name
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.services.course_admission import Target
from labkit.services.courses import Courses
from labkit.services.machine_states import RUNNING_STATE, is_live


@dataclass(frozen=True)
class Checkpoint:
    """A name with the lab machines that hold a snapshot of it; ``complete`` when all of them do."""

    name: str
    machines: tuple[str, ...]
    missing: tuple[str, ...]
    created_at: dt.datetime

    @property
    def complete(self) -> bool:
        return not self.missing


class LabCheckpoints(Courses):
    """``LabCheckpoints(settings, db, actor).take(course, student, lab, name)``, ``.restore``, ``.checkpoints``."""

    def _lab_targets(self, course: str, student: str, lab: str) -> list[Target]:
        return sorted(self.targets(course, student, None, lab), key=lambda t: (t.wave, t.machine))

    def checkpoints(self, course: str, student: str, lab: str) -> list[Checkpoint]:
        """Every snapshot name found on a machine of the lab, oldest first, with the machines lacking it."""
        targets = self._lab_targets(course, student, lab)
        found: dict[str, dict[str, dt.datetime]] = {}
        for target in targets:
            for snap in self.machines.snapshots(target.name):
                found.setdefault(str(snap["name"]), {})[target.machine] = dt.datetime.fromisoformat(
                    str(snap["created_at"]))
        every = sorted(t.machine for t in targets)
        points = [Checkpoint(name, tuple(m for m in every if m in have), tuple(m for m in every if m not in have),
                             min(have.values())) for name, have in found.items()]
        return sorted(points, key=lambda c: (c.created_at, c.name))

    def take(self, course: str, student: str, lab: str, name: str,
             progress: Reporter = silent) -> Checkpoint:
        """A snapshot ``name`` of every machine of the lab, or of none."""
        check_name(name, "checkpoint name")
        targets = self._lab_targets(course, student, lab)
        clash = sorted(t.machine for t in targets if any(s["name"] == name for s in self.machines.snapshots(t.name)))
        if clash:
            raise ConflictError(f"checkpoint {name!r} already exists on {', '.join(clash)}: pick another name "
                                "(nothing was saved)")
        taken: list[Target] = []
        for done, target in enumerate(targets):
            progress(ProgressEvent("checkpoint", done, len(targets), f"saving {target.machine}"))
            try:
                self.machines.snapshot(target.name, name)
            except LabkitError as err:
                for kept in taken:
                    self.machines.delete_snapshot(kept.name, name)
                raise LabkitError(f"checkpoint {name} not taken: {target.machine}: {err} (nothing was kept)") from err
            taken.append(target)
        progress(ProgressEvent("checkpoint", len(targets), len(targets), f"checkpoint {name} taken"))
        return next(c for c in self.checkpoints(course, student, lab) if c.name == name)

    def restore(self, course: str, student: str, lab: str, name: str, start: bool = False,
                progress: Reporter = silent) -> list[dict[str, object]]:
        """Every machine of the lab back at checkpoint ``name`` (the lab is stopped first); with ``start``, or when
        the checkpoint kept running states, the lab starts again. Returns the machines' status rows."""
        targets = self._lab_targets(course, student, lab)
        kinds: dict[str, str] = {}
        missing = []
        for target in targets:
            snap = next((s for s in self.machines.snapshots(target.name) if s["name"] == name), None)
            if snap is None:
                missing.append(target.machine)
            else:
                kinds[target.machine] = str(snap["kind"])
        if missing:
            what = "has" if len(missing) == 1 else "have"
            raise NotFoundError(f"checkpoint {name!r} is not complete: {', '.join(missing)} {what} no snapshot "
                                f"{name!r} (nothing was restored)")
        live = [t for t in targets if is_live(self.machines.status(t.name)[0].state)]
        if live:
            progress(ProgressEvent("restore", 0, len(targets), f"stopping {', '.join(t.machine for t in live)}"))
            self.stop(course, student=student, lab=lab)
        for done, target in enumerate(targets):
            progress(ProgressEvent("restore", done, len(targets), f"bringing {target.machine} back to {name}"))
            self.machines.restore(target.name, name)
        if start or RUNNING_STATE in kinds.values():
            return self.start(course, student=student, lab=lab, progress=progress)
        progress(ProgressEvent("restore", len(targets), len(targets), f"the lab is back at {name} (stopped)"))
        return self.status(course, student, None, lab)
