"""Throwaway machines for grading submissions: whatever they start is stopped when grading ends."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from labkit.config import Settings
from labkit.services.scratch import scratch_guests


def processes_of(home: Path) -> dict[int, str]:
    """Command lines of the live processes that name ``home`` (a vde_switch names its folder), by PID."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(home) in cmdline:
                found[int(entry.name)] = cmdline
    return found


def test_the_lab_networks_of_a_scratch_run_are_stopped_before_their_folders_go(lk_settings: Settings) -> None:
    # A submission of a lab with a network; no machine is booted (none is in the boot order), only its network.
    try:
        with scratch_guests(lk_settings, {"a": {"networks": ["lan"]}}, [], "t1") as guests:
            assert guests == {}
            assert any("vde_switch" in cmdline for cmdline in processes_of(lk_settings.home).values())
        assert processes_of(lk_settings.home) == {}
        assert list((lk_settings.run_dir / "net").iterdir()) == []
    finally:
        for pid in processes_of(lk_settings.home):  # what a failure left, by PID
            os.kill(pid, signal.SIGKILL)
