"""Class-wide actions on a course's student machines: start (admitted first, `course_admission`), stop, reset, and
keeping the students' labs as submissions; each on the whole class or a part of it, side by side."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import TypeVar

from sqlalchemy import select

from labkit.errors import ConflictError, LabkitError, StateError
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.runtime.base import end_waits
from labkit.services import starting
from labkit.services.course_admission import Limits, Target, admit, default_budget_mb
from labkit.services.course_provisioning import CourseProvisioning
from labkit.services.lookup import course_by_name
from labkit.services.machines import LIVE, MachineView
from labkit.services.models import Machine
from labkit.services.submissions import Submissions
from labkit.services.sweeper import resume_paused
from labkit.services.timing import Timing, now_utc

T = TypeVar("T")


class CourseActions(CourseProvisioning):
    """``labkit course start|stop|reset|keep`` (part of `labkit.services.courses.Courses`)."""

    def _admit(self, name: str, targets: list[Target]) -> list[Target]:
        """Refuse the whole start if it would exceed the memory budget or a student's limit (nothing half-starts);
        return the targets to boot. Only the course's machines are reconciled with their processes; the others count
        as recorded (`course_admission`). Call it under the course lock."""
        live = [s.value for s in LIVE]
        with self.db.transaction() as session:
            course = course_by_name(session, name)
            limits = Limits(course.memory_budget_mb or default_budget_mb(), course.max_running_per_student,
                            {a.vm.name: s.sid for s in course.students for a in s.assignments})
            recorded = {machine: mb for machine, mb in session.execute(select(Machine.name, Machine.memory_mb)
                                                                       .where(Machine.state.in_(live)))}
        views = self.machines.status(names=sorted(limits.owners))
        elsewhere = starting.promised(self.settings.run_dir) | recorded
        return admit(self.settings.run_dir, name, targets, views, limits, elsewhere)

    def start(self, name: str, student: str | None = None, machine: str | None = None, lab: str | None = None,
              workers: int = 4, progress: Reporter = silent) -> list[dict[str, object]]:
        """Start the class (or one student / machine), lab machines in ``depends_on`` order, the rest in parallel."""
        with ExitStack() as promised:
            with self._locked(name):  # only while admitting: the boots of several starts overlap
                every = self.targets(name, student, machine, lab)
                if machine is not None:
                    every = self._with_needs(name, student, lab, every, progress)
                targets = self._in_time(name, every, student is not None)
                self._resume_paused(targets)
                wanted = self._admit(name, targets)
                self._begin_clocks(name, wanted)
                promised.enter_context(starting.promise(self.settings.run_dir, name,
                                                        {t.name: t.memory_mb for t in wanted}))
            started: dict[str, MachineView] = {}
            progress(ProgressEvent("start", 0, len(wanted), f"{len(wanted)} machines"))
            by_name = {t.name: t for t in wanted}
            for wave in sorted({t.wave for t in wanted}):
                batch = [t for t in wanted if t.wave == wave]
                for view in self._parallel(batch, lambda t: self.machines.start(t.name, timeout=180), workers):
                    started[view.name] = view
                    progress(ProgressEvent("start", len(started), len(wanted),
                                           f"{by_name[view.name].machine} is {view.state}"))
        return self._rows(every, started)  # what each start left is not read again

    def _in_time(self, name: str, targets: list[Target], one_student: bool) -> list[Target]:
        """The targets whose students may start them now (`labkit.services.timing`): a start of one student is
        refused with the reason; a class-wide start leaves those students out."""
        timing = Timing(self.settings, self.db, self.actor)
        with self.db.transaction() as session:
            refused = timing.admit(session, name, {(t.student, t.lab) for t in targets}, now_utc())
        if refused and one_student:
            raise ConflictError(next(iter(refused.values())))
        return [t for t in targets if (t.student, t.lab) not in refused]

    def _begin_clocks(self, name: str, wanted: list[Target]) -> None:
        """The first start of a student's lab begins their clock (`Attempt.began_at`); exam labs lose their
        guests' outbound network and host reach, other labs get theirs back, from this start on."""
        if not wanted:
            return
        with self.db.transaction() as session:
            Timing(self.settings, self.db, self.actor).begin(session, name, [(t.student, t.lab) for t in wanted],
                                                             now_utc())
            course = course_by_name(session, name)
            labs = {cl.lab_id: cl for cl in course.labs}
            names = {t.name: t for t in wanted}
            for machine in session.scalars(select(Machine).where(Machine.name.in_(names))):
                target = names[machine.name]
                lab = labs[target.lab]
                host_ports, outbound = ([], False) if lab.exam else self._lab(lab).reach(target.machine)
                if (sorted(machine.host_ports or []), bool(machine.outbound)) != (sorted(host_ports), outbound):
                    machine.host_ports, machine.outbound = sorted(host_ports), outbound

    def _resume_paused(self, targets: list[Target]) -> None:
        """A start of a paused machine (paused by the idle sweep, `labkit.services.sweeper`) resumes it where it
        was: the student came back."""
        with self.db.transaction() as session:  # as recorded (no process read per click): a pause records it
            paused = sorted(session.scalars(select(Machine.name).where(Machine.name.in_([t.name for t in targets]),
                                                                      Machine.state == "paused")))
        resume_paused(self.machines, paused)

    def _with_needs(self, name: str, student: str | None, lab: str | None, targets: list[Target],
                    progress: Reporter) -> list[Target]:
        """``targets`` (one lab machine's) with the machines they depend on, directly or not: a machine never starts
        before what it depends on (``depends_on`` in lab.toml), and the progress line says which were added."""
        with self.db.transaction() as session:
            labs = {cl.lab_id: cl for cl in course_by_name(session, name).labs}
            needs = {(t.lab, t.student): self._lab(labs[t.lab]).needs(t.machine) for t in targets}
        if not any(needs.values()):
            return targets
        everything = self.targets(name, student, None, lab)
        added = [t for t in everything if t.machine in needs.get((t.lab, t.student), ()) and t not in targets]
        for machine in sorted({t.machine for t in added}):
            dependants = sorted({t.machine for t in targets if machine in needs[(t.lab, t.student)]})
            progress(ProgressEvent("start", 0, None, f"also starting {machine}: {', '.join(dependants)} "
                                                     "depends on it"))
        return sorted([*added, *targets], key=lambda t: (t.wave, t.name))

    def stop(self, name: str, student: str | None = None, machine: str | None = None, lab: str | None = None,
             workers: int = 8, progress: Reporter = silent) -> list[dict[str, object]]:
        with self._locked(name):
            self._stop(self.targets(name, student, machine, lab), workers, progress)
        return self.status(name, student, machine, lab)

    def _stop(self, targets: list[Target], workers: int, progress: Reporter) -> None:
        live = {view.name for view in self.machines.status(names=[t.name for t in targets])
                if view.state in {s.value for s in LIVE}}
        wanted = [t for t in targets if t.name in live]
        for done, _ in enumerate(self._parallel(wanted, lambda t: self.machines.stop(t.name), workers), start=1):
            progress(ProgressEvent("stop", done, len(wanted), "stopping"))

    def reset(self, name: str, student: str | None = None, machine: str | None = None, lab: str | None = None,
              progress: Reporter = silent, discard: bool = False) -> list[dict[str, object]]:
        """Fresh overlays for stopped student machines (explicit; recorded per machine). Unless ``discard``, each
        student's lab is first frozen as a submission (graded as it is), so no work goes without a record."""
        with self._locked(name):
            targets = self.targets(name, student, machine, lab)
            live = {v.name: v.state for v in self.machines.status(names=[t.name for t in targets])
                    if v.state in {s.value for s in LIVE}}
            running = sorted(t.name for t in targets if t.name in live)
            if running:
                raise StateError(f"stop the machines before a reset: {', '.join(running)} "
                                 f"(labkit course stop {name})")
            if not discard:
                self._keep(name, targets, progress)
            for done, target in enumerate(targets, start=1):
                self.machines.reset(target.name, discard=True)  # the submission (or --discard) is the record
                progress(ProgressEvent("reset", done, len(targets), "resetting"))
        return self.status(name, student, machine, lab)

    def keep(self, name: str, student: str | None = None, lab: str | None = None,
             progress: Reporter = silent) -> list[dict[str, object]]:
        """Freeze and grade the students' labs as submissions now (while they run: graded live); labs never
        started are left out. What a reset does first, for callers that stop the machines in between."""
        return self._keep(name, self.targets(name, student, None, lab), progress)

    def _keep(self, name: str, targets: list[Target], progress: Reporter) -> list[dict[str, object]]:
        """Freeze (and grade) every student's lab among ``targets`` as a submission, labs never started left out.
        A failure stops everything before anything is reset."""
        pairs = sorted({(t.student, t.lab) for t in targets})
        kept: list[dict[str, object]] = []
        submissions = Submissions(self.settings, self.db, self.actor)
        for done, (sid, lab_id) in enumerate(pairs, start=1):
            for view in submissions.submit(name, sid, lab_id, skip_untouched=True):
                kept.append({"student": sid, "lab": lab_id, "submission": view.id, "points": view.points,
                             "max_points": view.max_points, "not_checked": view.not_checked})
            progress(ProgressEvent("submit", done, len(pairs), "freezing and grading before the reset"))
        return kept

    @staticmethod
    def _parallel(targets: list[Target], action: Callable[[Target], T], workers: int) -> Iterator[T]:
        """Run ``action`` on every target; report every failure together, after the others finished."""
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [(t, pool.submit(action, t)) for t in targets]
            try:
                for target, future in futures:
                    try:
                        yield future.result()
                    except LabkitError as err:
                        failures.append(f"{target.student}/{target.lab}/{target.machine}: {err}")
            except KeyboardInterrupt:  # Ctrl-C: nothing new starts, and the starts under way stop waiting
                pool.shutdown(wait=False, cancel_futures=True)
                end_waits()
                raise
        if failures:
            raise LabkitError(f"{len(failures)} of {len(targets)} machines failed: " + "; ".join(failures))
