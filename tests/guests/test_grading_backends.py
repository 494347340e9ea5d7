"""Grading works the same on every backend: over SSH, over the console when the grader key is gone, and offline from
a stopped machine's disk (flattened by its own overlay kind). One student, one machine and one boot per backend
other than the default (test_grading_class.py grades the default backend's machines)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import LABS, make_course

from labkit.config import Settings
from labkit.labs.loader import load_lab
from labkit.labs.student import for_student, render_solutions
from labkit.runtime import DEFAULT_BACKEND, backend_kinds, get_backend
from labkit.services.grading import Grading
from labkit.services.models import Course

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]


def lab_on(tmp_path: Path, kind: str) -> Path:
    """intro-shell with its machine on backend ``kind`` (and memory enough for every backend)."""
    lab = tmp_path / "intro-shell"
    shutil.copytree(LABS / "intro-shell", lab)
    toml = lab / "lab.toml"
    memory = max(64, get_backend(kind).min_memory_mb)
    text = toml.read_text().replace('image = "tiny"\nmemory = 64\n',
                                    f'image = "tiny"\nmemory = {memory}\nbackend = "{kind}"\n', 1)
    assert f'backend = "{kind}"' in text
    toml.write_text(text)
    return lab


@pytest.mark.parametrize("kind", [k for k in backend_kinds() if k != DEFAULT_BACKEND])
def test_grading_over_ssh_console_and_offline(lk_settings: Settings, tmp_path: Path, kind: str) -> None:
    missing = get_backend(kind).check()
    if missing:
        pytest.skip(f"backend {kind} cannot run here: {'; '.join(missing)}")
    lab = lab_on(tmp_path, kind)
    courses = make_course(lk_settings, "sec1", [lab], [("alice", "Alice", "a@example.org")])
    grading = Grading(lk_settings, courses.db, actor="teacher")
    try:
        name = courses.targets("sec1", student="alice")[0].name
        assert courses.machines.status(name)[0].backend == kind
        courses.start("sec1")
        with courses.db.transaction() as session:
            secret = session.query(Course).filter_by(name="sec1").one().secret
        loaded = load_lab(lab)
        scripts = render_solutions(loaded, for_student(loaded, "sec1", "alice", secret).context)
        with courses.machines.open_guest(name) as guest:
            done = guest.run("sh -s", stdin=dict((n, t) for n, t, _ in scripts)["box.sh"].encode(), timeout=120)
            assert done.ok, done.err

        # over SSH: full marks
        first = grading.grade("sec1").grades[0]
        assert (first.points, first.max_points) == (13, 13), [(r.check_id, r.feedback) for r in first.results]
        assert {r.check_id: r for r in first.results}["root-intact"].transport == "ssh"

        # the student deletes the grader's key: the same marks, over the console
        with courses.machines.open_guest(name) as guest:
            assert guest.run("rm -f /root/.ssh/authorized_keys").ok
        second = grading.grade("sec1").grades[0]
        by = {r.check_id: r for r in second.results}
        assert second.points == 13, [(r.check_id, r.feedback) for r in second.results]
        assert by["root-intact"].transport == "console" and by["user-exists"].transport == "console"

        # stopped: file checks read the disk offline (the overlay flattened), command checks say it must run
        courses.stop("sec1")
        assert courses.machines.status(name)[0].state == "stopped"
        third = {r.check_id: r for r in grading.grade("sec1").grades[0].results}
        assert third["secret-content"].transport == "offline" and third["secret-content"].passed, third
        assert "must run" in third["root-intact"].feedback and third["root-intact"].unchecked
    finally:
        for view in courses.machines.status():  # stop by PID whatever a failed run left running
            if view.state != "stopped":
                courses.machines.kill(view.name)
        courses.db.close()
