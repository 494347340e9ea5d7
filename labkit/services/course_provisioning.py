"""Provisioning: every student of a course gets the machines of every lab (overlay, seed disk with the student's
rendered files and parameters), idempotently; a changed lab is refused unless upgraded, which renders the seeds again
and keeps the students' overlays (their work)."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from labkit.errors import ConflictError
from labkit.labs.digest import changed_files, file_hashes, lab_digest
from labkit.labs.model import Lab
from labkit.labs.render import render_forwards, render_machine_files, render_startup
from labkit.labs.student import for_student
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.runtime import DEFAULT_BACKEND
from labkit.runtime.base import Forward
from labkit.services.audit import record
from labkit.services.course_records import CourseRecords
from labkit.services.lookup import course_by_name
from labkit.services.machines import LIVE, SeedContent
from labkit.services.models import Assignment, Machine


@dataclass(frozen=True)
class ProvisionReport:
    created: int
    kept: int
    upgraded: int


def machine_name(course_id: int, student_pk: int, lab_pk: int, machine: str) -> str:
    """A short, unique machine name (it becomes a umid, a run folder and a file name): c<course>s<student>l<lab>-m."""
    prefix = f"c{course_id}s{student_pk}l{lab_pk}"
    name = f"{prefix}-{machine}"
    return name if len(name) <= 32 else f"{prefix}-{hashlib.sha256(machine.encode()).hexdigest()[:8]}"


class CourseProvisioning(CourseRecords):
    """``labkit course provision`` (part of `labkit.services.courses.Courses`)."""

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
                    lab = self._lab(course_lab, fresh=True)
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
