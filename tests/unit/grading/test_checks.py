"""Each check kind against a stand-in guest (see standin.py): passing, failing, and the ways it can fail."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit.grading.standin import StandInGuest

from labkit.errors import GuestError
from labkit.grading import CHECK_KINDS, CheckResult, make_check
from labkit.guest.result import Result
from labkit.labs.model import CheckDef, ImageRef, Lab, MachineDef
from labkit.labs.render import render_check
from labkit.labs.schema import CHECK_KINDS as SCHEMA_KINDS

PARAMS = {"user": "alice", "uid": 1000, "port": 8080, "token": "t0k3n"}


def lab_with(*checks: CheckDef, folder: Path | None = None, machines: tuple[str, ...] = ("box",)) -> Lab:
    defs = {m: MachineDef(m, ImageRef("tiny"), forwards=(22, 80, 8080)) for m in machines}
    return Lab(id="demo", title="Demo", machines=defs, checks=checks, folder=folder)


def run(kind: str, guest: StandInGuest | None = None, lab_folder: Path | None = None, timeout: float = 10,
        points: float = 2, **options: object) -> CheckResult:
    check = CheckDef(id="c", kind=kind, machine=None if kind == "script" else "box", points=points, timeout=timeout,
                     feedback_pass="well done {{ user }}", feedback_fail="try again {{ user }}", options=options)
    lab = lab_with(check, folder=lab_folder)
    context = {**PARAMS, "lab": "demo", "course": "c1", "student": "s1"}
    guests = {"box": guest} if guest is not None else {}
    return make_check(check, lab).run(guests, PARAMS, render_check(check, context))


def ok(stdout: bytes, code: int = 0, stderr: bytes = b"") -> Result:
    return Result(code, stdout, stderr, 0.01, "ssh")


def test_registry_covers_every_kind_of_the_lab_format() -> None:
    assert set(CHECK_KINDS) == set(SCHEMA_KINDS)


# ---- command ---------------------------------------------------------------------------------------------------

def test_command_regex_over_rendered_templates() -> None:
    guest = StandInGuest(commands={"id -u alice": ok(b"1000\n")})
    result = run("command", guest, command="id -u {{ user }}", regex="^{{ uid }}$")
    assert result.passed and result.points == 2 and result.max_points == 2
    assert result.feedback == "well done alice" and result.transport == "ssh"
    assert "$ id -u alice" in result.evidence and "1000" in result.evidence


def test_command_regex_fails_with_feedback_and_reason_in_evidence() -> None:
    guest = StandInGuest(commands={"id -u alice": ok(b"1001\n")})
    result = run("command", guest, command="id -u {{ user }}", regex="^{{ uid }}$")
    assert not result.passed and result.points == 0
    assert result.feedback == "try again alice"
    assert "does not match /^1000$/" in result.evidence


@pytest.mark.parametrize(("options", "passed"), [
    ({"equals": "hello world"}, True),
    ({"equals": "hello"}, False),
    ({"contains": "lo wo"}, True),
    ({"contains": "bye"}, False),
    ({"contains": "hello", "exit_code": 3}, True),
    ({"contains": "hello", "exit_code": 0}, False),
    ({}, False),  # no expectation at all: exit code 0 is required
    ({"regex": "^hel+o"}, True),
])
def test_command_equals_contains_exit_code(options: dict[str, object], passed: bool) -> None:
    guest = StandInGuest(commands={"greet": ok(b"hello world\r\n", code=3)})
    assert run("command", guest, command="greet", **options).passed is passed


def test_command_without_expectations_needs_exit_code_zero() -> None:
    assert run("command", StandInGuest(commands={"true": ok(b"")}), command="true").passed


def test_bad_rendered_regex_is_a_failed_result() -> None:
    guest = StandInGuest(commands={"x": ok(b"x")})
    result = run("command", guest, command="x", regex="{{ '(' }}")
    assert not result.passed and "bad regular expression" in result.evidence


def test_guest_error_becomes_a_failed_result_with_the_reason() -> None:
    guest = StandInGuest(commands={"x": GuestError("SSH to root@127.0.0.1:2222 failed: connection refused")})
    result = run("command", guest, command="x")
    assert not result.passed and result.points == 0
    assert "connection refused" in result.evidence


def test_the_check_timeout_bounds_guest_calls() -> None:
    guest = StandInGuest(commands={"slow": ok(b"")}, hang=5.0)
    result = run("command", guest, timeout=0.6, command="slow")
    assert not result.passed and "timed out" in result.evidence
    assert guest.calls[0][2] <= 0.6
    assert result.duration < 4.5  # well below the 5 s the guest would hang, with room for a loaded machine


# ---- file ------------------------------------------------------------------------------------------------------

@pytest.fixture
def home() -> StandInGuest:
    guest = StandInGuest()
    guest.add_file("/home/alice", b"", mode=0o700, uid=1000, gid=1000, kind="dir")
    guest.add_file("/home/alice/secret.txt", b"opensesame\n", mode=0o600, uid=1000, gid=50)
    return guest


@pytest.mark.parametrize(("options", "passed"), [
    ({}, True),
    ({"exists": False}, False),
    ({"contains": "sesame"}, True),
    ({"contains": "other"}, False),
    ({"regex": "^opensesame$"}, True),
    ({"regex": "^open$"}, False),
    ({"mode": "0600"}, True),
    ({"mode": 0o600}, True),
    ({"mode": "0644"}, False),
    ({"owner": "{{ user }}"}, True),
    ({"owner": "alice:staff"}, True),
    ({"owner": "alice:alice"}, False),
    ({"owner": "root"}, False),
    ({"owner": "1000:50"}, True),
    ({"owner": "nobody"}, False),
])
def test_file_options(home: StandInGuest, options: dict[str, object], passed: bool) -> None:
    assert run("file", home, path="/home/{{ user }}/secret.txt", **options).passed is passed


def test_file_failures_say_what_is_wrong(home: StandInGuest) -> None:
    result = run("file", home, path="/home/alice/secret.txt", mode="0640", owner="root:staff")
    assert "mode of /home/alice/secret.txt is 0600, not 0640" in result.evidence
    assert "owned by user id 1000, not root (0)" in result.evidence
    assert "there is no user 'nobody'" in run("file", home, path="/home/alice", owner="nobody").evidence


def test_missing_file(home: StandInGuest) -> None:
    result = run("file", home, path="/nope", contains="x")
    assert not result.passed and "/nope does not exist" in result.evidence
    assert run("file", home, path="/nope", exists=False).passed


# ---- port ------------------------------------------------------------------------------------------------------

def test_port_listening_inside_the_guest() -> None:
    guest = StandInGuest(ports={8080})
    assert run("port", guest, port="{{ port }}").passed
    assert not run("port", guest, port=22).passed
    assert run("port", guest, port=22, open=False).passed
    assert not run("port", guest, port=8080, open=False).passed


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A real server on 127.0.0.1 standing where slirp's forward would be."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []

    def serve() -> None:
        try:
            while True:
                accepted.append(server.accept()[0])
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    for conn in accepted:
        conn.close()
    thread.join(2)


def test_port_reached_from_the_host_through_the_forward(host_listener: int) -> None:
    guest = StandInGuest(forwards={8080: host_listener})
    result = run("port", guest, port=8080, via="host")
    assert result.passed and result.transport == "host"


def test_port_from_the_host_closed_or_not_forwarded() -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    closed_port = free.getsockname()[1]
    free.close()
    result = run("port", StandInGuest(forwards={8080: closed_port}), port=8080, via="host")
    assert not result.passed and "cannot connect" in result.evidence
    result = run("port", StandInGuest(ports={8080}), port=8080, via="host")
    assert not result.passed and "not forwarded" in result.evidence


def test_port_from_the_host_that_accepts_then_closes_is_not_open() -> None:
    """What slirp does when nothing listens behind a forward: accept, then close at once."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def close_each() -> None:
        conn, _ = server.accept()
        conn.close()

    thread = threading.Thread(target=close_each, daemon=True)
    thread.start()
    result = run("port", StandInGuest(forwards={80: server.getsockname()[1]}), port=80, via="host")
    thread.join(2)
    server.close()
    assert not result.passed and "closed at once" in result.evidence


