"""Courses: labs bound to a roster, provisioned for every student, started, stopped and reset as a class.

A course never touches overlays or processes itself: every student machine is an ordinary machine of the `Machines`
service (its own overlay, seed disk and audit trail), linked to the course by an `Assignment` row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, select

from labkit.atomic import locked
from labkit.config import Settings
from labkit.errors import AdmissionError, BadNameError, ConflictError, LabkitError, NotFoundError, StateError
from labkit.images.store import ImageStore
from labkit.labs.digest import changed_files, file_hashes, lab_digest
from labkit.labs.loader import load_lab
from labkit.labs.model import Lab
from labkit.labs.render import render_forwards, render_machine_files, render_startup
from labkit.labs.student import for_student
from labkit.names import check_name
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.runtime import DEFAULT_BACKEND
from labkit.runtime.base import Forward
from labkit.services import starting
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.enrolments import held_students
from labkit.services.lookup import course_by_name
from labkit.services.machines import LIVE, Machines, SeedContent
from labkit.services.models import Assignment, ClassSession, Course, CourseLab, Machine, Student
from labkit.services.roster import check_student_id, read_roster
from labkit.services.submissions import Submissions, student_folder

RESET_EACH_SESSION = "each-session"
#: students whose each-session labs a session end grades and freezes at once
SUBMIT_WORKERS = 4


@dataclass(frozen=True)
class RosterReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    #: listed students whose account belongs to another instructor's course: not enrolled here until an admin does
    held: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ProvisionReport:
    created: int
    kept: int
    upgraded: int


@dataclass(frozen=True)
class Target:
    """One student machine a class-wide action applies to."""

    student: str
    lab: str
    machine: str
    name: str
    memory_mb: int
    wave: int


def host_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def default_budget_mb() -> int:
    """Three quarters of the host's memory: the rest stays for the host, the supervisors and page cache."""
    return host_memory_mb() * 3 // 4


def machine_name(course_id: int, student_pk: int, lab_pk: int, machine: str) -> str:
    """A short, unique machine name (it becomes a umid, a run folder and a file name): c<course>s<student>l<lab>-m."""
    prefix = f"c{course_id}s{student_pk}l{lab_pk}"
    name = f"{prefix}-{machine}"
    return name if len(name) <= 32 else f"{prefix}-{hashlib.sha256(machine.encode()).hexdigest()[:8]}"


