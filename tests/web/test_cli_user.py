"""``labkit user`` and the web verbs of ``labkit course`` (links, owner, create --owner), through click."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from labkit.cli import main
from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.accounts import Accounts
from labkit.services.db import Database

from .conftest import LABS, PASSWORD


@pytest.fixture
def env(web_settings: Settings) -> dict[str, str]:
    from conftest import settings_env

    return {**settings_env(web_settings), "LABKIT_ACTOR": "admin"}


def run(env: dict[str, str], *args: str, stdin: str | None = None, ok: bool = True) -> str:
    result = CliRunner().invoke(main, list(args), env=env, input=stdin)
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def accounts(settings: Settings) -> Accounts:
    """A fresh look at the database the CLI wrote (engines are closed at the end of the test)."""
    db = Database(settings)
    _opened.append(db)
    return Accounts(settings, db)


_opened: list[Database] = []


@pytest.fixture(autouse=True)
def _close_databases() -> Iterator[None]:
    yield
    while _opened:
        _opened.pop().close()


def test_user_create_list_passwd_disable(env: dict[str, str], web_settings: Settings) -> None:
    assert "created instructor teacher" in run(env, "user", "create", "teacher", "--role", "instructor",
                                               "--password-stdin", stdin=PASSWORD + "\n")
    assert accounts(web_settings).verify("teacher", PASSWORD) is not None
    # prompted twice without echo
    run(env, "user", "create", "t2", "--role", "instructor", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    run(env, "user", "create", "s1", "--role", "student", "--no-password")
    out = run(env, "user", "create", "teacher", "--role", "student", "--no-password", ok=False)
    assert out.strip().splitlines()[-1] == "labkit: error: a user named 'teacher' already exists"
    assert "too short" in run(env, "user", "create", "x", "--role", "student", "--password-stdin", stdin="abc\n",
                              ok=False)
    listed = json.loads(run(env, "user", "list", "--json"))
    assert {u["username"]: (u["role"], u["has_password"]) for u in listed} == {
        "teacher": ("instructor", True), "t2": ("instructor", True), "s1": ("student", False)}
    assert "no password" in run(env, "user", "list")
    run(env, "user", "passwd", "s1", "--password-stdin", stdin="a new password\n")
    assert accounts(web_settings).verify("s1", "a new password") is not None
    assert "no user named 'ghost'" in run(env, "user", "passwd", "ghost", "--password-stdin", stdin="x" * 9,
                                          ok=False)
    run(env, "user", "disable", "s1")
    assert accounts(web_settings).verify("s1", "a new password") is None
    run(env, "user", "disable", "s1", "--enable")
    assert accounts(web_settings).verify("s1", "a new password") is not None


def test_user_tokens(env: dict[str, str], web_settings: Settings) -> None:
    run(env, "user", "create", "teacher", "--role", "instructor", "--no-password")
    result = CliRunner().invoke(main, ["user", "token", "create", "teacher", "grader"], env=env)
    assert result.exit_code == 0
    secret = result.stdout.strip()
    assert secret.startswith("lk_") and "not shown again" in result.stderr
    assert accounts(web_settings).verify_api_token(secret).username == "teacher"
    assert "grader" in run(env, "user", "token", "list", "teacher") and secret not in run(env, "user", "token",
                                                                                              "list", "teacher")
    run(env, "user", "token", "revoke", "teacher", "grader")
    assert accounts(web_settings).verify_api_token(secret) is None
    assert json.loads(run(env, "user", "token", "list", "teacher", "--json"))[0]["revoked"] is True


def test_course_owner_and_links(env: dict[str, str], web_settings: Settings, tmp_path: Path) -> None:
    ImageStore(web_settings).build(find_recipe(web_settings.recipes, "tiny"))
    run(env, "user", "create", "teacher", "--role", "instructor", "--no-password")
    run(env, "user", "create", "pupil", "--role", "student", "--no-password")
    out = run(env, "course", "create", "c1", "--lab", str(LABS / "intro-shell"), "--owner", "pupil", ok=False)
    assert "only an enabled instructor can own a course" in out
    assert "no course" in run(env, "course", "show", "c1", ok=False)  # refused before anything was made
    run(env, "course", "create", "c1", "--lab", str(LABS / "intro-shell"), "--owner", "teacher")
    teacher = accounts(web_settings).get("teacher")
    assert accounts(web_settings).owned_courses(teacher.id) == ["c1"]
    out = run(env, "course", "create", "c2", "--lab", str(LABS / "intro-shell"), ok=False)
    assert "say who owns course c2 in the web app: --owner USER" in out and "--no-owner" in out
    out = run(env, "course", "create", "c2", "--lab", str(LABS / "intro-shell"), "--owner", "nobody", ok=False)
    assert "no user named 'nobody'; make the instructor first: labkit user create nobody --role instructor" in out
    assert "no course" in run(env, "course", "show", "c2", ok=False)
    assert "with no owner" in run(env, "course", "create", "c2", "--lab", str(LABS / "intro-shell"), "--no-owner")
    run(env, "course", "owner", "c2", "teacher")
    assert accounts(web_settings).owned_courses(teacher.id) == ["c1", "c2"]

    roster = tmp_path / "roster.csv"
    roster.write_text("id,name,email\nalice,Alice A,alice@example.org\nbob,Bob B,bob@example.org\n")
    run(env, "course", "roster", "c1", str(roster))
    links_csv = tmp_path / "links.csv"
    result = CliRunner().invoke(main, ["course", "links", "c1", "--csv", str(links_csv), "--base-url",
                                       "https://lab.example.org/"], env=env)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(links_csv.open()))
    assert [(r["id"], r["name"], r["email"]) for r in rows] == [("alice", "Alice A", "alice@example.org"),
                                                               ("bob", "Bob B", "bob@example.org")]
    assert all(r["url"].startswith("https://lab.example.org/set-password/") for r in rows)
    assert rows[0]["url"] in result.stdout and "2 links for course c1" in result.stderr
    assert links_csv.stat().st_mode & 0o777 == 0o600
    token = rows[0]["url"].rsplit("/", 1)[1]
    accounts(web_settings).use_link(token, PASSWORD)
    again = json.loads(run(env, "course", "links", "c1", "--json"))
    assert [r["id"] for r in again] == ["bob"]  # alice can log in already
    assert [r["id"] for r in json.loads(run(env, "course", "links", "c1", "--student", "alice", "--json"))] == [
        "alice"]
