"""Class-wide actions of the dashboard as jobs: provision, start/stop all, reset one student (confirmed), sessions,
grading; a double click gives one job; CSRF is required. No guest boots here (stopped machines only)."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

from labkit.atomic import locked
from labkit.services.models import Event

from .conftest import csrf_token, state
from .test_instructor_pages import Teaching, _course_id, teaching_fixture  # noqa: F401  (the shared fixture)


def post(client: FlaskClient, path: str, **data: str) -> object:
    return client.post(path, data={"csrf_token": csrf_token(client, "/teach/"), **data})


def job_of(answer: object) -> int:
    assert answer.status_code == 302, answer.status_code  # type: ignore[attr-defined]
    found = re.search(r"[?&]job=(\d+)", answer.headers["Location"])  # type: ignore[attr-defined]
    assert found, answer.headers["Location"]  # type: ignore[attr-defined]
    return int(found.group(1))


def finish(t: Teaching, client: FlaskClient, job: int, course: str = "c1") -> dict[str, object]:
    state(t.app).jobs.wait(job, timeout=120)
    found = client.get(f"/teach/courses/{course}/jobs/{job}").get_json()
    assert set(found) >= {"state", "done", "total", "percent", "message", "error", "result"}
    return found


def test_provision_runs_as_a_job_with_progress(teaching: Teaching) -> None:
    answer = post(teaching.teacher, "/teach/courses/c1/provision", back="course")
    job = job_of(answer)
    assert answer.headers["Location"].startswith("/teach/courses/c1?")
    found = finish(teaching, teaching.teacher, job)
    assert (found["state"], found["result"], found["percent"]) == ("done", {"created": 0, "kept": 2,
                                                                           "upgraded": 0}, 100)
    html = teaching.teacher.get(f"/teach/courses/c1?job={job}").get_data(as_text=True)
    assert f'data-job-id="{job}"' in html and "job-followed" in html and "Provisioning" in html


def test_a_double_clicked_start_all_gives_one_job(teaching: Teaching, make_course: object) -> None:
    make_course("c3", owner="teacher")  # type: ignore[operator]  # no roster: the start fails once it runs
    token = csrf_token(teaching.teacher, "/teach/")
    with locked(state(teaching.app).settings.home / ".course-c3.lock"):  # the job waits for the course's lock
        first = job_of(teaching.teacher.post("/teach/courses/c3/start-all", data={"csrf_token": token}))
        second = job_of(teaching.teacher.post("/teach/courses/c3/start-all", data={"csrf_token": token,
                                                                                   "back": "grid"}))
        assert second == first
        grid = teaching.teacher.get("/teach/courses/c3/grid.json").get_json()
        assert [job["id"] for job in grid["jobs"]] == [first]
    found = finish(teaching, teaching.teacher, first, "c3")
    assert found["state"] == "failed" and "no provisioned machines" in str(found["error"])
    jobs = state(teaching.app).job_queries.list(course_id=_course_id_of(teaching, "c3"))
    assert [job.kind for job in jobs] == ["start-all"]


def _course_id_of(t: Teaching, name: str) -> int:
    found = state(t.app).accounts("test").owned_course(state(t.app).accounts("test").get("teacher"), name)
    assert found is not None
    return found.id


def test_stop_all_on_a_stopped_class(teaching: Teaching) -> None:
    found = finish(teaching, teaching.teacher, job_of(post(teaching.teacher, "/teach/courses/c1/stop-all",
                                                           back="grid")))
    assert found["state"] == "done" and found["result"] == {"stopped": 2, "machines": 2}


def test_reset_one_student_needs_confirmation(teaching: Teaching) -> None:
    refused = post(teaching.teacher, "/teach/courses/c1/reset-student", student="alice", back="grid")
    assert refused.status_code == 302 and "job=" not in refused.headers["Location"]
    assert "Nothing was reset" in teaching.teacher.get(refused.headers["Location"]).get_data(as_text=True)
    assert post(teaching.teacher, "/teach/courses/c1/reset-student", student="carol", confirm="yes") \
        .status_code == 404  # not a student of this course
    job = job_of(post(teaching.teacher, "/teach/courses/c1/reset-student", student="alice", confirm="yes",
                      back="grid"))
    found = finish(teaching, teaching.teacher, job)
    # never started: nothing to keep as a submission
    assert found["state"] == "done" and found["result"] == {"student": "alice", "reset": 1, "submitted": 0}
    with state(teaching.app).db.transaction() as session:
        resets = [(e.actor, e.target) for e in session.query(Event).filter(Event.action == "reset")]
    assert resets == [("teacher", teaching.machines["alice"])]


def test_session_begin_and_end_with_the_reset_policy_shown(teaching: Teaching) -> None:
    grid = teaching.teacher.get("/teach/courses/c1/grid").get_data(as_text=True)
    assert 'data-lab="intro-shell" data-reset-policy=' in grid and 'data-action="session-end"' in grid
    ended = post(teaching.teacher, "/teach/courses/c1/session/end", back="grid")
    assert "job=" not in ended.headers["Location"]  # no session to end: nothing runs
    assert "has no session to end" in teaching.teacher.get(ended.headers["Location"]).get_data(as_text=True)
    begun = post(teaching.teacher, "/teach/courses/c1/session/begin", back="grid")
    assert begun.headers["Location"] == "/teach/courses/c1/grid"
    html = teaching.teacher.get("/teach/courses/c1/grid").get_data(as_text=True)
    assert "A session of c1 has begun" in html and "A session is open since" in html
    again = post(teaching.teacher, "/teach/courses/c1/session/begin")
    assert "already has a session" in teaching.teacher.get(again.headers["Location"]).get_data(as_text=True)
    found = finish(teaching, teaching.teacher, job_of(post(teaching.teacher, "/teach/courses/c1/session/end")))
    assert found["state"] == "done" and found["result"]["stopped"] == 2  # type: ignore[index]
    assert "No session is open" in teaching.teacher.get("/teach/courses/c1").get_data(as_text=True)


def test_the_session_end_button_says_what_will_be_reset(teaching: Teaching, make_course: object,
                                                        make_student: object) -> None:
    """An each-session lab: the button and its confirmation count the machines that will be submitted and reset."""
    make_course("c5", owner="teacher", labs=("two-hosts",))  # type: ignore[operator]
    for sid in ("dave", "erin"):
        make_student("c5", sid)  # type: ignore[operator]
    teaching.courses.provision("c5")
    for path in ("/teach/courses/c5", "/teach/courses/c5/grid"):
        html = teaching.teacher.get(path).get_data(as_text=True)
        assert "End session: submit and reset 4 machines</button>" in html, path
        assert ("0 running machines stop, and 4 machines of each-session labs are graded, frozen as submissions "
                "and reset (labs: two-hosts)") in html, path
    html = teaching.teacher.get("/teach/courses/c1/grid").get_data(as_text=True)  # a persist lab: none reset
    assert "End session: submit and reset 0 machines</button>" in html


def test_csrf_missing_or_forged_starts_nothing(teaching: Teaching) -> None:
    for data in ({}, {"csrf_token": "forged"}):
        for path in ("/teach/courses/c1/start-all", "/teach/courses/c1/grade", "/teach/courses/c1/session/begin",
                     "/teach/courses/c1/reset-student"):
            answer = teaching.teacher.post(path, data={**data, "student": "alice", "confirm": "yes"})
            assert answer.status_code == 400, path
            assert "The form was refused" in answer.get_data(as_text=True)
    assert state(teaching.app).job_queries.list(course_id=_course_id(teaching, "c1")) == []
    assert "No session is open" in teaching.teacher.get("/teach/courses/c1").get_data(as_text=True)


def test_grading_stopped_machines_fills_the_grades_page(teaching: Teaching) -> None:
    """Machines never started cannot be graded: the job runs, and the gradebook says "not graded" with the reason
    (empty cells, never 0); the runs are kept."""
    job = job_of(post(teaching.teacher, "/teach/courses/c1/grade", back="grades"))
    found = finish(teaching, teaching.teacher, job)
    assert found["state"] == "done", found
    assert found["result"]["graded"] == 2 and found["result"]["not_checked"] == 16  # type: ignore[index]
    html = teaching.teacher.get("/teach/courses/c1/grades").get_data(as_text=True)
    table = re.search(r'<table id="grades-table">.*?</table>', html, re.S)
    assert table and 'data-student="alice"' in table.group(0)
    status = re.search(r'<tr data-student="alice">.*?<td data-column="intro-shell status">([^<]*)</td>',
                       table.group(0), re.S)
    assert status and status.group(1).startswith("not graded: 8 of 8 checks could not be checked: machine box "
                                                 "was never started")
    points = re.search(r'<tr data-student="alice">.*?<td data-column="intro-shell">([^<]*)</td>', table.group(0),
                       re.S)
    assert points and points.group(1) == ""
    assert "Nothing graded yet" in html and 'id="runs-table"' in html
    grid = teaching.teacher.get("/teach/courses/c1/grid.json").get_json()  # not checked, never 0 passed
    assert [s["checks"] for s in grid["students"]] == [
        {"intro-shell": {"passed": 0, "total": 8, "kind": "grade", "unchecked": 8}}] * 2
    page = teaching.teacher.get("/teach/courses/c1/grid").get_data(as_text=True)
    assert 'title="latest grade: 8 not checked">not checked</td>' in page
