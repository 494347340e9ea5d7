"""Persistence models (SQLAlchemy 2.0, typed). Separate from the lab-format models on purpose (style guide 6).

The database records intent and facts; the process table and the files are reality, and the services reconcile the two.
"""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    cast,
    false,
    true,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Moments in UTC, read back with their time zone: SQLite keeps none, so it is put back on every read."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[object, object]] = {dt.datetime: UtcDateTime()}


class Image(Base):
    """A built base image version, mirrored from the image store's meta.json."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    recipe_digest: Mapped[str] = mapped_column(String(64))
    built_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    machines: Mapped[list[Machine]] = relationship(back_populates="image")

    @hybrid_property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    @label.inplace.expression
    @classmethod
    def _label_in_sql(cls) -> ColumnElement[str]:  # the same label, for statements that read plain rows
        return cls.name + ":" + cast(cls.version, String)


class Machine(Base):
    """One machine: its overlay of a base image, and what labkit last knew about its processes."""

    __tablename__ = "machines"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    #: the machine's backend kind (`labkit.runtime.backend_kinds`), from its lab or image; set by `Machines.create`
    backend: Mapped[str] = mapped_column(String(16))
    #: its backend's overlay kind (`labkit.overlays`), recorded so its disk stays readable whatever the registry says
    overlay_kind: Mapped[str] = mapped_column(String(16))
    overlay_path: Mapped[str] = mapped_column(Text)
    seed_path: Mapped[str] = mapped_column(Text)
    memory_mb: Mapped[int] = mapped_column(Integer, default=128)
    mac: Mapped[str] = mapped_column(String(17))
    #: requested forwards as [[host_port, guest_port], ...]; host 0 means "pick one at start"
    forwards: Mapped[list[list[int]]] = mapped_column(JSON, default=list)
    console_password: Mapped[str] = mapped_column(String(64))
    #: the guest's host name (a lab's machine name, e.g. "a"); None means the machine's own name
    hostname: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: lab networks the machine joins, in interface order (eth1, eth2, ...): [[network name, switch folder], ...]
    networks: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    #: ports of the host's loopback the guest may reach (its lab's ``[reach]``); every other one is refused
    host_ports: Mapped[list[int]] = mapped_column(JSON, default=list, server_default="[]")
    #: whether the guest reaches addresses beyond the host (NAT by its backend)
    outbound: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    state: Mapped[str] = mapped_column(String(16), default="stopped")
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    supervisor_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: forwards actually bound by the last start, as [[host_port, guest_port], ...]
    bound_forwards: Mapped[list[list[int]]] = mapped_column(JSON, default=list)
    started_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    image: Mapped[Image] = relationship(back_populates="machines")
    snapshots: Mapped[list[Snapshot]] = relationship(back_populates="machine", cascade="all, delete-orphan",
                                                     order_by="Snapshot.created_at")

    @property
    def image_path(self) -> str:
        """The base image's file (`labkit.services.machines.MachineFacts`: plain rows carry it as a column)."""
        return self.image.path


class Snapshot(Base):
    """A named sparse copy of a machine's overlay; ``kind`` says what it keeps: "disk" (the disk only) or "running
    state" (also the memory and devices of the running machine, on a backend with running-state snapshots)."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("machine_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"))
    name: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(16), default="disk", server_default="disk")

    machine: Mapped[Machine] = relationship(back_populates="snapshots")


class Event(Base):
    """The audit log: who did what to which thing, and when. Never updated, only added to."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(128))
    detail: Mapped[str] = mapped_column(Text, default="")


class Course(Base):
    """A class: labs bound to a roster, with its own secret for per-student parameters."""

    __tablename__ = "courses"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: HMAC key for per-student parameters: students cannot predict each other's values without it
    secret: Mapped[str] = mapped_column(String(64))
    memory_budget_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_running_per_student: Mapped[int] = mapped_column(Integer, default=4)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    #: the instructor who owns the course in the web app (None: only the CLI manages it)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)

    labs: Mapped[list[CourseLab]] = relationship(back_populates="course", cascade="all, delete-orphan",
                                                 order_by="CourseLab.id")
    students: Mapped[list[Student]] = relationship(back_populates="course", cascade="all, delete-orphan",
                                                   order_by="Student.sid")


