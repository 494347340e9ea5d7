"""``labkit lab up``: a lab from its folder for one person, the way Netkit's ``lstart`` and Kathará's ``lstart`` work.

Under the hood each (lab folder, user) pair gets a personal course named after the lab and the user, with the user
as its only student; so provisioning, the ``depends_on`` start order, admission, grading and ``labkit vm`` work on
its machines as on any class. A small record beside it (``LABKIT_HOME/labup/<course>.json``) says which folder and
seed it came from and whose it is: ``lab up`` of another folder with the same lab id, or with another seed, is
refused with what to do rather than mixing them. The seed is the course's secret (`seed_secret`), so a lab's values
follow from (seed, lab, user) alone and stay the same after a ``lab clean``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from labkit.atomic import locked, write_atomic
from labkit.config import Settings
from labkit.errors import BadNameError, ConflictError, LabkitError, NotFoundError, StateError
from labkit.images.store import ImageStore
from labkit.labs.digest import changed_files, lab_digest
from labkit.labs.loader import load_lab
from labkit.labs.model import Lab
from labkit.names import MAX_NAME, check_name
from labkit.progress import Reporter, silent
from labkit.services.audit import current_actor
from labkit.services.courses import Courses
from labkit.services.db import Database
from labkit.services.grading import Grading, RunReport
from labkit.services.machines import LIVE
from labkit.services.models import Course
from labkit.services.roster import check_student_id

#: The seed a ``lab up`` without ``--seed`` uses (the first of ``labkit lab test``'s seeds is a different student).
DEFAULT_SEED = 1


def seed_secret(seed: int) -> str:
    """The personal course's secret for ``seed``: deterministic, so the same seed gives the same values again."""
    return hashlib.sha256(f"labkit lab up seed {seed}".encode()).hexdigest()


def course_name(lab_id: str, user: str) -> str:
    """``lab-<lab>-<user>`` when that is a valid course name, else a shortened one with a hash of both (unique)."""
    name = f"lab-{lab_id}-{user}"
    try:
        return check_name(name)
    except BadNameError:
        digest = hashlib.sha256(f"{lab_id}\0{user}".encode()).hexdigest()[:8]
        head = "".join(c if c.isascii() and c.isalnum() else "-" for c in f"lab-{lab_id}".lower())
        return check_name(f"{head[:MAX_NAME - 9].rstrip('-')}-{digest}")


@dataclass(frozen=True)
class UpMachine:
    """One machine of a lab that is up: how to reach it."""

    machine: str
    name: str
    state: str
    ssh: str | None

    @property
    def console(self) -> str:
        return f"labkit vm console {self.name}"


@dataclass(frozen=True)
class UpLab:
    """A lab brought up by ``lab up``: its personal course, folder, seed and machines (in start order)."""

    lab: str
    course: str
    path: str
    seed: int
    machines: list[UpMachine]

    @property
    def running(self) -> bool:
        return any(m.state in {s.value for s in LIVE} for m in self.machines)