# ---- http ------------------------------------------------------------------------------------------------------

def test_http_status_and_body() -> None:
    guest = StandInGuest(ports={8080}, pages={(8080, "/"): (200, b"<p>token: t0k3n</p>")})
    assert run("http", guest, port="{{ port }}", contains="token: {{ token }}").passed
    assert run("http", guest, port=8080, regex=r"<p>token: \w+</p>").passed
    assert run("http", guest, port=8080, equals="<p>token: t0k3n</p>").passed
    assert not run("http", guest, port=8080, contains="other").passed
    result = run("http", guest, port=8080, path="/missing", status=200)
    assert not result.passed and "status is 404, not 200" in result.evidence
    assert run("http", guest, port=8080, path="/missing", status=404).passed


def test_http_via_host_needs_a_forward_and_via_guest_stays_inside() -> None:
    guest = StandInGuest(ports={80}, pages={(80, "/"): (200, b"hi")}, forwards={80: 18080})
    result = run("http", guest, port=80, via="host")
    assert result.passed and result.transport == "host" and guest.calls[-1][3] is None
    result = run("http", guest, port=80)
    assert result.passed and guest.calls[-1][3] == "ssh"
    assert "not forwarded" in run("http", StandInGuest(ports={80}), port=80, via="host").evidence


