"""The instructor's console replays: only the course's owner lists and fetches a student's recordings; another
course's instructor, the student and strangers get 404 (or the login page), and no name in a URL reaches a path."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import select

from labkit.cli import main
from labkit.runtime.recorder import SessionRecorder, hello_line
from labkit.services.models import Course, GradeRun
from labkit.services.recordings import Recordings

from .conftest import state
from .test_instructor_pages import Teaching, teaching_fixture  # noqa: F401  (the shared fixture)


def record_session(teaching: Teaching, student: str) -> str:
    """A browser session of ``student``'s machine as its supervisor writes it, and a self-check during it."""
    settings = state(teaching.app).settings
    machine = teaching.machines[student]
    started = float(int(time.time()) - 60)  # whole seconds, as a cast's header keeps them
    rec = SessionRecorder({"folder": str(settings.recordings / machine), "machine": machine, "max_bytes": 1 << 20},
                          started)
    rec.from_client(hello_line("browser", student, 90, 20), started)
    rec.from_client(b"ls /\r", started + 1)
    rec.output(b"ls /\r\nbin  etc  root\r\n# ", started + 1.5)
    rec.output(b"done\r\n", started + 30)
    rec.close(started + 31)
    with state(teaching.app).db.transaction() as session:
        course_id = session.scalar(select(Course.id).where(Course.name == "c1"))
        session.add(GradeRun(course_id=course_id, kind="self-check", actor=student, student_filter=student,
                             started_at=dt.datetime.fromtimestamp(started + 10, dt.UTC)))
    return Recordings(settings, state(teaching.app).db).of_machine(machine)[0].id


def test_only_the_course_owner_replays_a_students_console_and_the_cli_exports_it(teaching: Teaching,
                                                                                 tmp_path: Path) -> None:
    recording = record_session(teaching, "alice")
    alice, carol = teaching.machines["alice"], teaching.machines["carol"]
    listing = f"/teach/courses/c1/recordings/{alice}"
    cast = f"{listing}/{recording}.cast"

    answer = teaching.teacher.get(listing)
    assert answer.status_code == 200
    body = answer.get_data(as_text=True)
    assert f'data-recording="{recording}"' in body and f'data-src="{cast}"' in body
    assert re.search(r'<li data-at="10.0">[^<]*self-check</li>', body), body  # the self-check, 10 s in
    assert "'wasm-unsafe-eval'" in answer.headers["Content-Security-Policy"]
    played = [json.loads(line) for line in teaching.teacher.get(cast).get_data(as_text=True).splitlines()]
    assert played[0]["version"] == 2 and (played[0]["width"], played[0]["height"]) == (90, 20)
    assert [e[1:] for e in played[1:]] == [["i", "ls /\r"], ["o", "ls /\r\nbin  etc  root\r\n# "],
                                           ["m", "self-check"], ["o", "done\r\n"]]  # the marker in time order
    downloaded = teaching.teacher.get(f"{cast}?download=1")
    assert b'"m"' not in downloaded.data and "attachment" in downloaded.headers["Content-Disposition"]
    console = teaching.teacher.get(f"/teach/courses/c1/machines/{alice}/console").get_data(as_text=True)
    assert f'href="{listing}"' in console

    for client in (teaching.other, teaching.student):  # another course's instructor; the student herself
        assert client.get(listing).status_code == 404
        assert client.get(cast).status_code == 404
    assert teaching.other.get(f"/teach/courses/c2/recordings/{alice}").status_code == 404  # not c2's machine
    assert teaching.teacher.get(f"/teach/courses/c1/recordings/{carol}").status_code == 404  # not c1's machine
    assert teaching.anonymous.get(cast).status_code == 302
    for bad in ("..%2F..%2Flabkit.db", "20260101T000000Z-browser-1-1", recording + "x"):
        assert teaching.teacher.get(f"{listing}/{bad}.cast").status_code == 404
    assert teaching.teacher.get(f"{listing}?r=nonexistent").status_code == 404
    assert teaching.other.get(f"/teach/courses/c2/recordings/{carol}").status_code == 200  # theirs: no recordings
    cli_lists_and_exports(teaching, recording, tmp_path)


def cli_lists_and_exports(teaching: Teaching, recording: str, tmp_path: Path) -> None:
    """``labkit recordings list`` and ``export`` find the same recording (one fixture for both tests: it provisions
    two courses)."""
    from conftest import settings_env

    env = settings_env(state(teaching.app).settings)
    listed = CliRunner().invoke(main, ["recordings", "list", "c1", "alice", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    machines = json.loads(listed.output)
    assert [(m["machine"], [r["id"] for r in m["recordings"]]) for m in machines] == [("box", [recording])]
    assert machines[0]["recordings"][0]["source"] == "browser" and machines[0]["recordings"][0]["user"] == "alice"
    out = tmp_path / "alice.cast"
    exported = CliRunner().invoke(main, ["recordings", "export", "c1", "alice", "intro-shell/box", "-o", str(out)],
                                  env=env)
    assert exported.exit_code == 0, exported.output
    folder = state(teaching.app).settings.recordings / teaching.machines["alice"]
    assert out.read_bytes() == (folder / f"{recording}.cast").read_bytes()
    wrong = CliRunner().invoke(main, ["recordings", "export", "c1", "alice", "nope", "-o", str(out)], env=env)
    assert wrong.exit_code == 1 and "no machine 'nope'" in wrong.output and "intro-shell/box" in wrong.output
    assert CliRunner().invoke(main, ["recordings", "list", "c1", "zed"], env=env).exit_code == 1
