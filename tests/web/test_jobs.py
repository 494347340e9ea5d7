"""The job runner: progress and results stored, failures stored with their sentence, double submits, interruptions,
and runners in several processes (server workers) sharing one database."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from labkit.config import Settings
from labkit.errors import NotFoundError, StateError
from labkit.progress import ProgressEvent, Reporter
from labkit.services.db import Database
from labkit.services.jobs import INTERRUPTED, JobRunner
from labkit.services.models import Job


@pytest.fixture
def db(web_settings: Settings) -> Iterator[Database]:
    database = Database(web_settings)
    yield database
    database.close()


@pytest.fixture
def runner(web_settings: Settings, db: Database) -> Iterator[JobRunner]:
    jobs = JobRunner(web_settings, db, workers=2)
    yield jobs
    jobs.shutdown()


def test_progress_and_result_are_stored(runner: JobRunner) -> None:
    seen: list[tuple[int, int | None]] = []
    submitted: list[int] = []
    known = threading.Event()

    def work(report: Reporter) -> dict[str, object]:
        for n in range(1, 4):
            report(ProgressEvent("provision", n, 3, f"student {n}"))
        assert known.wait(10)  # the worker may run before submit returns the job's id to this test
        stored = runner.jobs.get(submitted[0])
        seen.append((stored.done, stored.total))
        return {"created": 3}

    job = runner.submit("provision", "c1", work, owner_user_id=None)
    submitted.append(job.id)
    known.set()
    assert job.state in ("queued", "running")
    done = runner.wait(job.id, timeout=10)
    assert (done.state, done.done, done.total, done.message, done.result) == ("done", 3, 3, "student 3",
                                                                              {"created": 3})
    assert done.percent == 100 and done.started_at and done.finished_at and done.error is None
    assert seen[0][1] == 3  # the first event was written while the job ran
    assert runner.jobs.list(active=False)[0].id == job.id
    assert done.as_dict()["state"] == "done"


def test_failures_are_stored_with_their_sentence(runner: JobRunner) -> None:
    def refused(report: Reporter) -> None:
        report(ProgressEvent("start", 1, 2))
        raise StateError("machine m1 is running; stop it first")

    def broken(report: Reporter) -> None:
        raise ValueError("bad value")

    first = runner.wait(runner.submit("start", "m1", refused).id, timeout=10)
    assert (first.state, first.error, first.done) == ("failed", "machine m1 is running; stop it first", 1)
    second = runner.wait(runner.submit("start", "m2", broken).id, timeout=10)
    assert second.state == "failed" and second.error == "unexpected error: ValueError: bad value"
    with pytest.raises(NotFoundError):
        runner.jobs.get(999)


def test_a_double_submit_returns_the_same_job(runner: JobRunner) -> None:
    release = threading.Event()
    calls: list[int] = []

    def slow(report: Reporter) -> dict[str, object]:
        calls.append(1)
        release.wait(10)
        return {}

    first = runner.submit("start", "m1", slow)
    second = runner.submit("start", "m1", slow)
    other = runner.submit("start", "m2", slow)
    assert second.id == first.id and other.id != first.id
    assert runner.jobs.find_active("start", "m1").id == first.id
    release.set()
    runner.wait(first.id, timeout=10)
    runner.wait(other.id, timeout=10)
    assert len(calls) == 2
    # once it is over, the same action is a new job
    assert runner.submit("start", "m1", lambda report: None).id != first.id


def test_a_second_runner_in_a_live_process_fails_nothing(web_settings: Settings, db: Database) -> None:
    """Two runners of one live process (two apps in one worker, as tests make them): neither job is an orphan."""
    release = threading.Event()
    old = JobRunner(web_settings, db, workers=1)
    running = old.submit("grade", "c1", lambda report: release.wait(10) and None)
    queued = old.submit("grade", "c2", lambda report: None)
    new = JobRunner(web_settings, db)
    assert new.interrupted == 0 and new.jobs.get(running.id).active
    release.set()
    assert old.wait(running.id, timeout=10).state == "done" and old.wait(queued.id, timeout=10).state == "done"
    old.shutdown()
    new.shutdown()


def test_a_shut_down_runner_fails_its_queued_jobs(web_settings: Settings, db: Database) -> None:
    release = threading.Event()
    runner = JobRunner(web_settings, db, workers=1)
    running = runner.submit("grade", "c1", lambda report: release.wait(10) and {"ok": True})
    queued = runner.submit("grade", "c2", lambda report: None)
    runner.shutdown(wait=False)
    release.set()
    assert runner.wait(running.id, timeout=10).state == "done"  # a running job finishes
    assert (runner.jobs.get(queued.id).state, runner.jobs.get(queued.id).error) == ("failed", INTERRUPTED)


def test_jobs_queued_before_runners_were_recorded_are_failed(web_settings: Settings, db: Database) -> None:
    """Rows from a labkit before migration 0005 have no runner: a newer runner fails them (the old server stopped)."""
    with db.transaction() as session:
        session.add(Job(kind="grade", target="c1", state="running", done=0, message=""))
    runner = JobRunner(web_settings, db)
    assert runner.interrupted == 1
    assert runner.jobs.list()[0].error == INTERRUPTED
    runner.shutdown()


# ---- runners in other processes (server workers) -------------------------------------------------------------------

#: A server worker: a JobRunner that waits for ``go``, submits a job per target that holds until ``release`` exists,
#: prints the job ids, and waits for its jobs. argv: workers go release target...
WORKER = """
import sys, time
from pathlib import Path
from labkit.config import Settings
from labkit.services.db import Database
from labkit.services.jobs import JobRunner

