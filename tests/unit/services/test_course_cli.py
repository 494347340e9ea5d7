"""``labkit course show|status`` through click: plain text for people (no Python reprs), a header, machine names;
the audit log's provisioning line in words."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from labkit.cli import main
from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.audit_view import AuditView
from labkit.services.db import Database

LABS = Path(__file__).resolve().parents[3] / "labs"


def run(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_show_status_and_audit_read_as_text(cli_env: dict[str, str], lk_settings: Settings, tmp_path: Path) -> None:
    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    run(cli_env, "course", "create", "net101", "--lab", str(LABS / "intro-shell"), "--lab", str(LABS / "two-hosts"),
        "--no-owner")
    roster = tmp_path / "roster.csv"
    roster.write_text("id,name,email\nalice,Alice,alice@example.org\n")
    run(cli_env, "course", "roster", "net101", str(roster))
    run(cli_env, "course", "provision", "net101")

    shown = run(cli_env, "course", "show", "net101")
    assert not any(mark in shown for mark in ("{", "}", "[", "'")), shown  # no dict, list or str reprs
    lines = shown.splitlines()
    assert lines[0].split() == ["course:", "net101"]
    assert "students:        1 (0 archived)" in lines
    two_hosts = next(line for line in lines if line.strip().startswith("two-hosts"))
    assert two_hosts.split()[:5] == ["two-hosts", "version", "1", "each-session", "provisioned"]

    status = run(cli_env, "course", "status", "net101").splitlines()
    assert status[0].split()[:5] == ["STUDENT", "LAB", "LAB", "MACHINE", "MACHINE"]
    rows = [line.split() for line in status[1:]]
    assert [row[:5] for row in rows] == [["alice", "intro-shell", "box", "c1s1l1-box", "stopped"],
                                         ["alice", "two-hosts", "a", "c1s1l2-a", "stopped"],
                                         ["alice", "two-hosts", "b", "c1s1l2-b", "stopped"]]

    selected = run(cli_env, "course", "status", "net101", "--lab", "two-hosts", "--machine", "b").splitlines()
    assert [line.split()[:4] for line in selected[1:]] == [["alice", "two-hosts", "b", "c1s1l2-b"]]

    db = Database(lk_settings)
    try:
        provision = next(e for e in AuditView(db).course_events("net101") if e.action == "provision")
    finally:
        db.close()
    assert provision.detail == "3 created, 0 upgraded, 0 already there"
