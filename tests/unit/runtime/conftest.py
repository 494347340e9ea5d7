"""Fixtures shared by the runtime's unit tests."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.runtime.process import ProcessRecord


@pytest.fixture
def switch_root() -> Iterator[Path]:
    """A short folder (a switch's sockets live in it); every switch started in it is ended by PID afterwards."""
    path = Path(tempfile.mkdtemp(prefix="lkv", dir="/tmp"))
    yield path
    for pid_file in path.rglob("switch.pid"):
        record = ProcessRecord.read(pid_file)
        if record is not None:
            record.send(signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
