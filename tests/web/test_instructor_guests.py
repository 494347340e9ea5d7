"""The dashboard with real tiny guests: start all from the grid, watch grid.json say running, grade the class as a
job, see the totals, and download the same CSV bytes as ``labkit grades --csv``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from labkit.cli import main

from .conftest import state
from .test_instructor_actions import finish, job_of, post
from .test_instructor_pages import Teaching, teaching_fixture  # noqa: F401  (the shared fixture)

pytestmark = pytest.mark.guest


@pytest.fixture
def running(teaching: Teaching) -> Iterator[Teaching]:
    """The fixture's class, stopped again afterwards whatever happened."""
    yield teaching
    teaching.courses.stop("c1")


def test_start_all_grade_and_csv(running: Teaching, tmp_path: Path) -> None:
    from conftest import settings_env

    t = running
    job = job_of(post(t.teacher, "/teach/courses/c1/start-all", back="grid"))
    found = finish(t, t.teacher, job)
    assert found["state"] == "done", found
    deadline = time.monotonic() + 30
    while True:
        grid = t.teacher.get("/teach/courses/c1/grid.json").get_json()
        states = {cell["student"]: cell["state"] for cell in grid["cells"]}
        if states == {"alice": "running", "bob": "running"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert states == {"alice": "running", "bob": "running"} and grid["running"] == 2
    html = t.teacher.get("/teach/courses/c1/grid").get_data(as_text=True)
    assert html.count('class="state state-running"') == 2

    graded = finish(t, t.teacher, job_of(post(t.teacher, "/teach/courses/c1/grade", back="grades")))
    assert graded["state"] == "done" and graded["result"]["graded"] == 2, graded  # type: ignore[index]
    page = t.teacher.get("/teach/courses/c1/grades").get_data(as_text=True)
    assert 'data-column="total"' in page and 'data-column="max"' in page and 'id="runs-table"' in page
    book = state(t.app).grading("test").gradebook("c1", detail=True)
    alice = next(row for row in book.rows if row[0] == "alice")
    assert f'<td data-column="max">{alice[-1]:g}</td>' in page

    download = t.teacher.get("/teach/courses/c1/grades.csv")
    assert download.headers["Content-Disposition"].startswith("attachment;")
    cli_csv = tmp_path / "grades.csv"
    result = CliRunner().invoke(main, ["grades", "c1", "--csv", str(cli_csv)], env=settings_env(t.courses.settings))
    assert result.exit_code == 0, result.output
    assert download.data == cli_csv.read_bytes()
    detail = tmp_path / "detail.csv"
    CliRunner().invoke(main, ["grades", "c1", "--detail", "--csv", str(detail)],
                       env=settings_env(t.courses.settings))
    assert t.teacher.get("/teach/courses/c1/grades.csv?detail=1").data == detail.read_bytes()
