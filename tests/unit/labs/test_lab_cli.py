"""``labkit lab validate|show|render`` through click, against the shipped labs and broken copies of them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from lab_snippets import GATED

from labkit.cli import main
from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore

REPO = Path(__file__).resolve().parents[3]
LABS = REPO / "labs"


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def line_of(path: Path, text: str) -> int:
    """The 1-based line of ``path`` that holds ``text``."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.fixture
def broken_lab(tmp_path: Path) -> Path:
    """A copy of intro-shell with three mistakes in two files."""
    lab = tmp_path / "intro-shell"
    shutil.copytree(LABS / "intro-shell", lab)
    toml = lab / "lab.toml"
    text = toml.read_text()
    text = text.replace("memory = 64", 'memory = "lots"', 1)
    text = text.replace('regex = "^0$"', 'regex = "^(0$"', 1)
    toml.write_text(text)
    instructions = lab / "instructions.md"
    instructions.write_text(instructions.read_text().replace("`{{ uid }}` |", "`{{ userid }}` |"))
    return lab


@pytest.mark.parametrize("name", ["intro-shell", "web-server", "two-hosts"])
def test_validate_shipped_lab_without_images(cli_env: dict[str, str], name: str) -> None:
    code, out, err = run(cli_env, "lab", "validate", str(LABS / name))
    assert code == 0, out
    assert out == f"ok: {LABS / name}\n"
    assert "no images are built" in err