def test_http_without_answer_is_a_failed_result() -> None:
    result = run("http", StandInGuest(), port=8080)
    assert not result.passed and "no HTTP answer" in result.evidence


# ---- unknown machine ---------------------------------------------------------------------------------------------

def test_unknown_machine_is_a_failed_result() -> None:
    result = run("command", None, command="true")
    assert not result.passed and "machine 'box' of this check is not available" in result.evidence


# ---- script ------------------------------------------------------------------------------------------------------

GRADER = '''
CALLS = []

def partial(guests, params):
    CALLS.append(1)
    out = guests["box"].run("id -nG " + params["user"], timeout=999).out
    points = sum(1 for group in ("alice", "staff", "wheel") if group in out.split())
    return points, f"{points} of 3 groups"

def full(guests, params):
    return 3, "all good"

def calls(guests, params):
    return 0, f"{len(CALLS)} earlier calls"

def broken(guests, params):
    raise ValueError("oops")

def wrong(guests, params):
    return "three"

def unreachable(guests, params):
    return guests["box"].run("x")

def forever(guests, params):
    while True:
        try:
            pass
        except Exception:
            pass
'''


@pytest.fixture
def lab_folder(tmp_path: Path) -> Path:
    (tmp_path / "grader.py").write_text(GRADER)
    return tmp_path


def test_script_partial_credit(lab_folder: Path) -> None:
    guest = StandInGuest(commands={"id -nG alice": ok(b"alice staff\n")})
    result = run("script", guest, lab_folder, points=3, function="partial")
    assert not result.passed and result.points == 2 and result.max_points == 3
    assert result.feedback == "2 of 3 groups" and result.transport == "ssh"
    assert guest.calls[0][2] <= 10  # the script's timeout=999 is bounded by the check's


def test_script_full_marks_and_each_check_imports_grader_afresh(lab_folder: Path) -> None:
    """Each script check runs grader.py in its own process: nothing a grader keeps survives into the next check."""
    assert run("script", StandInGuest(), lab_folder, points=3, function="full").passed
    guest = StandInGuest(commands={"id -nG alice": ok(b"alice staff wheel\n")})
    assert run("script", guest, lab_folder, points=3, function="partial").passed
    result = run("script", StandInGuest(), lab_folder, points=3, function="calls")
    assert result.feedback == "0 earlier calls"
    (lab_folder / "grader.py").write_text("raise SystemExit('imported again')")
    result = run("script", StandInGuest(), lab_folder, points=3, function="full")
    assert not result.passed and "imported again" in result.evidence


@pytest.mark.parametrize(("function", "message"), [
    ("broken", "ValueError: oops"),
    ("wrong", "must return (points, feedback)"),
    ("missing", "has no function missing"),
    ("unreachable", "has no way in"),
])
def test_script_problems_are_failed_results(lab_folder: Path, function: str, message: str) -> None:
    guest = StandInGuest(commands={"x": GuestError("machine box has no way in")})
    result = run("script", guest, lab_folder, function=function)
    assert not result.passed and result.points == 0 and message in result.evidence


def test_script_that_never_ends_times_out_in_seconds(lab_folder: Path) -> None:
    started = time.monotonic()
    result = run("script", StandInGuest(), lab_folder, timeout=0.5, function="forever")
    assert time.monotonic() - started < 6  # the check's 0.5 s, the 2 s grace, and the sandbox's start
    assert not result.passed and result.points == 0
    assert "grader.py timed out: it did not finish within 2.5 s" in result.evidence


def test_missing_grader_file(tmp_path: Path) -> None:
    result = run("script", StandInGuest(), tmp_path, function="full")
    assert not result.passed and "no grader.py" in result.evidence
