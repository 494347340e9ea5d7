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


def test_list_and_show_name_each_image_s_backend(cli_env: dict[str, str], qemu_recipes: Path) -> None:
    assert run(cli_env, "image", "build", "tiny")[0] == 0
    code, out, err = run(cli_env, "image", "build", "tiny", "--recipes", str(qemu_recipes))
    assert code == 0 and "built tiny:2" in out, err
    code, out, _ = run(cli_env, "image", "list", "--json")
    assert [(row["ref"], row["backend"]) for row in json.loads(out)] == [("tiny:1", "uml"), ("tiny:2", "qemu")]
    code, out, _ = run(cli_env, "image", "list")
    header, *rows = out.splitlines()
    column = header.split().index("BACKEND")
    assert [row.split()[column] for row in rows] == ["uml", "qemu"]
    code, out, _ = run(cli_env, "image", "show", "tiny")
    assert code == 0 and ["backend:", "qemu"] in [line.split() for line in out.splitlines()]
    code, out, _ = run(cli_env, "image", "show", "tiny:1", "--json")
    assert json.loads(out)["backend"] == "uml"


def test_vm_create_without_backend_takes_the_image_s(cli_env: dict[str, str], qemu_recipes: Path) -> None:
    """No guest boots: creating records the machine and makes its overlay, of the kind its backend uses."""
    assert run(cli_env, "image", "build", "tiny")[0] == 0
    assert run(cli_env, "image", "build", "tiny", "--recipes", str(qemu_recipes))[0] == 0
    for name, image, extra in (("m1", "tiny", ()), ("m2", "tiny:1", ()), ("m3", "tiny", ("--backend", "uml"))):
        code, out, err = run(cli_env, "vm", "create", name, "--image", image, *extra)
        assert code == 0, err
    code, out, _ = run(cli_env, "vm", "status", "--json")
    assert {view["name"]: (view["image"], view["backend"]) for view in json.loads(out)} == {
        "m1": ("tiny:2", "qemu"), "m2": ("tiny:1", "uml"), "m3": ("tiny:2", "uml")}
