"""The example labs shipped in labs/: each validates clean, has what an instructor and `labkit lab test` need, and
renders different values for different students (instructions, files and solutions)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from labkit.labs import Lab, load_lab, student_params, validate_lab
from labkit.labs.render import render_check, render_instructions, render_machine_files, template_context
from labkit.labs.student import render_solutions
from labkit.labs.topology import plan_topology

REPO = Path(__file__).resolve().parents[3]
LABS = REPO / "labs"
EXAMPLES = ("intro-shell", "web-server", "two-hosts", "mixed-backends")
IMAGES = {"tiny": "uml", "debian-bookworm": "uml"}
SECRET = "example-labs-test-secret"


def context_for(lab: Lab, student: str) -> dict[str, object]:
    params = student_params(lab, "course-1", student, SECRET)
    topology = plan_topology(lab, template_context(lab, params, "course-1", student))
    return template_context(lab, params, "course-1", student, topology)


def test_every_lab_folder_is_an_example() -> None:
    assert sorted(p.name for p in LABS.iterdir() if p.is_dir()) == sorted(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_lab_validates_clean(name: str) -> None:
    assert [str(p) for p in validate_lab(LABS / name, known_images=IMAGES)] == []


@pytest.mark.parametrize("name", EXAMPLES)
def test_lab_has_instructor_files_and_checks(name: str) -> None:
    lab = load_lab(LABS / name, known_images=IMAGES)
    assert lab.id == name
    assert (LABS / name / "README.md").is_file()
    assert 4 <= len(lab.checks) <= 8
    assert any(c.hidden for c in lab.checks) and not all(c.hidden for c in lab.checks)
    assert any(c.baseline_pass for c in lab.checks)
    assert all(c.feedback_pass or c.kind == "script" for c in lab.checks)
    assert all(c.feedback_fail or c.kind == "script" for c in lab.checks)
    solutions = {p.name.removesuffix(".j2") for p in (LABS / name / "solution").iterdir()}
    assert solutions == {f"{machine}.sh" for machine in lab.machines}


@pytest.mark.parametrize("name", EXAMPLES)
def test_two_students_get_different_values(name: str, tmp_path: Path) -> None:
    lab = load_lab(LABS / name)
    rendered = {}
    for student in ("alice", "bob"):
        context = context_for(lab, student)
        files = {}
        for machine in lab.machines:
            target = tmp_path / student / machine
            for rel in render_machine_files(lab, machine, context, target):
                files[f"{machine}/{rel}"] = (target / rel).read_text()
        rendered[student] = {
            "params": {k: context[k] for k in lab.params},
            "instructions": render_instructions(lab, context),
            "files": files,
            "solutions": {n: text for n, text, _x in render_solutions(lab, context)},
            "checks": [render_check(c, context, i) for i, c in enumerate(lab.checks)],
        }
    alice, bob = rendered["alice"], rendered["bob"]
    choices = {n for n, p in lab.params.items() if p.kind == "choice"}  # few values: two students may share one
    assert all(alice["params"][k] != bob["params"][k] for k in alice["params"] if k not in choices)
    assert alice["instructions"] != bob["instructions"]
    for value in alice["params"].values():  # every value the student needs is in their instructions
        assert str(value) in alice["instructions"]
    assert alice["solutions"].keys() == bob["solutions"].keys()
    assert all(alice["solutions"][n] != bob["solutions"][n] for n in alice["solutions"])
    assert alice["checks"] != bob["checks"]
    assert "{{" not in str(alice) and "{%" not in str(alice)
    templated = [rel for rel in alice["files"] if alice["files"][rel] != bob["files"][rel]]
    assert templated or not any(p.suffix == ".j2" for p in (LABS / name / "files").rglob("*"))


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("shell", ["dash", "busybox"])
def test_solutions_are_valid_posix_sh(name: str, shell: str) -> None:
    """The solutions run under busybox ash (tiny) and dash (Debian): both must at least parse them."""
    program = shutil.which(shell)
    if program is None:
        pytest.skip(f"{shell} is not installed")
    lab = load_lab(LABS / name)
    for script, text, _executable in render_solutions(lab, context_for(lab, "carol")):
        assert text.startswith("#!/bin/sh\n")
        command = [program, "sh", "-n"] if shell == "busybox" else [program, "-n"]
        result = subprocess.run(command, input=text, capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, f"{name}/{script}: {result.stderr}"


@pytest.fixture
def serve_file() -> Path:
    return LABS / "web-server" / "files" / "web" / "usr" / "local" / "bin" / "serve-file"


def ask(serve_file: Path, root: Path, request: str) -> tuple[str, str]:
    """Run web-server's serve-file the way systemd's Accept=yes does: the connection on stdin and stdout."""
    result = subprocess.run(["bash", str(serve_file), str(root)], input=request.encode(), capture_output=True,
                            timeout=15, check=True)
    head, _, body = result.stdout.decode().partition("\r\n\r\n")
    return head, body


def test_serve_file_answers_http(serve_file: Path, tmp_path: Path) -> None:
    assert serve_file.stat().st_mode & 0o111, "serve-file must be executable (the lab copies its mode)"
    (tmp_path / "index.html").write_text("<h1>Welcome to maple42</h1>\n<p>token: 0123</p>\n")
    head, body = ask(serve_file, tmp_path, "GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    assert head.startswith("HTTP/1.0 200 OK") and f"Content-Length: {len(body.encode())}" in head
    assert body == "<h1>Welcome to maple42</h1>\n<p>token: 0123</p>\n"
    head, body = ask(serve_file, tmp_path, "GET /index.html?x=1 HTTP/1.0\r\n\r\n")
    assert head.startswith("HTTP/1.0 200") and "token: 0123" in body
    head, body = ask(serve_file, tmp_path, "HEAD / HTTP/1.0\r\n\r\n")
    assert head.startswith("HTTP/1.0 200") and body == ""
    assert ask(serve_file, tmp_path, "GET /nope.html HTTP/1.0\r\n\r\n")[0].startswith("HTTP/1.0 404")
    assert ask(serve_file, tmp_path, "GET /../../etc/passwd HTTP/1.0\r\n\r\n")[0].startswith("HTTP/1.0 403")
    assert ask(serve_file, tmp_path, "POST / HTTP/1.0\r\n\r\n")[0].startswith("HTTP/1.0 405")