class LabUp:
    """``labkit lab up|down|clean|crash|ps|check``."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()
        self.courses = Courses(settings, db, self.actor)

    # ---- records -----------------------------------------------------------------------------------------------
    @property
    def _records(self) -> Path:
        return self.settings.home / "labup"

    def _record(self, course: str) -> dict[str, object] | None:
        try:
            return dict(json.loads((self._records / f"{course}.json").read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise ConflictError(f"the lab up record of course {course} cannot be read ({err}); remove "
                                f"{self._records / f'{course}.json'} and the course (labkit course rm)") from err

    def _student(self) -> str:
        try:
            return check_student_id(self.actor, "your user name")
        except LabkitError as err:
            raise BadNameError(f"{err}; set LABKIT_ACTOR to a simple name to use lab up") from err

    @contextmanager
    def _locked(self, course: str) -> Iterator[None]:
        """One ``lab up``/``clean`` of a lab at a time (the course's own lock is taken inside its actions)."""
        self._records.mkdir(parents=True, exist_ok=True)
        with locked(self._records / f".{course}.lock"):
            yield

    def _load(self, path: Path) -> Lab:
        """The lab at ``path``, validated (every problem in one error)."""
        if not path.exists():
            raise NotFoundError(f"no lab at {path}: give a lab folder (holding lab.toml) or its lab.toml")
        return load_lab(path, ImageStore(self.settings).known_refs())

    def _mine(self, path: Path) -> tuple[Lab, str, dict[str, object] | None]:
        """The lab at ``path``, its personal course's name, and the record (None: not up); another folder's record
        with the same lab id is refused."""
        lab = self._load(path)
        course = course_name(lab.id, self._student())
        record = self._record(course)
        folder = str(Path(lab.folder or path).resolve())
        if record is not None and record.get("user") != self.actor:
            raise ConflictError(f"course {course} of lab up belongs to {record.get('user')}; set LABKIT_ACTOR to "
                                "another name")
        if record is not None and record.get("path") != folder:
            raise ConflictError(f"lab {lab.id} is up from another folder, {record.get('path')}; run 'labkit lab "
                                f"clean {record.get('path')}' first (one lab id per user)")
        return lab, course, record

    def _view(self, course: str, record: dict[str, object]) -> UpLab:
        try:
            targets = self.courses.targets(course)
        except NotFoundError:
            targets = []  # a first 'lab up' stopped before provisioning, or its course removed by hand
        views = {v.name: v for v in self.courses.machines.status(names=[t.name for t in targets])}
        ordered = sorted(targets, key=lambda t: (t.wave, t.machine))
        return UpLab(str(record["lab"]), course, str(record["path"]), int(str(record["seed"])),
                     [UpMachine(t.machine, t.name, views[t.name].state, views[t.name].ssh) for t in ordered])

    def _up_lab(self, path: Path) -> tuple[Lab, str, dict[str, object]]:
        lab, course, record = self._mine(path)
        if record is None:
            raise NotFoundError(f"lab {lab.id} is not up (labkit lab up {path})")
        return lab, course, record

    # ---- verbs -------------------------------------------------------------------------------------------------
    def up(self, path: Path, seed: int | None = None, progress: Reporter = silent) -> UpLab:
        """Create (first time), provision and start the lab's machines; a lab already up is left as it is."""
        lab, course, record = self._mine(path)
        folder = str(Path(lab.folder or path).resolve())
        with self._locked(course):
            if record is None:
                seed = DEFAULT_SEED if seed is None else seed
                self._create(lab, course, folder, seed)
                record = {"lab": lab.id, "path": folder, "seed": seed, "user": self.actor}
                write_atomic(self._records / f"{course}.json", json.dumps(record, indent=2) + "\n")
            elif seed is not None and seed != record.get("seed"):
                raise ConflictError(f"lab {lab.id} is up with seed {record.get('seed')}; run 'labkit lab clean "
                                    f"{path}' first to bring it up with seed {seed}")
            self._check_unchanged(lab, course, path)
            self.courses.provision(course, progress=progress)
        self.courses.start(course, progress=progress)
        return self._view(course, record)

    def _create(self, lab: Lab, course: str, folder: str, seed: int) -> None:
        with self.db.transaction() as session:
            if session.scalar(select(Course).where(Course.name == course)) is not None:
                raise ConflictError(f"a course named {course} exists that lab up did not make; remove it (labkit "
                                    "course rm) or set LABKIT_ACTOR to another name")
        self.courses.create(course, [Path(folder)], max_running_per_student=max(4, len(lab.machines)))
        try:
            with self.db.transaction() as session:
                row = session.scalar(select(Course).where(Course.name == course))
                assert row is not None
                row.secret = seed_secret(seed)
            self.courses.enrol(course, [self._student()])
        except BaseException:
            self.courses.remove(course, purge=True)  # nothing half-made: no course without its record
            raise

    def _check_unchanged(self, lab: Lab, course: str, path: Path) -> None:
        """A lab edited since it was provisioned needs new disks: say so instead of mixing versions."""
        with self.db.transaction() as session:
            row = session.scalar(select(Course).where(Course.name == course))
            if row is None:
                raise NotFoundError(f"the course of lab {lab.id} ({course}) was removed; run 'labkit lab clean "
                                    f"{path}' and 'labkit lab up {path}' again")
            provisioned = [(Path(cl.path), cl.digest, cl.files) for cl in row.labs if cl.digest]
        for folder, digest, files in provisioned:
            if lab_digest(folder) != digest:
                changed = changed_files(folder, files) or ["lab.toml"]
                raise ConflictError(f"lab {lab.id} changed since it was brought up (changed: "
                                    f"{', '.join(changed[:10])}); for machines of the new version run 'labkit lab "
                                    f"down {path}' (if it runs), 'labkit lab clean {path}' and 'labkit lab up {path}'")

    def down(self, path: Path) -> UpLab:
        """Stop the lab's machines cleanly."""
        lab, course, record = self._up_lab(path)
        if not self._view(course, record).running:
            raise StateError(f"lab {lab.id} is not running (nothing to stop)")
        self.courses.stop(course)
        return self._view(course, record)

    def crash(self, path: Path) -> UpLab:
        """Kill the lab's machines at once (by their recorded PIDs), as ``labkit vm kill`` does."""
        lab, course, record = self._up_lab(path)
        before = self._view(course, record)
        if not before.running:
            raise StateError(f"lab {lab.id} is not running (nothing to kill)")
        for machine in before.machines:
            if machine.state != "stopped":
                self.courses.machines.kill(machine.name)
        return self._view(course, record)

    def clean(self, path: Path) -> str | None:
        """Remove the personal course with its machines, disks and grades (Netkit's ``lclean``); the next
        ``lab up`` starts from fresh disks. Returns the course removed, None when the lab was not up."""
        lab, course, record = self._mine(path)
        if record is None:
            return None
        with self._locked(course):
            if self._view(course, record).running:
                raise StateError(f"lab {lab.id} is running; stop it first (labkit lab down {path}, or labkit lab "
                                 f"crash {path})")
            with suppress(NotFoundError):
                self.courses.remove(course, purge=True)
            (self._records / f"{course}.json").unlink(missing_ok=True)
        return course

    def ps(self) -> list[UpLab]:
        """The labs this user brought up, with their machines' states."""
        found = []
        for file in sorted(self._records.glob("*.json")) if self._records.is_dir() else []:
            record = self._record(file.stem)
            if record is None or record.get("user") != self.actor:
                continue
            try:
                found.append(self._view(file.stem, record))
            except NotFoundError:
                continue  # its course was removed by hand: 'lab clean' drops the record
        return found

    def check(self, path: Path) -> RunReport:
        """Run every check of the lab (hidden ones too: it is your own lab) on its running machines."""
        lab, course, record = self._up_lab(path)
        if not self._view(course, record).running:
            raise StateError(f"lab {lab.id} is not running; the checks need its machines (labkit lab up {path})")
        return Grading(self.settings, self.db, self.actor).grade(course)
