"""The runner: dependency order and skipping, hidden filtering, failures staying within one check, totals."""

from __future__ import annotations

from pathlib import Path

from unit.grading.standin import StandInGuest

from labkit.errors import GuestError
from labkit.grading import grade, total
from labkit.guest.result import Result
from labkit.labs import load_lab
from labkit.labs.model import CheckDef, ImageRef, Lab, MachineDef
from labkit.labs.render import template_context

REPO = Path(__file__).resolve().parents[3]


def ok(stdout: bytes, code: int = 0) -> Result:
    return Result(code, stdout, b"", 0.01, "ssh")


def two_machine_lab(*checks: CheckDef, folder: Path | None = None) -> Lab:
    machines = {m: MachineDef(m, ImageRef("tiny")) for m in ("a", "b")}
    return Lab(id="demo", title="Demo", machines=machines, checks=checks, folder=folder)


def cmd(check_id: str, command: str, machine: str = "a", **fields: object) -> CheckDef:
    return CheckDef(id=check_id, kind="command", machine=machine, options={"command": command}, **fields)  # type: ignore[arg-type]


CONTEXT = {"lab": "demo", "course": "c1", "student": "s1", "user": "alice"}


def test_dependencies_run_first_and_a_failed_one_skips_its_dependents() -> None:
    lab = two_machine_lab(
        cmd("second", "true", depends_on=("first",), points=2),
        cmd("third", "true", depends_on=("second",)),
        cmd("first", "false"),
        cmd("other", "true", machine="b"),
    )
    a = StandInGuest("a", commands={"true": ok(b""), "false": ok(b"", 1)})
    b = StandInGuest("b", commands={"true": ok(b"")})
    results = grade(lab, None, {"a": a, "b": b}, {}, CONTEXT)
    assert [r.check_id for r in results] == ["second", "third", "first", "other"]
    assert [r.passed for r in results] == [False, False, False, True]
    second, third = results[0], results[1]
    assert second.skipped_reason == "not checked: it needs check 'first', which did not pass"
    assert second.points == 0 and second.max_points == 2 and second.feedback == second.skipped_reason
    assert third.skipped_reason and "'second'" in third.skipped_reason
    assert [c[1] for c in a.calls] == ["false"]  # skipped checks touch no guest
    assert total(results) == (1.0, 5.0)


def test_passing_dependency_lets_dependents_run() -> None:
    lab = two_machine_lab(cmd("first", "true"), cmd("second", "true", depends_on=("first",)))
    a = StandInGuest("a", commands={"true": ok(b"")})
    assert all(r.passed and r.skipped_reason is None for r in grade(lab, None, {"a": a}, {}, CONTEXT))


def test_hidden_checks_are_left_out_but_still_gate_their_dependents() -> None:
    lab = two_machine_lab(cmd("secret", "false", hidden=True), cmd("shown", "true", depends_on=("secret",)),
                          cmd("plain", "true"))
    a = StandInGuest("a", commands={"true": ok(b""), "false": ok(b"", 1)})
    results = grade(lab, None, {"a": a}, {}, CONTEXT, include_hidden=False)
    assert [r.check_id for r in results] == ["shown", "plain"]
    assert results[0].skipped_reason and not results[0].passed
    assert [r.check_id for r in grade(lab, None, {"a": a}, {}, CONTEXT)] == ["secret", "shown", "plain"]


def test_a_subset_of_checks_still_honours_dependencies_outside_it() -> None:
    lab = two_machine_lab(cmd("first", "false"), cmd("second", "true", depends_on=("first",)))
    a = StandInGuest("a", commands={"true": ok(b""), "false": ok(b"", 1)})
    results = grade(lab, [lab.checks[1]], {"a": a}, {}, CONTEXT)
    assert [r.check_id for r in results] == ["second"] and results[0].skipped_reason


