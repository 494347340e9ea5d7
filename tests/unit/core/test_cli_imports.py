"""A snappy CLI (issue 13, section 3): a command that does no heavy work imports no heavy library.

Imports are per process, so each command runs in a fresh interpreter (the venv's, as ``labkit`` itself) that then
writes the top-level names of every module it loaded to a file. The figures are in docs/benchmarks.md ("A snappy CLI",
bench/cli.py); this guards the mechanism behind them (labkit/cli/__init__.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from labkit.cli import COMMANDS, main
from labkit.config import Settings

REPO = Path(__file__).resolve().parents[3]
#: What the database, guests, the web app and lab templates bring: seconds of imports between them on this machine kind.
HEAVY = {"sqlalchemy", "alembic", "paramiko", "pexpect", "flask", "jinja2", "werkzeug"}

#: Runs ``labkit ARGS...`` as the console script does, then writes the loaded packages to the file named first.
RUNNER = """
import sys
from labkit.cli import main
out, args = sys.argv[1], sys.argv[2:]
try:
    main(args, prog_name="labkit")
finally:
    with open(out, "w") as listing:
        listing.write("\\n".join(sorted({name.split(".")[0] for name in sys.modules})))
"""


def loaded(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[set[str], str]:
    """The top-level packages ``labkit ARGS`` imported, and what it printed."""
    listing = tmp_path / "modules.txt"
    done = subprocess.run([sys.executable, "-c", RUNNER, str(listing), *args], env={**os.environ, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(listing.read_text().split()), done.stdout


def test_help_imports_nothing_heavy(tmp_path: Path, cli_env: dict[str, str]) -> None:
    modules, out = loaded(tmp_path, cli_env, "--help")
    assert "vm " in out and "course " in out
    assert modules & HEAVY == set()


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_help_imports_nothing_heavy(name: str, tmp_path: Path, cli_env: dict[str, str]) -> None:
    """A command module imports the layers below inside its verbs, so listing its verbs loads none of them."""
    modules, out = loaded(tmp_path, cli_env, name, "--help")
    assert f"labkit {name}" in out
    assert modules & HEAVY == set()


def test_vm_status_on_an_empty_installation_needs_only_the_database(tmp_path: Path, cli_env: dict[str, str]) -> None:
    modules, out = loaded(tmp_path, cli_env, "vm", "status")
    assert out.startswith("no machines yet")
    assert "sqlalchemy" in modules
    assert modules & (HEAVY - {"sqlalchemy", "alembic"}) == set()


def test_lab_validate_opens_no_database(tmp_path: Path, cli_env: dict[str, str], lk_settings: Settings) -> None:
    modules, out = loaded(tmp_path, cli_env, "lab", "validate", "labs/intro-shell")
    assert out.strip() == "ok: labs/intro-shell"
    assert modules & {"sqlalchemy", "alembic", "paramiko", "pexpect", "flask", "werkzeug"} == set()
    assert not (lk_settings.home / "labkit.db").exists()


def test_the_command_table_names_each_command_where_it_is_defined() -> None:
    """Every `COMMANDS` entry loads a click command of that name; no command is registered outside the table."""
    ctx = click.Context(main)
    assert set(main.list_commands(ctx)) == set(COMMANDS)
    for name in COMMANDS:
        command = main.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name



def test_status_commands_on_sqlite_import_nothing_heavy(tmp_path: Path, cli_env: dict[str, str],
                                                        lk_settings: Settings) -> None:
    """With a SQLite database, ``vm status``, ``course status`` and ``gradebook`` read it through `sqlite3`
    (`labkit.services.sqlite_status`): no SQLAlchemy, no Alembic, nothing else heavy."""
    from click.testing import CliRunner

    from labkit.images.recipe import find_recipe
    from labkit.images.store import ImageStore

    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    roster = tmp_path / "roster.csv"
    roster.write_text("id,name,email\nalice,Alice,a@example.org\nbob,Bob,b@example.org\n")
    for args in (["course", "create", "quick", "--lab", str(REPO / "labs" / "intro-shell"), "--no-owner"],
                 ["course", "roster", "quick", str(roster)], ["course", "provision", "quick"]):
        done = CliRunner().invoke(main, args, env=cli_env, catch_exceptions=False)
        assert done.exit_code == 0, done.output
    for args, shown in ((["vm", "status"], "stopped"), (["vm", "status", "c1s1l1-box", "--json"], '"stopped"'),
                        (["course", "status", "quick"], "alice"), (["course", "status", "quick", "--json"], "bob"),
                        (["gradebook", "quick"], "never graded"), (["grades", "quick", "--json"], "bob"),
                        (["gradebook", "quick", "--runs"], "")):
        modules, out = loaded(tmp_path, cli_env, *args)
        assert shown in out, (args, out)
        assert modules & HEAVY == set(), (args, modules & HEAVY)