class CourseLab(Base):
    """A lab as a course uses it: where it lives and which version of it was provisioned."""

    __tablename__ = "course_labs"
    __table_args__ = (UniqueConstraint("course_id", "lab_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id"))
    lab_id: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer)
    #: digest of the lab folder at the last provisioning (None before the first)
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: {relative path: sha256} at the last provisioning, to say what changed
    files: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    reset_policy: Mapped[str] = mapped_column(String(16))
    #: which graded run makes the gradebook's grade: "best", "latest" or "submission" (labkit.services.gradebook)
    grade_policy: Mapped[str] = mapped_column(String(16), default="best", server_default="best")
    #: the lab's time window: students start machines only between these moments (None: no bound); at ``closes_at``
    #: their machines are stopped, or in exam mode frozen and submitted (labkit.services.lab_time)
    opens_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    closes_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    #: minutes each student has from their first start (their `Attempt`), plus their own extra minutes; None: no limit
    allowance_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: minutes without console input or SSH session after which a running machine is paused; None: never
    idle_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: exam mode: no self-check or feedback until ``results_released_at``, no outbound or host reach, frozen at the end
    exam: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    results_released_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    course: Mapped[Course] = relationship(back_populates="labs")


class Student(Base):
    """One roster line. Removed students are archived, never deleted, until an explicit purge."""

    __tablename__ = "students"
    __table_args__ = (UniqueConstraint("course_id", "sid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id"))
    sid: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(200), default="")
    archived_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    #: the web account of this student (None until the instructor creates the set-password links)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)

    course: Mapped[Course] = relationship(back_populates="students")
    assignments: Mapped[list[Assignment]] = relationship(back_populates="student", cascade="all, delete-orphan")


class Assignment(Base):
    """One student's copy of one machine of one lab: the link from the course to a machine."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("course_lab_id", "student_id", "machine"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    course_lab_id: Mapped[int] = mapped_column(ForeignKey("course_labs.id"))
    student_id: Mapped[int] = mapped_column(ForeignKey("students.id"))
    #: the lab's machine name, e.g. "a"
    machine: Mapped[str] = mapped_column(String(64))
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"))
    #: the lab digest this machine's seed was rendered from
    digest: Mapped[str] = mapped_column(String(64))

    student: Mapped[Student] = relationship(back_populates="assignments")
    course_lab: Mapped[CourseLab] = relationship()
    vm: Mapped[Machine] = relationship()


class ClassSession(Base):
    """A teaching session of a course: begun and ended by an instructor."""

    __tablename__ = "class_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id"))
    begun_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    begun_by: Mapped[str] = mapped_column(String(64))
    ended_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    ended_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class Attempt(Base):
    """One student's time on one course lab: when their clock began (their first start of one of its machines), the
    extra minutes granted to them, and when their time ended (``closed_at``, with why: "deadline", "submitted" or
    "window"). One row per student and lab, made at the first start (labkit.services.lab_time)."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("student_id", "course_lab_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("students.id", ondelete="CASCADE"), index=True)
    course_lab_id: Mapped[int] = mapped_column(ForeignKey("course_labs.id", ondelete="CASCADE"), index=True)
    began_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    extra_minutes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: when the student was warned that their time is about to end (once)
    warned_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    closed_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    closed_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)

    student: Mapped[Student] = relationship()
    course_lab: Mapped[CourseLab] = relationship()


# ---- grading ----


class GradeRun(Base):
    """One grading of a course (or part of it). Its results are never changed: grades are queries over runs."""

    __tablename__ = "grade_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    #: "grade" (live machines), "submission" (frozen submissions, offline) or "self-check" (a student's own check)
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    lab_filter: Mapped[str | None] = mapped_column(String(64), nullable=True)
    student_filter: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    results: Mapped[list[GradeResult]] = relationship(back_populates="run", cascade="all, delete-orphan",
                                                      order_by="GradeResult.id")


