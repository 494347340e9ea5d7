"""``labkit image``: build, list, show, verify and rm through click, against a temporary installation."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from labkit.cli import main


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_image_verbs(cli_env: dict[str, str]) -> None:
    code, out, err = run(cli_env, "image", "list")
    assert code == 0 and "no images" in out

    code, out, err = run(cli_env, "image", "build", "tiny")
    assert code == 0, err
    assert "built tiny:1" in out
    assert "[" in err  # progress went to stderr

    code, out, _ = run(cli_env, "image", "list", "--json")
    rows = json.loads(out)
    assert [(r["ref"], r["ok"]) for r in rows] == [("tiny:1", True)]

    code, out, _ = run(cli_env, "image", "show", "tiny:1", "--json")
    shown = json.loads(out)
    assert shown["sha256"] == rows[0]["sha256"] and shown["problems"] == []
    code, out, _ = run(cli_env, "image", "show", "tiny")
    assert code == 0 and "tiny:1" in out

    code, out, _ = run(cli_env, "image", "verify")
    assert code == 0 and "tiny:1: ok" in out

    # A writable base image is a problem: verify exits 1 and says why.
    Path(shown["path"]).chmod(0o644)
    code, out, _ = run(cli_env, "image", "verify", "tiny", "--json")
    assert code == 1
    assert any("writable" in p for p in json.loads(out)[0]["problems"])

    code, out, _ = run(cli_env, "image", "rm", "tiny:1")
    assert code == 0 and "removed tiny:1" in out
    code, out, _ = run(cli_env, "image", "list", "--json")
    assert json.loads(out) == []


def test_image_errors_are_one_line(cli_env: dict[str, str]) -> None:
    code, _, err = run(cli_env, "image", "show", "nothing")
    assert code == 1 and err.startswith("labkit: error: there is no image 'nothing'")
    code, _, err = run(cli_env, "image", "build", "nothing")
    assert code == 1 and "no recipe 'nothing'" in err and "tiny" in err
    code, _, err = run(cli_env, "image", "rm", "tiny")
    assert code == 1 and "which version" in err
    code, _, err = run(cli_env, "image", "show", "tiny:x")
    assert code == 1 and "whole-number version" in err