def test_validate_reports_every_problem_with_file_and_line(cli_env: dict[str, str], broken_lab: Path) -> None:
    code, out, err = run(cli_env, "lab", "validate", str(broken_lab))
    assert code == 1
    toml, instructions = broken_lab / "lab.toml", broken_lab / "instructions.md"
    lines = out.splitlines()
    assert f"{toml}:{line_of(toml, 'memory = ')}: machines.box.memory: memory must be an integer" in lines
    regex_line = line_of(toml, '"^(0$"')
    assert any(line.startswith(f"{toml}:{regex_line}: checks[0].regex: bad regular expression") for line in lines), out
    assert any(line.startswith(f"{instructions}:{line_of(instructions, 'userid')}: template uses 'userid'")
               for line in lines), out
    assert all(re.match(r"^\S+:\d+: ", line) for line in lines), out
    assert f"{len(lines)} problem(s)" in err

    code, out, _err = run(cli_env, "lab", "validate", str(broken_lab / "lab.toml"), "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["images_checked"] is False
    assert {(p["file"], p["key"]) for p in report["problems"]} >= {
        (str(toml), "machines.box.memory"), (str(toml), "checks[0].regex"), (str(instructions), "")}
    assert all(isinstance(p["line"], int) for p in report["problems"])


def test_validate_malformed_toml(cli_env: dict[str, str], broken_lab: Path) -> None:
    toml = broken_lab / "lab.toml"
    toml.write_text(toml.read_text() + "\n[machines.box\n")
    code, out, _err = run(cli_env, "lab", "validate", str(broken_lab))
    assert code == 1
    assert out.startswith(f"{toml}:{len(toml.read_text().splitlines())}: malformed TOML")


def test_validate_checks_built_images(cli_env: dict[str, str], lk_settings: Settings) -> None:
    ImageStore(lk_settings).build(find_recipe(REPO / "base_images", "tiny"))
    code, out, err = run(cli_env, "lab", "validate", str(LABS / "two-hosts"))
    assert code == 0 and out.startswith("ok: ") and "no images" not in err
    code, out, _err = run(cli_env, "lab", "validate", str(LABS / "web-server"), "--json")
    report = json.loads(out)
    assert code == 1 and report["images_checked"] is True
    assert [(p["key"], p["message"]) for p in report["problems"]] == [
        ("machines.web.image", "image debian-bookworm is not built (labkit image build debian-bookworm)")]


def test_show(cli_env: dict[str, str]) -> None:
    code, out, _err = run(cli_env, "lab", "show", str(LABS / "two-hosts"))
    assert code == 0
    assert "a: image tiny, 64 MB" in out and "start order: [b] then [a]" in out
    assert "route-on-a" in out and "[hidden]" in out
    assert "  3. service: Start b's web service (checks: service-listens, bound-to-service)" in out
    code, out, _err = run(cli_env, "lab", "show", str(LABS / "intro-shell"), "--json")
    shown = json.loads(out)
    assert shown["id"] == "intro-shell" and list(shown["machines"]) == ["box"]
    assert shown["params"]["team"]["kind"] == "choice"
    assert shown["points"]["total"] == sum(c["points"] for c in shown["checks"]) > shown["points"]["visible"]


def test_show_broken_lab_is_one_error(cli_env: dict[str, str], broken_lab: Path) -> None:
    code, out, err = run(cli_env, "lab", "show", str(broken_lab))
    assert code == 1 and out == ""
    assert err.startswith("labkit: error: ") and "3 problem(s)" in err


def test_render_writes_files_for_one_student(cli_env: dict[str, str], tmp_path: Path) -> None:
    outputs = {}
    for student in ("alice", "bob"):
        outdir = tmp_path / student
        code, out, err = run(cli_env, "lab", "render", str(LABS / "two-hosts"), "--student", student, str(outdir))
        assert code == 0, err
        assert "preview secret" in err and f"into {outdir}" in out
        values = json.loads((outdir / "values.json").read_text())
        assert values["student"] == student and values["course"] == "preview"
        instructions = (outdir / "instructions.md").read_text()
        assert values["params"]["svc"] in instructions and values["addresses"]["b"]["lan"] in instructions
        page = (outdir / "machines" / "b" / "files" / "srv" / "www" / "index.html").read_text()
        assert f"token: {values['params']['token']}" in page
        solution = outdir / "solution" / "a.sh"
        assert solution.stat().st_mode & 0o111
        route = f"ip route replace {values['params']['svc']} via {values['addresses']['b']['lan']}"
        assert route in solution.read_text()
        checks = json.loads((outdir / "checks.json").read_text())
        assert {c["id"]: c for c in checks}["service-listens"]["port"] == values["params"]["port"]
        outputs[student] = values
    assert outputs["alice"]["params"] != outputs["bob"]["params"]

    # The same course, student and secret give the same values; another secret gives others.
    code, out, _err = run(cli_env, "lab", "render", str(LABS / "two-hosts"), "--student", "alice", "--json",
                          str(tmp_path / "again"))
    assert code == 0 and json.loads(out)["params"] == outputs["alice"]["params"]
    code, out, _err = run(cli_env, "lab", "render", str(LABS / "two-hosts"), "--student", "alice", "--course", "net1",
                          "--secret", "a-real-course-secret-1234", "--json", str(tmp_path / "real"))
    rendered = json.loads(out)
    assert code == 0 and rendered["preview_secret"] is False and rendered["params"] != outputs["alice"]["params"]


def test_render_refuses_bad_input(cli_env: dict[str, str], tmp_path: Path, broken_lab: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    code, _out, err = run(cli_env, "lab", "render", str(LABS / "intro-shell"), "--student", "alice", str(taken))
    assert code == 1 and "is not empty" in err and (taken / "notes.txt").read_text() == "mine"
    code, _out, err = run(cli_env, "lab", "render", str(LABS / "intro-shell"), "--student", "../x", str(tmp_path / "o"))
    assert code == 1 and "student id" in err
    code, _out, err = run(cli_env, "lab", "render", str(broken_lab), "--student", "alice", str(tmp_path / "b"))
    assert code == 1 and "problem(s)" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "b").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(("template", "says"), [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
     "template stopped after "),
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
     "template stopped after "),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(1) }}", "template stopped: a macro calls itself too deeply"),
])
def test_validate_stops_a_runaway_template_in_seconds(cli_env: dict[str, str], tmp_path: Path, template: str,
                                                      says: str) -> None:
    lab = tmp_path / "intro-shell"
    shutil.copytree(LABS / "intro-shell", lab)
    instructions = lab / "instructions.md"
    instructions.write_text(instructions.read_text() + f"\n## Extra\n\n{template}\n")
    line = len(instructions.read_text().splitlines())
    labkit = Path(sys.executable).with_name("labkit")
    started = time.monotonic()
    done = subprocess.run([str(labkit), "lab", "validate", str(lab)], env={**os.environ, **cli_env},
                          capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 10  # the rendering budget is 2 s per template; the rest is Python starting
    assert done.returncode == 1
    [only] = done.stdout.splitlines()
    assert only.startswith(f"{instructions}:{line}: {says}"), only
    assert "Traceback" not in done.stdout + done.stderr


def test_validate_warns_about_a_visible_check_that_depends_on_a_hidden_one(cli_env: dict[str, str],
                                                                          tmp_path: Path) -> None:
    lab = tmp_path / "intro-shell"
    shutil.copytree(LABS / "intro-shell", lab)
    toml = lab / "lab.toml"
    toml.write_text(toml.read_text() + GATED)
    code, out, err = run(cli_env, "lab", "validate", str(lab))
    assert code == 0 and out == f"ok: {lab}\n"  # a warning, not a problem
    line = line_of(toml, 'depends_on = ["hidden-gate"]')
    assert f"warning: {toml}:{line}: checks[9].depends_on: visible check after-gate depends on hidden check " \
           "hidden-gate" in err
    code, out, _err = run(cli_env, "lab", "validate", "--json", str(lab))
    found = json.loads(out)
    assert code == 0 and found["ok"] and [w["key"] for w in found["warnings"]] == ["checks[9].depends_on"]
    assert json.loads(run(cli_env, "lab", "validate", "--json", str(LABS / "intro-shell"))[1])["warnings"] == []
