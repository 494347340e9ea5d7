"""Jobs: long actions (provision, start, reset, grade) run in the web server's thread pool, with stored progress.

A request submits a job and returns at once; the page polls the job's row. A second submit of the same (kind, target)
while one is queued or running returns that job (a double-click is a no-op), whichever server worker runs it: the
look-up and the insert are one write transaction (BEGIN IMMEDIATE on SQLite), so two workers cannot both find none.

A job runs in the thread pool of the worker process that accepted it, and its row names that process (``runner``,
``PID START_TIME``). When a worker dies its jobs are lost; a `JobRunner` fails the active jobs whose runner process is
gone (and those without a runner, queued by a labkit before 0005, if older than itself) when it starts and then every
``sweep_every`` seconds, so sibling workers never fail each other's live jobs and a killed worker's jobs end failed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import Row, bindparam, select

from labkit.config import Settings
from labkit.errors import LabkitError, NotFoundError
from labkit.progress import ProgressEvent, Reporter
from labkit.runtime.process import ProcessRecord
from labkit.services.db import Database
from labkit.services.models import Job

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")
INTERRUPTED = "interrupted: the server stopped"
#: progress is written at most this often (the last event of a job is always written)
_PROGRESS_EVERY = 0.25
#: how often a runner looks for active jobs of dead worker processes
SWEEP_EVERY = 30.0

#: what a job runs: it reports progress through the reporter and returns a JSON-able result (or None)
JobFunction = Callable[[Reporter], dict[str, Any] | None]


@cache
def _runner_of(pid: int) -> str:
    record = ProcessRecord.of(pid)
    return f"{record.pid} {record.start_time}"


def this_runner() -> str:
    """``PID START_TIME`` of this process: what a job's ``runner`` column holds (the pid after any fork)."""
    return _runner_of(os.getpid())


def runner_alive(runner: str) -> bool:
    """Whether the process a ``runner`` value names still exists (a reused PID has another start time)."""
    try:
        pid, start = runner.split()
        return ProcessRecord(int(pid), int(start)).alive()
    except ValueError:
        return False


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    return moment.replace(tzinfo=dt.UTC) if moment is not None and moment.tzinfo is None else moment