def test_unknown_machine_and_guest_errors_stay_within_their_check() -> None:
    lab = two_machine_lab(cmd("on-a", "boom"), cmd("on-b", "true", machine="b"), cmd("also-a", "true"))
    a = StandInGuest("a", commands={"boom": GuestError("command timed out after 10 s over SSH: 'boom'"),
                                    "true": ok(b"")})
    results = grade(lab, None, {"a": a}, {}, CONTEXT)  # machine b did not boot: no handle
    assert [r.passed for r in results] == [False, False, True]
    assert "timed out" in results[0].evidence
    assert "machine 'b' of this check is not available" in results[1].evidence


def test_a_template_that_does_not_render_is_that_checks_failed_result() -> None:
    lab = two_machine_lab(cmd("bad", "echo {{ nope }}"), cmd("good", "true"))
    a = StandInGuest("a", commands={"true": ok(b"")})
    results = grade(lab, None, {"a": a}, {}, CONTEXT)
    assert not results[0].passed and "nope" in results[0].evidence
    assert results[1].passed


def test_script_check_sees_every_machine(tmp_path: Path) -> None:
    (tmp_path / "grader.py").write_text(
        "def both(guests, params):\n"
        "    up = [n for n in sorted(guests) if guests[n].run('true').exit_code == 0]\n"
        "    return len(up), ' '.join(up) + ' ' + params['user']\n")
    check = CheckDef(id="both", kind="script", points=2, options={"function": "both"})
    lab = two_machine_lab(check, folder=tmp_path)
    a = StandInGuest("a", commands={"true": ok(b"")})
    b = StandInGuest("b", commands={"true": ok(b"", 1)})
    [result] = grade(lab, None, {"a": a, "b": b}, {"user": "alice"}, CONTEXT)
    assert result.points == 1 and not result.passed and result.feedback == "a alice"


def test_intro_shell_example_lab_against_a_stand_in_machine() -> None:
    """The shipped lab's own checks and grader.py, with a machine set up the way its solution leaves it."""
    lab = load_lab(REPO / "labs" / "intro-shell")
    params = {name: f"v{name}" for name in lab.params}
    params.update(user="alice", uid=1000)
    context = template_context(lab, params, "c1", "s1")
    machine = next(iter(lab.machines))
    guest = StandInGuest(machine, commands={"id -u root": ok(b"0\n"), "id -u alice": ok(b"1000\n")})
    results = grade(lab, None, {machine: guest}, params, context)
    by_id = {r.check_id: r for r in results}
    assert by_id["root-intact"].passed and by_id["user-exists"].passed
    assert not by_id["shared-folder"].passed and "does not exist" in by_id["shared-folder"].feedback
    assert len(results) == len(lab.checks)
    assert len(grade(lab, None, {machine: guest}, params, context, include_hidden=False)) == \
        len([c for c in lab.checks if not c.hidden])


def test_a_visible_check_never_names_a_hidden_dependency() -> None:
    """Issue 11: 'needs check 'hidden-gate', which did not pass' told students the hidden check's id and result."""
    lab = two_machine_lab(cmd("hidden-gate", "false", hidden=True, title="The secret gate"),
                          cmd("shown", "true", depends_on=("hidden-gate",)),
                          cmd("also-hidden", "true", hidden=True, depends_on=("hidden-gate",)))
    a = StandInGuest("a", commands={"true": ok(b""), "false": ok(b"", 1)})
    for include_hidden in (False, True):
        shown = next(r for r in grade(lab, None, {"a": a}, {}, CONTEXT, include_hidden) if r.check_id == "shown")
        assert shown.skipped_reason == shown.feedback == shown.evidence == \
            "not checked: it needs an earlier step that did not pass"
    # the instructor's hidden checks keep the exact reason
    also = grade(lab, None, {"a": a}, {}, CONTEXT)[2]
    assert also.skipped_reason == "not checked: it needs check 'hidden-gate', which did not pass"