def hold(report):
    while not release.exists():
        time.sleep(0.02)
    return {"by": "worker"}

settings = Settings.from_env()
db = Database(settings)
runner = JobRunner(settings, db, workers=int(sys.argv[1]))
go, release = Path(sys.argv[2]), Path(sys.argv[3])
while not go.exists():
    time.sleep(0.005)
ids = [runner.submit("grade", target, hold).id for target in sys.argv[4:]]
print(" ".join(map(str, ids)), flush=True)
for job_id in ids:
    runner.wait(job_id, timeout=60)
runner.shutdown()
db.close()
"""


def start_worker(settings: Settings, folder: Path, workers: int, targets: list[str]) -> subprocess.Popen[str]:
    from conftest import settings_env

    return subprocess.Popen([sys.executable, "-c", WORKER, str(workers), str(folder / "go"), str(folder / "release"),
                             *targets], env={**os.environ, **settings_env(settings)}, stdout=subprocess.PIPE,
                            text=True)


def job_ids(worker: subprocess.Popen[str]) -> list[int]:
    assert worker.stdout is not None
    return [int(n) for n in worker.stdout.readline().split()]


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lkj", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_runners_of_live_processes_leave_each_other_s_jobs_alone(web_settings: Settings, db: Database,
                                                                 folder: Path) -> None:
    (folder / "go").touch()
    worker = start_worker(web_settings, folder, 1, ["c1", "c2"])
    try:
        running, queued = job_ids(worker)
        here = JobRunner(web_settings, db, sweep_every=0.05)  # a sibling worker starting, and sweeping often
        assert here.interrupted == 0
        deadline = time.monotonic() + 30  # the other worker's thread takes its first job when it gets to run
        while here.jobs.get(running).state != "running":
            assert time.monotonic() < deadline, "the other worker never ran its job"
            time.sleep(0.02)
        time.sleep(0.3)  # several sweeps of this runner pass over the other's live jobs
        assert [here.jobs.get(job_id).state for job_id in (running, queued)] == ["running", "queued"]
        # a click served by this worker finds the other worker's job
        assert here.submit("grade", "c1", lambda report: None).id == running
        (folder / "release").touch()
        assert worker.wait(30) == 0
        assert [here.jobs.get(job_id).result for job_id in (running, queued)] == [{"by": "worker"}] * 2
        here.shutdown()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_jobs_of_a_killed_worker_are_failed(web_settings: Settings, db: Database, folder: Path) -> None:
    (folder / "go").touch()
    here = JobRunner(web_settings, db, sweep_every=0.05)  # started before the other worker dies: its sweep notices
    worker = start_worker(web_settings, folder, 1, ["c1", "c2", "c3"])
    try:
        ids = job_ids(worker)  # one running, two queued
    finally:
        worker.kill()
        worker.wait()
    deadline = time.monotonic() + 10
    while here.jobs.get(ids[-1]).active and time.monotonic() < deadline:
        time.sleep(0.05)
    for job_id in ids:
        job = here.jobs.get(job_id)
        assert (job.state, job.error) == ("failed", INTERRUPTED) and job.finished_at is not None
    here.shutdown()
    # a runner started later finds nothing left to fail
    assert JobRunner(web_settings, db, sweep_every=0).interrupted == 0


def test_a_killed_worker_s_job_does_not_block_the_same_action(web_settings: Settings, db: Database,
                                                               folder: Path) -> None:
    (folder / "go").touch()
    worker = start_worker(web_settings, folder, 1, ["c1"])
    try:
        (dead,) = job_ids(worker)
        here = JobRunner(web_settings, db, sweep_every=0)
    finally:
        worker.kill()
        worker.wait()
    fresh = here.submit("grade", "c1", lambda report: {"again": True})
    assert fresh.id != dead and here.wait(fresh.id, timeout=10).result == {"again": True}
    assert here.jobs.get(dead).error == INTERRUPTED
    here.shutdown()


def test_two_workers_submitting_at_once_make_one_job_per_target(web_settings: Settings, db: Database,
                                                                folder: Path) -> None:
    """The find and the insert are one transaction: racing processes agree on every target's job."""
    targets = [f"c{n}" for n in range(30)]
    workers = [start_worker(web_settings, folder, 2, targets) for _ in range(2)]
    try:
        time.sleep(1.0)  # both have opened the database and wait for "go"
        (folder / "go").touch()
        first, second = (job_ids(worker) for worker in workers)
        assert first == second
        assert len(set(first)) == len(targets)
        with db.read() as session:
            assert session.scalar(select(func.count()).select_from(Job)) == len(targets)
        (folder / "release").touch()
        assert [worker.wait(30) for worker in workers] == [0, 0]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def test_recent_jobs_are_the_user_s_active_ones_and_those_that_ended_lately(web_settings: Settings, db: Database,
                                                                            runner: JobRunner) -> None:
    """What a student's pages show beside their machines (`Jobs.recent`, read on every page view)."""
    from labkit.services.accounts import Accounts

    accounts = Accounts(web_settings, db, actor="test")
    ann, bob = accounts.create_user("ann", "student"), accounts.create_user("bob", "student")
    release = threading.Event()
    old = runner.wait(runner.submit("start", "m-old", lambda report: None, owner_user_id=ann.id).id, timeout=10)
    ended = runner.wait(runner.submit("stop", "m-ended", lambda report: None, owner_user_id=ann.id).id, timeout=10)
    running = runner.submit("reset", "m-running", lambda report: release.wait(10) and None, owner_user_id=ann.id)
    runner.wait(runner.submit("start", "m-bob", lambda report: None, owner_user_id=bob.id).id, timeout=10)
    with db.transaction() as session:  # the first job ended an hour ago
        session.get(Job, old.id).finished_at = ended.finished_at - dt.timedelta(hours=1)  # type: ignore[union-attr]
    try:
        since = ended.finished_at - dt.timedelta(minutes=15)  # type: ignore[operator]
        assert [job.target for job in runner.jobs.recent(ann.id, since)] == ["m-running", "m-ended"]
        assert [job.target for job in runner.jobs.recent(bob.id, since)] == ["m-bob"]
        assert [job.target for job in runner.jobs.recent(ann.id, since, limit=1)] == ["m-running"]
        later = ended.finished_at + dt.timedelta(seconds=1)  # type: ignore[operator]
        assert [job.target for job in runner.jobs.recent(ann.id, later)] == ["m-running"]  # still active
        assert runner.jobs.recent(ann.id, since)[1] == runner.jobs.get(ended.id)  # the same view as `get`
    finally:
        release.set()
        runner.wait(running.id, timeout=10)
