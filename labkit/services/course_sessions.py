"""Teaching sessions: begin one, see what ending it would do, and end it (each-session labs are frozen as graded
submissions, every machine is stopped, those labs are reset; persist labs are kept)."""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from labkit.errors import ConflictError, LabkitError, NotFoundError
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.services.audit import record
from labkit.services.course_actions import CourseActions
from labkit.services.course_records import RESET_EACH_SESSION
from labkit.services.lookup import course_by_name
from labkit.services.machines import LIVE
from labkit.services.models import ClassSession

#: students whose each-session labs a session end grades and freezes at once
SUBMIT_WORKERS = 4


class CourseSessions(CourseActions):
    """``labkit course session ...`` (part of `labkit.services.courses.Courses`)."""

    # ---- sessions ----------------------------------------------------------------------------------------------
    def session_begin(self, name: str) -> dict[str, object]:
        with self._locked(name), self.db.transaction() as session:
            course = course_by_name(session, name)
            open_ = session.scalar(select(ClassSession).where(ClassSession.course_id == course.id,
                                                              ClassSession.ended_at.is_(None)))
            if open_ is not None:
                raise ConflictError(f"course {name} already has a session begun at {open_.begun_at:%Y-%m-%d %H:%M} "
                                    f"by {open_.begun_by}")
            started = ClassSession(course_id=course.id, begun_by=self.actor)
            session.add(started)
            record(session, self.actor, "session-begin", name)
            session.flush()
            return {"course": name, "session": started.id, "begun_at": started.begun_at.isoformat()}

    def session_plan(self, name: str) -> dict[str, object]:
        """What ending the session now would do: machines stopped, machines of each-session labs frozen as
        submissions (graded) and reset, and those labs."""
        with self.db.transaction() as session:
            policies = {cl.lab_id: cl.reset_policy for cl in course_by_name(session, name).labs}
        try:
            targets = self.targets(name)
        except NotFoundError:
            targets = []
        live = {v.name for v in self.machines.status(names=[t.name for t in targets])
                if v.state in {s.value for s in LIVE}}
        resets = [t for t in targets if policies[t.lab] == RESET_EACH_SESSION]
        return {"course": name, "machines": len(targets), "running": sum(1 for t in targets if t.name in live),
                "reset": len(resets), "students": len({t.student for t in resets}),
                "reset_labs": sorted(lab for lab, policy in policies.items() if policy == RESET_EACH_SESSION)}

    def session_end(self, name: str, progress: Reporter = silent) -> dict[str, object]:
        """End the session: freeze every student's machines of ``each-session`` labs as a submission, graded live
        while they still run (`labkit.services.submissions`), stop every machine cleanly, then reset those labs'
        overlays; ``persist`` labs are kept. A student whose lab could not be frozen is not reset."""
        with self._locked(name):
            with self.db.transaction() as session:
                course = course_by_name(session, name)
                current = session.scalar(select(ClassSession).where(ClassSession.course_id == course.id,
                                                                    ClassSession.ended_at.is_(None)))
                if current is None:
                    raise ConflictError(f"course {name} has no session to end; begin one with "
                                        f"'labkit course session begin {name}'")
                policies = {cl.lab_id: cl.reset_policy for cl in course.labs}
            try:
                targets = self.targets(name)
            except NotFoundError:
                targets = []
            resets = [t for t in targets if policies[t.lab] == RESET_EACH_SESSION]
            submitted: list[dict[str, object]] = []
            failed: dict[tuple[str, str], str] = {}
            pairs = sorted({(t.student, t.lab) for t in resets})

            def keep(pair: tuple[str, str]) -> list[dict[str, object]]:
                return self._keep(name, [t for t in resets if (t.student, t.lab) == pair], silent)

            with ThreadPoolExecutor(max_workers=SUBMIT_WORKERS) as pool:  # students are graded side by side
                futures = {pair: pool.submit(keep, pair) for pair in pairs}
                for done, (pair, future) in enumerate(futures.items(), start=1):
                    try:
                        submitted += future.result()
                    except LabkitError as err:  # no record, no reset: this student's machines stay as they are
                        failed[pair] = str(err)
                    progress(ProgressEvent("submit", done, len(pairs), "grading and freezing each-session labs"))
            self._stop(targets, 8, progress)
            resets = [t for t in resets if (t.student, t.lab) not in failed]
            for done, target in enumerate(resets, start=1):
                self.machines.reset(target.name, discard=True)  # the submission is the record
                progress(ProgressEvent("reset", done, len(resets), "resetting each-session labs"))
            with self.db.transaction() as session:
                current = session.get(ClassSession, current.id)
                assert current is not None
                current.ended_at, current.ended_by = dt.datetime.now(dt.UTC), self.actor
                record(session, self.actor, "session-end", name,
                       f"{len(targets)} stopped, {len(submitted)} labs submitted, {len(resets)} reset"
                       + (f", not reset (could not be submitted): {len(failed)}" if failed else ""))
        return {"course": name, "stopped": len(targets), "reset": len(resets), "submitted": submitted,
                "not_reset": [f"{sid}/{lab}: {why}" for (sid, lab), why in sorted(failed.items())],
                "kept": sorted({t.lab for t in targets if policies[t.lab] != RESET_EACH_SESSION})}