@dataclass(frozen=True)
class JobView:
    id: int
    kind: str
    target: str
    course_id: int | None
    owner_user_id: int | None
    state: str
    done: int
    total: int | None
    message: str
    result: dict[str, Any] | None
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def percent(self) -> int | None:
        if self.state == "done":
            return 100
        return min(100, self.done * 100 // self.total) if self.total else None

    def as_dict(self) -> dict[str, Any]:
        """For JSON answers (the API and the page's polling)."""
        return {"id": self.id, "kind": self.kind, "target": self.target, "state": self.state, "done": self.done,
                "total": self.total, "percent": self.percent, "message": self.message, "result": self.result,
                "error": self.error, "created_at": self.created_at.isoformat(),
                "started_at": self.started_at.isoformat() if self.started_at else None,
                "finished_at": self.finished_at.isoformat() if self.finished_at else None}


#: built once, see `Jobs.recent`
_RECENT = (select(*Job.__table__.columns).where(Job.owner_user_id == bindparam("owner"))
           .where(Job.state.in_(ACTIVE) | (Job.finished_at >= bindparam("since")))
           .order_by(Job.id.desc()).limit(bindparam("limit")))


def _view(job: Job | Row[Any]) -> JobView:
    return JobView(id=job.id, kind=job.kind, target=job.target, course_id=job.course_id,
                   owner_user_id=job.owner_user_id, state=job.state, done=job.done, total=job.total,
                   message=job.message, result=job.result, error=job.error, created_at=_aware(job.created_at),  # type: ignore[arg-type]
                   started_at=_aware(job.started_at), finished_at=_aware(job.finished_at))


class Jobs:
    """Queries over jobs (any process may read them)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, job_id: int) -> JobView:
        with self.db.read() as session:
            job = session.get(Job, job_id)
            if job is None:
                raise NotFoundError(f"no job {job_id}")
            return _view(job)

    def list(self, course_id: int | None = None, owner_user_id: int | None = None, active: bool | None = None,
             kind: str | None = None, limit: int = 50) -> list[JobView]:
        """Newest first."""
        query = select(Job).order_by(Job.id.desc()).limit(limit)
        if course_id is not None:
            query = query.where(Job.course_id == course_id)
        if owner_user_id is not None:
            query = query.where(Job.owner_user_id == owner_user_id)
        if kind is not None:
            query = query.where(Job.kind == kind)
        if active is not None:
            query = query.where(Job.state.in_(ACTIVE) if active else Job.state.not_in(ACTIVE))
        with self.db.read() as session:
            return [_view(job) for job in session.scalars(query)]

    def recent(self, owner_user_id: int, since: dt.datetime, limit: int = 100) -> list[JobView]:
        """The user's jobs that are active or ended after ``since``, newest first: read at every view of a student's
        pages, so in plain rows (`Database.read_rows`)."""
        with self.db.read_rows() as connection:
            rows = connection.execute(_RECENT, {"owner": owner_user_id, "since": since, "limit": limit})
            return [_view(job) for job in rows]

    def find_active(self, kind: str, target: str) -> JobView | None:
        with self.db.transaction() as session:
            job = session.scalar(select(Job).where(Job.kind == kind, Job.target == target, Job.state.in_(ACTIVE)))
            return _view(job) if job is not None else None


class JobRunner:
    """Runs job functions in a thread pool and stores their progress, result or error in their row.

    One per server worker process; several share the database. Each fails the orphaned jobs of dead workers (see the
    module's docstring): at start, and every ``sweep_every`` seconds in a daemon thread (0 turns the thread off).
    """

    def __init__(self, settings: Settings, db: Database, workers: int = 4, sweep_every: float = SWEEP_EVERY) -> None:
        self.settings = settings
        self.db = db
        self.jobs = Jobs(db)
        self.started = dt.datetime.now(dt.UTC)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="labkit-job")
        self._futures: dict[int, Future[None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.interrupted = self.fail_orphans()
        self._sweeper: threading.Thread | None = None
        if sweep_every > 0:
            self._sweeper = threading.Thread(target=self._sweep, args=(sweep_every,), daemon=True,
                                             name="labkit-job-sweeper")
            self._sweeper.start()

    def _orphan(self, job: Job) -> bool:
        """No thread will ever finish this active job: its process is gone (or, without a runner, it was queued by a
        labkit before 0005 and is older than this runner)."""
        if job.runner is None:
            return _aware(job.created_at) < self.started  # type: ignore[operator]
        return not runner_alive(job.runner)

    def fail_orphans(self) -> int:
        """Fail the active jobs of dead worker processes; the number failed."""
        with self.db.transaction() as session:
            jobs = [job for job in session.scalars(select(Job).where(Job.state.in_(ACTIVE))) if self._orphan(job)]
            for job in jobs:
                job.state, job.error, job.finished_at = "failed", INTERRUPTED, dt.datetime.now(dt.UTC)
            return len(jobs)

    def _sweep(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if count := self.fail_orphans():
                    log.warning("failed %d job(s) of a server worker that stopped", count)
            except LabkitError as err:  # a busy or vanished database: try again next time
                log.warning("looking for interrupted jobs failed: %s", err)

    def submit(self, kind: str, target: str, function: JobFunction, course_id: int | None = None,
               owner_user_id: int | None = None) -> JobView:
        """Queue ``function``; if a job of the same kind and target is queued or running, return it instead.

        The look-up and the insert are one write transaction (BEGIN IMMEDIATE on SQLite takes the write lock at its
        start), so two workers submitting at once cannot both see "none active". An active job whose worker died is
        failed here and replaced, rather than blocking the action until the next sweep.
        """
        with self.db.transaction() as session:
            existing = session.scalar(select(Job).where(Job.kind == kind, Job.target == target,
                                                        Job.state.in_(ACTIVE)))
            if existing is not None and not self._orphan(existing):
                return _view(existing)
            if existing is not None:
                existing.state, existing.error = "failed", INTERRUPTED
                existing.finished_at = dt.datetime.now(dt.UTC)
            job = Job(kind=kind, target=target, course_id=course_id, owner_user_id=owner_user_id, state="queued",
                      done=0, message="", runner=this_runner())
            session.add(job)
            session.flush()
            view = _view(job)
        with self._lock:
            self._futures[view.id] = self._pool.submit(self._run, view.id, function)
        return view

    def wait(self, job_id: int, timeout: float | None = None) -> JobView:
        """Block until the job (submitted here) ends; for tests and scripts."""
        with self._lock:
            future = self._futures.get(job_id)
        if future is not None:
            future.result(timeout)
        return self.jobs.get(job_id)

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking jobs. Running jobs finish (waited for with ``wait``); queued ones are failed as interrupted,
        since this process lives on and no sweep would ever see them as orphans."""
        self._stop.set()
        with self._lock:
            pending = dict(self._futures)
        self._pool.shutdown(wait=wait, cancel_futures=True)
        cancelled = [job_id for job_id, future in pending.items() if future.cancelled()]
        if cancelled:
            try:
                with self.db.transaction() as session:
                    for job in session.scalars(select(Job).where(Job.id.in_(cancelled), Job.state.in_(ACTIVE))):
                        job.state, job.error, job.finished_at = "failed", INTERRUPTED, dt.datetime.now(dt.UTC)
            except LabkitError as err:
                log.warning("marking %d queued job(s) interrupted failed: %s", len(cancelled), err)

    # ---- in the worker thread ----------------------------------------------------------------------------------
    def _update(self, job_id: int, **values: Any) -> None:
        with self.db.transaction() as session:
            job = session.get(Job, job_id)
            if job is not None:
                for key, value in values.items():
                    setattr(job, key, value)

    def _run(self, job_id: int, function: JobFunction) -> None:
        self._update(job_id, state="running", started_at=dt.datetime.now(dt.UTC))
        reporter = _StoredProgress(self, job_id)
        try:
            result = function(reporter)
        except LabkitError as err:
            reporter.flush()
            self._update(job_id, state="failed", error=str(err), finished_at=dt.datetime.now(dt.UTC))
        except Exception as err:
            log.exception("job %s failed", job_id)
            reporter.flush()
            self._update(job_id, state="failed", error=f"unexpected error: {type(err).__name__}: {err}",
                         finished_at=dt.datetime.now(dt.UTC))
        else:
            reporter.flush()
            self._update(job_id, state="done", result=result, finished_at=dt.datetime.now(dt.UTC))
        finally:
            with self._lock:
                self._futures.pop(job_id, None)


class _StoredProgress:
    """A `Reporter` that writes a job's progress to its row, at most every quarter second."""

    def __init__(self, runner: JobRunner, job_id: int) -> None:
        self.runner = runner
        self.job_id = job_id
        self._pending: dict[str, Any] | None = None
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: ProgressEvent) -> None:
        message = event.message or event.step
        with self._lock:
            self._pending = {"done": event.done, "total": event.total, "message": message[:2000]}
            if time.monotonic() - self._last < _PROGRESS_EVERY:
                return
            self._write()

    def flush(self) -> None:
        with self._lock:
            self._write()

    def _write(self) -> None:
        if self._pending is not None:
            self.runner._update(self.job_id, **self._pending)
            self._pending = None
            self._last = time.monotonic()
