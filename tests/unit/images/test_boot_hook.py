"""The guest boot hook: valid POSIX sh for both shells it meets, and in step with guest_contract.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from labkit.images import guest_contract
from labkit.images.recipe import BOOT_HOOK_SOURCE

HOOK = BOOT_HOOK_SOURCE.read_text()


@pytest.mark.parametrize("shell", [["dash", "-n"], ["busybox", "ash", "-n"]])
def test_hook_parses_under_dash_and_busybox_ash(shell: list[str]) -> None:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} is not installed")
    result = subprocess.run([*shell, str(BOOT_HOOK_SOURCE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("constant", "shell_line"),
    [
        ("READY_MARKER", "READY_MARKER='{}'"),
        ("ERROR_MARKER", "ERROR_MARKER='{}'"),
        ("SEED_DEVICE", "SEED_DEVICE={}"),
        ("SEED_KERNEL_ARG", "SEED_KERNEL_ARG={}"),
        ("SEED_MOUNT", "SEED_MOUNT={}"),
        ("GUEST_STATE_DIR", "STATE_DIR={}"),
        ("STARTUP_LOG", "STARTUP_LOG={}"),
    ],
)
def test_hook_agrees_with_contract(constant: str, shell_line: str) -> None:
    assert shell_line.format(getattr(guest_contract, constant)) in HOOK.splitlines()


def test_hook_reads_the_seed_paths() -> None:
    for rel in (guest_contract.SEED_ENV, guest_contract.SEED_AUTHORIZED_KEYS, guest_contract.SEED_ROOT_PASSWORD,
                guest_contract.SEED_FILES, guest_contract.SEED_FILES_TAR, guest_contract.SEED_STARTUP):
        leaf = Path(rel).name
        assert f'/{leaf}' in HOOK, f"the hook never reads {rel}"


def test_hook_without_seed_disk_is_harmless(tmp_path: Path) -> None:
    """On a host (no /dev/ubdb) the hook only says so and succeeds: a guest without a seed still boots."""
    if Path(guest_contract.SEED_DEVICE).exists():
        pytest.skip(f"{guest_contract.SEED_DEVICE} exists here")
    result = subprocess.run(["sh", str(BOOT_HOOK_SOURCE), "apply"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "no seed disk" in result.stderr


def test_hook_refuses_unknown_verbs() -> None:
    result = subprocess.run(["sh", str(BOOT_HOOK_SOURCE), "explode"], capture_output=True, text=True, check=False)
    assert result.returncode == 2
