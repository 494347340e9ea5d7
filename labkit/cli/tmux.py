"""``labkit lab up --console tmux``: one tmux window per machine, each running ``labkit vm console NAME`` (the way
Netkit-JH and Kathará users keep their consoles).

Outside tmux a new detached session named after the lab gets the windows (and is attached when this is a terminal);
inside tmux ($TMUX set) the windows open in the current session. tmux passes a new window only its server's
environment, so the labkit settings of this call (``LABKIT_*``, ``PYTHONPATH``) are handed to each window with
``-e``. Every argument goes to tmux as a list (no shell); tmux runs the window's command line, built with
`shlex.join`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from labkit.errors import ConfigError, StateError


def _labkit() -> list[str]:
    """How to run this labkit again: the ``labkit`` script beside this Python, else ``python -m labkit``."""
    script = Path(sys.executable).with_name("labkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "labkit"]


def _env_flags() -> list[str]:
    flags = []
    for key, value in sorted(os.environ.items()):
        if key.startswith("LABKIT_") or key == "PYTHONPATH":
            flags += ["-e", f"{key}={value}"]
    return flags


def _tmux(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise StateError(f"tmux {args[0]} failed: {(done.stderr or done.stdout).strip() or done.returncode}")
    return done


def open_consoles(session: str, machines: list[tuple[str, str]]) -> str:
    """Open a window per (lab machine, labkit machine name) of ``machines``; return what to tell the user."""
    if shutil.which("tmux") is None:
        raise ConfigError("tmux is not installed (apt-get install tmux); 'labkit vm console NAME' works without it")
    if not machines:
        return "no machine runs: no tmux windows opened"
    env = _env_flags()
    windows = [(machine, shlex.join([*_labkit(), "vm", "console", name])) for machine, name in machines]
    if os.environ.get("TMUX"):
        for machine, line in windows:
            _tmux("new-window", "-d", "-n", machine, *env, line)
        return f"opened {len(windows)} tmux windows in this session: {', '.join(m for m, _ in windows)}"
    if subprocess.run(["tmux", "has-session", "-t", f"={session}"], capture_output=True).returncode == 0:
        return f"tmux session {session} is already open: tmux attach -t {session}"
    first, *rest = windows
    _tmux("new-session", "-d", "-s", session, "-n", first[0], *env, first[1])
    for machine, line in rest:
        _tmux("new-window", "-d", "-t", f"={session}:", "-n", machine, *env, line)
    if sys.stdin.isatty() and sys.stdout.isatty():
        subprocess.run(["tmux", "attach-session", "-t", f"={session}"])
        return f"detached from tmux session {session} (tmux attach -t {session} goes back)"
    return f"opened tmux session {session} with {len(windows)} windows: tmux attach -t {session}"
