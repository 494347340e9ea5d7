"""Console recording on a booted tiny guest: a person's `labkit vm console` session (the same `attach` the CLI runs)
and the grader's console transport each leave an asciicast v2 file with the typed command and its output."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import struct
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.config import Settings
from labkit.runtime.console import attach, local_user
from labkit.services.machines import Machines

from .conftest import machines_on


@pytest.fixture
def machines(lk_settings: Settings) -> Iterator[Machines]:
    with machines_on(lk_settings, "tiny", "tester") as service:
        yield service


def casts(folder: Path) -> dict[str, tuple[dict[str, object], list[list[object]]]]:
    """The recordings in ``folder`` by source: header and events (every line must be JSON)."""
    found: dict[str, tuple[dict[str, object], list[list[object]]]] = {}
    for path in folder.glob("*.cast"):
        lines = path.read_text(encoding="utf-8").splitlines()
        head = json.loads(lines[0])
        found[head["env"]["LABKIT_SOURCE"]] = (head, [json.loads(line) for line in lines[1:]])
    return found


def test_vm_console_and_grader_sessions_are_recorded(machines: Machines, lk_settings: Settings) -> None:
    machines.create("rec", "tiny", memory_mb=64)
    machines.start("rec")
    access = machines.console("rec")

    user_in_r, user_in_w = os.pipe()
    master, slave = pty.openpty()  # the person's terminal, 100×30
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    done = threading.Event()

    def person() -> None:
        """Types a command once the console answers, then detaches (Ctrl-]) once its output is on the screen."""
        seen = b""
        deadline = time.monotonic() + 30
        os.write(user_in_w, b"\n")
        typed = False
        while b"rec-42" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                seen += os.read(master, 4096)
            if not typed and b"attached" in seen:
                os.write(user_in_w, b"echo rec-$((6*7))\n")
                typed = True
        os.write(user_in_w, b"\x1d")
        while not done.is_set():
            with contextlib.suppress(OSError):
                if select.select([master], [], [], 0.1)[0]:
                    os.read(master, 4096)

    typist = threading.Thread(target=person, daemon=True)
    typist.start()
    with os.fdopen(user_in_r, "rb", buffering=0) as stdin, os.fdopen(slave, "wb", buffering=0) as stdout:
        attach(access.socket, access.log, stdin=stdin, stdout=stdout)
    done.set()
    typist.join(5)
    os.close(master)
    os.close(user_in_w)

    with machines.open_guest("rec") as guest:
        assert guest.run("echo graded-$((5*5))", transport="console").out == "graded-25\n"

    folder = lk_settings.recordings / "rec"
    deadline = time.monotonic() + 10  # the supervisor closes a recording when it sees the client go
    while len(casts(folder)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    recorded = casts(folder)
    head, events = recorded["cli"]
    assert head["version"] == 2 and (head["width"], head["height"]) == (100, 30)
    assert head["env"]["LABKIT_USER"] == local_user() and head["env"]["LABKIT_MACHINE"] == "rec"  # type: ignore[index]
    typed = "".join(str(e[2]) for e in events if e[1] == "i")
    shown = "".join(str(e[2]) for e in events if e[1] == "o")
    assert "echo rec-$((6*7))\n" in typed and "\x1d" not in typed
    assert "rec-42" in shown
    times = [float(e[0]) for e in events]  # type: ignore[arg-type]
    assert times == sorted(times) and times[-1] < 60
    head, events = recorded["grader"]
    assert "graded-$((5*5))" in "".join(str(e[2]) for e in events if e[1] == "i")
    assert (folder.stat().st_mode & 0o777, next(folder.iterdir()).stat().st_mode & 0o777) == (0o700, 0o600)
    machines.kill("rec")