class Courses:
    """``labkit course ...``."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()
        self.machines = Machines(settings, db, self.actor)

    # ---- helpers -----------------------------------------------------------------------------------------------
    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """One class-wide action per course at a time; a second one waits for the first (then finds it done)."""
        with locked(self.settings.home / f".course-{name}.lock"):
            yield

    def _known_images(self) -> set[str]:
        return {record.name for record in ImageStore(self.settings).list()}

    def _lab(self, course_lab: CourseLab) -> Lab:
        return load_lab(Path(course_lab.path), self._known_images())

    # ---- courses -----------------------------------------------------------------------------------------------
    def create(self, name: str, labs: list[Path], memory_budget_mb: int | None = None,
               max_running_per_student: int = 4) -> dict[str, object]:
        check_name(name, "course name")
        if not labs:
            raise BadNameError("a course needs at least one lab (--lab labs/NAME)")
        if max_running_per_student < 1:
            raise BadNameError("the per-student limit of running machines must be at least 1")
        loaded = [load_lab(path, self._known_images()) for path in labs]
        ids = [lab.id for lab in loaded]
        if len(set(ids)) != len(ids):
            raise ConflictError(f"the same lab is given twice: {', '.join(ids)}")
        biggest = max(loaded, key=lambda lab: len(lab.machines))
        if len(biggest.machines) > max_running_per_student:
            # A student runs a lab's machines together: below that count the lab could never run.
            raise BadNameError(f"lab {biggest.id} needs {len(biggest.machines)} machines running at once, but the "
                               f"per-student limit of running machines is {max_running_per_student}; give "
                               f"--max-running {len(biggest.machines)} or more")
        with self.db.transaction() as session:
            if session.scalar(select(Course).where(Course.name == name)) is not None:
                raise ConflictError(f"a course named {name!r} already exists")
            course = Course(name=name, secret=secrets.token_hex(32), memory_budget_mb=memory_budget_mb,
                            max_running_per_student=max_running_per_student)
            for lab in loaded:
                course.labs.append(CourseLab(lab_id=lab.id, path=str(Path(lab.folder or ".").resolve()),
                                             version=lab.version, reset_policy=lab.reset_policy, files={}))
            session.add(course)
            record(session, self.actor, "course-create", name, ", ".join(ids))
            session.flush()
            return self._summary(course)

    def show(self, name: str) -> dict[str, object]:
        with self.db.transaction() as session:
            return self._summary(course_by_name(session, name))

    def _summary(self, course: Course) -> dict[str, object]:
        return {
            "name": course.name,
            "labs": [{"id": cl.lab_id, "path": cl.path, "version": cl.version, "reset_policy": cl.reset_policy,
                      "grade_policy": cl.grade_policy or "best", "provisioned": cl.digest is not None}
                     for cl in course.labs],
            "students": len([s for s in course.students if s.archived_at is None]),
            "archived_students": len([s for s in course.students if s.archived_at is not None]),
            "memory_budget_mb": course.memory_budget_mb or default_budget_mb(),
            "max_running_per_student": course.max_running_per_student,
        }

    def remove(self, name: str, purge: bool = False) -> None:
        """Delete a course. Its students' machines (their work) go only with ``purge``."""
        with self._locked(name):
            with self.db.transaction() as session:
                course = course_by_name(session, name)
                names = [a.vm.name for s in course.students for a in s.assignments]
                course_pk = course.id
            if names and not purge:
                raise ConflictError(f"course {name} has {len(names)} student machines; add --purge to delete them "
                                    "with the students' work")
            for machine in names:
                self._purge_machine(machine)
            shutil.rmtree(self.settings.submissions / f"c{course_pk}", ignore_errors=True)
            with self.db.transaction() as session:
                course = course_by_name(session, name)
                # the course's teaching sessions go with it (their begin and end stay in the audit log)
                session.execute(delete(ClassSession).where(ClassSession.course_id == course.id))
                session.delete(course)
                record(session, self.actor, "course-remove", name, f"{len(names)} machines purged")

    def _purge_machine(self, name: str) -> None:
        views = self.machines.status(name)
        if views and views[0].state != "stopped":
            self.machines.kill(name)
        with self.db.transaction() as session:
            for assignment in session.scalars(select(Assignment).join(Machine).where(Machine.name == name)):
                session.delete(assignment)
        self.machines.remove(name)

    # ---- roster ------------------------------------------------------------------------------------------------
    def import_roster(self, name: str, path: Path, purge: bool = False) -> RosterReport:
        """Add new students, update names, archive students no longer listed (their work stays unless ``purge``)."""
        entries = read_roster(path)
        report = RosterReport()
        to_purge: list[str] = []
        submitted: list[Path] = []
        with self._locked(name):
            with self.db.transaction() as session:
                course = course_by_name(session, name)
                current = {s.sid: s for s in course.students}
                listed = {e.sid for e in entries}
                for entry in entries:
                    student = current.get(entry.sid)
                    if student is None:
                        course.students.append(Student(sid=entry.sid, name=entry.name, email=entry.email))
                        report.added.append(entry.sid)
                        continue
                    if student.archived_at is not None:
                        student.archived_at = None
                        report.restored.append(entry.sid)
                    elif (student.name, student.email) != (entry.name, entry.email):
                        report.updated.append(entry.sid)
                    student.name, student.email = entry.name, entry.email
                for sid, student in current.items():
                    if sid not in listed and student.archived_at is None:
                        student.archived_at = dt.datetime.now(dt.UTC)
                        report.archived.append(sid)
                    if sid not in listed and purge:
                        to_purge += [a.vm.name for a in student.assignments]
                        submitted.append(student_folder(self.settings, course.id, student.id))
                        report.purged.append(sid)
                report.held.extend(h.sid for h in held_students(session, course))
                record(session, self.actor, "roster-import", name,
                       f"+{len(report.added)} ~{len(report.updated)} -{len(report.archived)} "
                       f"restored {len(report.restored)} purged {len(report.purged)}")
            for machine in to_purge:
                self._purge_machine(machine)
            for folder in submitted:
                shutil.rmtree(folder, ignore_errors=True)
            if report.purged:
                with self.db.transaction() as session:
                    course = course_by_name(session, name)
                    for student in [s for s in course.students if s.sid in report.purged]:
                        course.students.remove(student)
        return report

    def students(self, name: str) -> list[dict[str, object]]:
        with self.db.transaction() as session:
            course = course_by_name(session, name)
            return [{"id": s.sid, "name": s.name, "email": s.email,
                     "archived": s.archived_at is not None} for s in course.students]

    # ---- provisioning ------------------------------------------------------------------------------------------
    def provision(self, name: str, upgrade: bool = False, workers: int = 8,
                  progress: Reporter = silent) -> ProvisionReport:
        """Create every missing student machine (overlay, seed, parameters). Idempotent: a second run only does what
        is missing. A lab that changed since the last run is refused unless ``upgrade``: then seeds are rendered
        again, while the students' overlays (their work) stay as they are."""
        with self._locked(name):
            with self.db.transaction() as session:
                course = course_by_name(session, name)
                plans = []
                for course_lab in course.labs:
                    lab = self._lab(course_lab)
                    digest = lab_digest(Path(course_lab.path))
                    if course_lab.digest and course_lab.digest != digest and not upgrade:
                        changed = changed_files(Path(course_lab.path), course_lab.files) or ["lab.toml"]
                        raise ConflictError(
                            f"lab {lab.id} changed since course {name} was provisioned (version "
                            f"{course_lab.version} -> {lab.version}; changed: {', '.join(changed[:10])}); run "
                            "'labkit course provision --upgrade' to render the students' seed disks again (their "
                            "overlays are kept)")
                    plans.append((course_lab.id, lab, digest))
                students = [(s.id, s.sid) for s in course.students if s.archived_at is None]
                existing = {(a.course_lab_id, a.student_id, a.machine): (a.vm.name, a.digest)
                            for s in course.students for a in s.assignments}
                course_ref = (course.id, course.name, course.secret)
                live, new_digest = {s.value for s in LIVE}, {lab_pk: digest for lab_pk, _, digest in plans}
                stale_running = sorted(a.vm.name for s in course.students for a in s.assignments
                                       if a.digest != new_digest[a.course_lab_id] and a.vm.state in live)
            if stale_running:  # a seed disk cannot be replaced under a running machine
                raise ConflictError(f"stop the machines of changed labs before an upgrade: {', '.join(stale_running)} "
                                    f"(labkit course stop {name})")
            jobs: list[Callable[[], str]] = []
            for lab_pk, lab, digest in plans:
                for student_pk, sid in students:
                    jobs.append(self._student_job(course_ref, lab_pk, lab, digest, student_pk, sid, existing))
            counts = {"created": 0, "kept": 0, "upgraded": 0}
            total = len(jobs)
            progress(ProgressEvent("provision", 0, total, f"{total} student labs"))
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                for done, outcome in enumerate(pool.map(lambda job: job(), jobs), start=1):
                    for key in outcome.split(","):
                        if key:
                            counts[key] += 1
                    progress(ProgressEvent("provision", done, total, "provisioning"))
            with self.db.transaction() as session:
                course = course_by_name(session, name)
                for course_lab, (_, lab, digest) in zip(course.labs, plans, strict=True):
                    course_lab.digest, course_lab.version = digest, lab.version
                    course_lab.files = file_hashes(Path(course_lab.path))
                record(session, self.actor, "provision", name,
                       f"{counts['created']} created, {counts['upgraded']} upgraded, {counts['kept']} already there")
        return ProvisionReport(**counts)

    def _student_job(self, course_ref: tuple[int, str, str], lab_pk: int, lab: Lab, digest: str, student_pk: int,
                     sid: str, existing: dict[tuple[int, int, str], tuple[str, str]]) -> Callable[[], str]:
        def job() -> str:
            outcomes = []
            course_id, course_name, secret = course_ref
            mine = for_student(lab, course_name, sid, secret)
            topology, context = mine.topology, mine.context
            for machine_def in lab.machines.values():
                have = existing.get((lab_pk, student_pk, machine_def.name))
                if have and have[1] == digest:
                    outcomes.append("kept")
                    continue
                with tempfile.TemporaryDirectory(prefix="lkrender") as staging:
                    files = Path(staging) / "files"
                    files.mkdir()
                    render_machine_files(lab, machine_def.name, context, files)
                    interfaces = {f"eth{i}": str(topology.addresses[machine_def.name][net])
                                  for i, net in enumerate(machine_def.networks, start=1)}
                    content = SeedContent(hostname=machine_def.name, interfaces=interfaces, files_dir=files,
                                          startup_scripts=render_startup(lab, machine_def.name, context))
                    host_ports, outbound = lab.reach(machine_def.name)
                    if have:
                        self.machines.rewrite_seed(have[0], content, (list(host_ports), outbound),
                                                   backend=machine_def.backend)
                        self._link(lab_pk, student_pk, machine_def.name, have[0], digest)
                        outcomes.append("upgraded")
                        continue
                    name = machine_name(course_id, student_pk, lab_pk, machine_def.name)
                    networks = [[net, str(self.settings.run_dir / "net" / f"c{course_id}s{student_pk}l{lab_pk}-{net}")]
                                for net in machine_def.networks]
                    forwards = [Forward(0, port) for port in render_forwards(machine_def, context)]
                    self._create_machine(name, str(machine_def.image), machine_def.memory, forwards, content,
                                         networks, (list(host_ports), outbound), machine_def.backend)
                    self._link(lab_pk, student_pk, machine_def.name, name, digest)
                    outcomes.append("created")
            return ",".join(outcomes)

        return job

    def _create_machine(self, name: str, image: str, memory: int, forwards: list[Forward], content: SeedContent,
                        networks: list[list[str]], reach: tuple[list[int], bool],
                        backend: str = DEFAULT_BACKEND) -> None:
        """Create a student machine; adopt one that an interrupted run created, and clear an interrupted run's
        empty leftovers (an overlay without a machine record never booted, so it holds no work)."""
        with self.db.transaction() as session:
            if session.scalar(select(Machine).where(Machine.name == name)) is not None:
                return
        self.machines.clear_leftovers(name, backend)
        self.machines.create(name, image, memory, forwards, content=content, networks=networks,
                             host_ports=reach[0], outbound=reach[1], backend=backend)

    def _link(self, lab_pk: int, student_pk: int, machine: str, name: str, digest: str) -> None:
        with self.db.transaction() as session:
            vm = session.scalar(select(Machine).where(Machine.name == name))
            assert vm is not None
            assignment = session.scalar(select(Assignment).where(
                Assignment.course_lab_id == lab_pk, Assignment.student_id == student_pk,
                Assignment.machine == machine))
            if assignment is None:
                session.add(Assignment(course_lab_id=lab_pk, student_id=student_pk, machine=machine,
                                       machine_id=vm.id, digest=digest))
            else:
                assignment.digest = digest

    # ---- class-wide actions ------------------------------------------------------------------------------------
    def targets(self, name: str, student: str | None = None, machine: str | None = None,
                lab: str | None = None) -> list[Target]:
        if student is not None:
            check_student_id(student)
        with self.db.transaction() as session:
            course = course_by_name(session, name)
            found = []
            for course_lab in course.labs:
                if lab and course_lab.lab_id != lab:
                    continue
                waves = {m: i for i, wave in enumerate(self._lab(course_lab).start_order()) for m in wave}
                for s in course.students:
                    if s.archived_at is not None or (student and s.sid != student):
                        continue
                    for a in s.assignments:
                        if a.course_lab_id == course_lab.id and (machine is None or a.machine == machine):
                            found.append(Target(s.sid, course_lab.lab_id, a.machine, a.vm.name, a.vm.memory_mb,
                                                waves.get(a.machine, 0)))
            if not found:
                what = " ".join(f"{k} {v}" for k, v in (("student", student), ("machine", machine), ("lab", lab)) if v)
                raise NotFoundError(f"course {name} has no provisioned machines{' for ' + what if what else ''}; "
                                    "import a roster and run 'labkit course provision' first")
            return found

    def _admit(self, name: str, targets: list[Target]) -> list[Target]:
        """Refuse the whole start if it would exceed the memory budget or a student's limit (nothing half-starts).

        Machines that run, and machines another start of this course is booting right now, count as used; the
        targets among them are not started again. Call it under the course lock.
        """
        live = {s.value for s in LIVE}
        views = {view.name: view for view in self.machines.status()}
        booting = {m: mb for m, mb in starting.promised(self.settings.run_dir, name).items()
                   if m in views and views[m].state not in live}
        wanted = [t for t in targets if views[t.name].state not in live and t.name not in booting]
        with self.db.transaction() as session:
            course = course_by_name(session, name)
            budget = course.memory_budget_mb or default_budget_mb()
            per_student = course.max_running_per_student
            owners = {a.vm.name: s.sid for s in course.students for a in s.assignments}
        running = {v.name: v.memory_mb for v in views.values() if v.state in live} | booting
        used = sum(running.values())
        needed = sum(t.memory_mb for t in wanted)
        if used + needed > budget:
            by: dict[str, int] = {}
            for machine, memory in running.items():
                owner = owners.get(machine, f"machine {machine}")
                by[owner] = by.get(owner, 0) + memory
            top = ", ".join(f"{who} {mb} MB" for who, mb in sorted(by.items(), key=lambda kv: -kv[1])[:8])
            raise AdmissionError(f"starting {len(wanted)} machines needs {needed} MB, but {used} MB of the "
                                 f"{budget} MB memory budget are in use" + (f" (by {top})" if top else ""))
        counts: dict[str, int] = {}
        for machine in running:
            if machine in owners:
                counts[owners[machine]] = counts.get(owners[machine], 0) + 1
        for target in wanted:
            counts[target.student] = counts.get(target.student, 0) + 1
        over = sorted(sid for sid, n in counts.items() if n > per_student)
        if over:
            raise AdmissionError(f"students {', '.join(over)} would run more than {per_student} machines at once "
                                 "(the course's per-student limit)")
        return wanted

    def start(self, name: str, student: str | None = None, machine: str | None = None, lab: str | None = None,
              workers: int = 4, progress: Reporter = silent) -> list[dict[str, object]]:
        """Start the class (or one student / machine), lab machines in ``depends_on`` order, the rest in parallel."""
        with ExitStack() as promised:
            with self._locked(name):  # only while admitting: the boots of several starts overlap
                wanted = self._admit(name, self.targets(name, student, machine, lab))
                promised.enter_context(starting.promise(self.settings.run_dir, name,
                                                        {t.name: t.memory_mb for t in wanted}))
            done = 0
            progress(ProgressEvent("start", 0, len(wanted), f"{len(wanted)} machines"))
            for wave in sorted({t.wave for t in wanted}):
                batch = [t for t in wanted if t.wave == wave]
                for _ in self._parallel(batch, lambda t: self.machines.start(t.name, timeout=180), workers):
                    done += 1
                    progress(ProgressEvent("start", done, len(wanted), "starting"))
        return self.status(name, student, machine, lab)

    def stop(self, name: str, student: str | None = None, machine: str | None = None, lab: str | None = None,
             workers: int = 8, progress: Reporter = silent) -> list[dict[str, object]]:
        with self._locked(name):
            self._stop(self.targets(name, student, machine, lab), workers, progress)
        return self.status(name, student, machine, lab)

    def _stop(self, targets: list[Target], workers: int, progress: Reporter) -> None:
        live = {view.name for view in self.machines.status() if view.state in {s.value for s in LIVE}}
        wanted = [t for t in targets if t.name in live]
        for done, _ in enumerate(self._parallel(wanted, lambda t: self.machines.stop(t.name), workers), start=1):
            progress(ProgressEvent("stop", done, len(wanted), "stopping"))

    def reset(self, name: str, student: str | None = None, machine: str | None = None, lab: str | None = None,
              progress: Reporter = silent, discard: bool = False) -> list[dict[str, object]]:
        """Fresh overlays for stopped student machines (explicit; recorded per machine). Unless ``discard``, each
        student's lab is first frozen as a submission (graded as it is), so no work goes without a record."""
        with self._locked(name):
            targets = self.targets(name, student, machine, lab)
            live = {v.name: v.state for v in self.machines.status() if v.state in {s.value for s in LIVE}}
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
    def _parallel(targets: list[Target], action: Callable[[Target], object], workers: int) -> Iterator[object]:
        """Run ``action`` on every target; report every failure together, after the others finished."""
        failures: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [(t, pool.submit(action, t)) for t in targets]
            for target, future in futures:
                try:
                    yield future.result()
                except LabkitError as err:
                    failures.append(f"{target.student}/{target.lab}/{target.machine}: {err}")
        if failures:
            raise LabkitError(f"{len(failures)} of {len(targets)} machines failed: " + "; ".join(failures))

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
        live = {v.name for v in self.machines.status() if v.state in {s.value for s in LIVE}}
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

    # ---- status ------------------------------------------------------------------------------------------------
    def status(self, name: str, student: str | None = None, machine: str | None = None,
               lab: str | None = None) -> list[dict[str, object]]:
        """Per student and machine: state, forwards, uptime, overlay size (reconciled with the processes)."""
        try:
            targets = self.targets(name, student, machine, lab)
        except NotFoundError:
            return []
        views = {view.name: view for view in self.machines.status()}
        return [{"student": t.student, "lab": t.lab, "machine": t.machine, "name": t.name,
                 "state": views[t.name].state, "forwards": views[t.name].forwards, "uptime": views[t.name].uptime,
                 "overlay_bytes": views[t.name].overlay_bytes, "memory_mb": t.memory_mb} for t in targets]

