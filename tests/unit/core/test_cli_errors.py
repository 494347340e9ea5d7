"""The CLI's errors are one line (issue 11, section 6): cases that once printed a Python traceback.

A read-only LABKIT_HOME is made for real: a read-only bind mount in a private mount namespace (``unshare -rm``, which
works for root and, where user namespaces are allowed, for an ordinary user), so even root cannot write there; and,
without any privilege, a file standing where the home folder should be.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from labkit.cli import main
from labkit.config import Settings

REPO = Path(__file__).resolve().parents[3]
LABKIT = Path(sys.executable).parent / "labkit"


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("labkit: error: "), err
    return lines[0]


def test_course_rm_purge_after_a_session_was_begun(cli_env: dict[str, str], tmp_path: Path) -> None:
    roster = tmp_path / "roster.csv"
    roster.write_text("id,name,email\nalice,Alice,a@example.org\n")
    for args in (("image", "build", "tiny"),
                 ("course", "create", "c1", "--no-owner", "--lab", str(REPO / "labs/intro-shell")),
                 ("course", "roster", "c1", str(roster)), ("course", "provision", "c1"),
                 ("course", "session", "begin", "c1")):
        code, _, err = run(cli_env, *args)
        assert code == 0, (args, err)
    code, out, err = run(cli_env, "course", "rm", "c1", "--purge", "--yes")
    assert code == 0 and "removed course c1" in out, err
    code, _, err = run(cli_env, "course", "show", "c1")
    assert code == 1 and "c1" in one_error_line(err)
    # the name is free again, and a course that never had machines goes as well after a session
    code, _, err = run(cli_env, "course", "create", "c1", "--no-owner", "--lab", str(REPO / "labs/intro-shell"))
    assert code == 0, err
    assert run(cli_env, "course", "session", "begin", "c1")[0] == 0
    code, out, err = run(cli_env, "course", "rm", "c1")
    assert code == 0 and "removed course c1" in out, err


def test_a_roster_field_over_128_kib_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text("id,name,email\nalice,Alice,a@example.org\n")
    bad.write_bytes(b"id,name,email\nalice,Alice,a@example.org\nzed," + b"Z" * (200 << 10) + b",z@example.org\n")
    assert run(cli_env, "image", "build", "tiny")[0] == 0
    assert run(cli_env, "course", "create", "c1", "--no-owner", "--lab", str(REPO / "labs/intro-shell"))[0] == 0
    assert run(cli_env, "course", "roster", "c1", str(good))[0] == 0
    code, _, err = run(cli_env, "course", "roster", "c1", str(bad))
    line = one_error_line(err)
    assert code == 1 and f"{bad}:3: cannot be read as CSV" in line and len(line) < 300
    code, out, _ = run(cli_env, "course", "students", "c1", "--json")
    assert code == 0 and "zed" not in out and "alice" in out


def _home_env(home: Path) -> dict[str, str]:
    return {**os.environ, "LABKIT_HOME": str(home), "LABKIT_DB": "", "LABKIT_RUN": "", "LABKIT_DEBUG": "",
            "LABKIT_CACHE": str(home.parent / "cache")}


def test_a_home_where_a_file_stands_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    home = tmp_path / "afile" / "home"
    env = {k: v for k, v in _home_env(home).items() if k.startswith("LABKIT_")}
    code, _, err = run(env, "course", "students", "c1")
    line = one_error_line(err)
    assert code == 1 and f"LABKIT_HOME {home} cannot be used: Not a directory" in line


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="unshare -rm (user and mount namespaces) is not allowed here")
@pytest.mark.parametrize("made_before", [False, True], ids=["new-home", "existing-home"])
def test_a_read_only_home_is_one_line(made_before: bool, short_tmp: Path) -> None:
    home = short_tmp / "home"
    home.mkdir()
    if made_before:  # an installation that worked, then its disk went read-only
        Settings.from_env(_home_env(home)).ensure()
    script = f'mount --bind -o ro "{home}" "{home}" && touch "{home}/probe" 2>/dev/null && exit 99; exec "$@"'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(LABKIT), "course", "students", "c1"],
                          env=_home_env(home), capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 99, "the bind mount was writable: the test would prove nothing"
    line = one_error_line(done.stderr)
    assert done.returncode == 1 and f"LABKIT_HOME {home} cannot be" in line and "LABKIT_HOME at a folder" in line
    assert not (home / "labkit.db").exists()
