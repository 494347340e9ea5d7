"""``labkit checkpoint take|list|restore`` through click on a provisioned two-hosts lab (stopped machines: nothing
boots): a checkpoint is a snapshot of one name on every machine, and a restore a machine cannot do is refused whole."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from labkit.cli import main
from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.db import Database
from labkit.services.machines import Machines

LABS = Path(__file__).resolve().parents[3] / "labs"


def run(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.stdout if code == 0 else result.stderr


def test_checkpoint_take_list_restore(cli_env: dict[str, str], lk_settings: Settings, tmp_path: Path) -> None:
    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    run(cli_env, "course", "create", "net101", "--lab", str(LABS / "two-hosts"), "--no-owner")
    roster = tmp_path / "roster.csv"
    roster.write_text("id,name,email\nalice,Alice,alice@example.org\n")
    run(cli_env, "course", "roster", "net101", str(roster))
    run(cli_env, "course", "provision", "net101")

    assert run(cli_env, "checkpoint", "take", "net101", "alice", "two-hosts", "start").strip() == (
        "checkpoint start taken: a, b")
    assert "already exists on a, b" in run(cli_env, "checkpoint", "take", "net101", "alice", "two-hosts", "start",
                                           code=1)
    assert "checkpoint name" in run(cli_env, "checkpoint", "take", "net101", "alice", "two-hosts", "Bad Name", code=1)
    db = Database(lk_settings)
    try:
        Machines(lk_settings, db, "test").snapshot("c1s1l1-b", "only-b")
    finally:
        db.close()
    listed = run(cli_env, "checkpoint", "list", "net101", "alice", "two-hosts").splitlines()
    assert [line.split()[0] for line in listed] == ["start", "only-b"]
    assert listed[1].endswith("(incomplete: a lack it)")
    refused = run(cli_env, "checkpoint", "restore", "net101", "alice", "two-hosts", "only-b", code=1)
    assert refused.strip() == ("labkit: error: checkpoint 'only-b' is not complete: a has no snapshot 'only-b' "
                               "(nothing was restored)")
    assert run(cli_env, "checkpoint", "restore", "net101", "alice", "two-hosts", "start").strip() == (
        "back at start: a stopped, b stopped")