class GradeResult(Base):
    """One check's outcome for one student in one run."""

    __tablename__ = "grade_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("grade_runs.id", ondelete="CASCADE"), index=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("students.id", ondelete="CASCADE"), index=True)
    course_lab_id: Mapped[int] = mapped_column(ForeignKey("course_labs.id", ondelete="CASCADE"))
    submission_id: Mapped[int | None] = mapped_column(ForeignKey("submissions.id", ondelete="SET NULL"),
                                                      nullable=True)
    check_id: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200), default="")
    hidden: Mapped[bool] = mapped_column(default=False)
    passed: Mapped[bool] = mapped_column(default=False)
    points: Mapped[float] = mapped_column(default=0.0)
    max_points: Mapped[float] = mapped_column(default=0.0)
    feedback: Mapped[str] = mapped_column(Text, default="")
    evidence: Mapped[str] = mapped_column(Text, default="")
    transport: Mapped[str] = mapped_column(String(32), default="")
    duration: Mapped[float] = mapped_column(default=0.0)
    skipped_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: why labkit could not check at all (machine stopped, never started, unreachable); None: it was checked
    unchecked: Mapped[str | None] = mapped_column(Text, nullable=True)

    run: Mapped[GradeRun] = relationship(back_populates="results")
    student: Mapped[Student] = relationship()
    course_lab: Mapped[CourseLab] = relationship()


class Submission(Base):
    """A student's machines of one lab, frozen at a moment: sparse copies of their overlays, kept until a purge."""

    __tablename__ = "submissions"

    id: Mapped[int] = mapped_column(primary_key=True)
    student_id: Mapped[int] = mapped_column(ForeignKey("students.id", ondelete="CASCADE"), index=True)
    course_lab_id: Mapped[int] = mapped_column(ForeignKey("course_labs.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    #: the frozen disks by lab machine name: {"overlay", "seed" (paths of the copies), "image" (base image path),
    #: "vm" (the machine), "password", "memory_mb", "ports", "networks", "bytes"}: enough to read or boot them later
    disks: Mapped[dict[str, dict[str, object]]] = mapped_column(JSON, default=dict)

    student: Mapped[Student] = relationship()
    course_lab: Mapped[CourseLab] = relationship()


# ---- accounts ----


class User(Base):
    """A person who logs in to the web app: an instructor, or a student linked from roster lines (Student.user_id)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    #: "instructor" or "student"
    role: Mapped[str] = mapped_column(String(16))
    #: werkzeug scrypt hash; None until the password is set (a student's one-time link)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)


class PasswordToken(Base):
    """A one-time set-password link: only the SHA-256 of its secret is stored."""

    __tablename__ = "password_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()
    used_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    user: Mapped[User] = relationship()


class WebSession(Base):
    """A logged-in browser session: the cookie holds its secret, only the SHA-256 is stored. Logging out deletes the
    row, so a copied cookie stops working (the cookie alone is signed, not revocable)."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)


class ApiToken(Base):
    """A bearer token for the JSON API: only the SHA-256 of its secret is stored; shown once when created."""

    __tablename__ = "api_tokens"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    user: Mapped[User] = relationship()


class Job(Base):
    """A long action run in the web server's thread pool (provision, start, reset, grade), with its progress."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    course_id: Mapped[int | None] = mapped_column(ForeignKey("courses.id", ondelete="SET NULL"), nullable=True)
    owner_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    #: what the job acts on, e.g. a course or machine name: (kind, target) is unique among active jobs
    target: Mapped[str] = mapped_column(String(128))
    #: queued, running, done or failed
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    message: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    #: the process running it, ``PID START_TIME`` (`labkit.runtime.process.ProcessRecord`): with several server
    #: workers, a starting worker fails only the active jobs whose process is gone
    runner: Mapped[str | None] = mapped_column(String(64), nullable=True)


# ---- workers ----


class LoginFailure(Base):
    """One failed login, counted against ``user:<name>`` and ``addr:<address>`` keys (one row per key) by every web
    worker; rows older than the limit's window are deleted as new ones come."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(128), index=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
