"""The job runner: progress and results stored, failures stored with their sentence, double submits, interruptions."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from labkit.config import Settings
from labkit.errors import NotFoundError, StateError
from labkit.progress import ProgressEvent, Reporter
from labkit.services.db import Database
from labkit.services.jobs import INTERRUPTED, JobRunner


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

    def work(report: Reporter) -> dict[str, object]:
        for n in range(1, 4):
            report(ProgressEvent("provision", n, 3, f"student {n}"))
        seen.append((runner.jobs.get(job.id).done, runner.jobs.get(job.id).total))
        return {"created": 3}

    job = runner.submit("provision", "c1", work, owner_user_id=None)
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


def test_jobs_left_running_by_a_stopped_server_are_failed(web_settings: Settings, db: Database) -> None:
    release = threading.Event()
    old = JobRunner(web_settings, db, workers=1)
    running = old.submit("grade", "c1", lambda report: release.wait(10) and None)
    queued = old.submit("grade", "c2", lambda report: None)
    # a new server starts while these were never finished (the old process "died")
    new = JobRunner(web_settings, db)
    assert new.interrupted == 2
    for job_id in (running.id, queued.id):
        job = new.jobs.get(job_id)
        assert (job.state, job.error) == ("failed", INTERRUPTED) and job.finished_at is not None
    release.set()
    old.shutdown()
    new.shutdown()
