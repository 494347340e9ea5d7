"""The files in one machine's run folder: the only place its runtime state lives (docs/runtime.md lists them).

Every backend uses the same names. The backend writes the spec, its network helpers' files, the forwards and the pause
mark; the supervisor writes the pid files, the console socket, the ready mark and the exit record. Either side, and the
backend's ``status`` after a crash, may remove what a dead process left.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from labkit.atomic import write_atomic

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: the supervisor imports this module
if TYPE_CHECKING:
    from typing import Any


class RunDir:
    """Names of the files in a machine's run folder.

    A plain class, not a dataclass: the console supervisor imports this module, and `dataclasses` (with `inspect`,
    which it imports) would cost every running machine a megabyte (docs/runtime.md, "Memory")."""

    __slots__ = ("path",)

    def __init__(self, path: Path) -> None:
        self.path = path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def __repr__(self) -> str:
        return f"RunDir(path={self.path!r})"

    @property
    def supervisor_spec(self) -> Path:
        """What the supervisor runs (JSON, written by the backend before it starts the supervisor)."""
        return self.path / "supervisor.json"

    @property
    def supervisor_pid(self) -> Path:
        return self.path / "supervisor.pid"

    @property
    def machine_pid(self) -> Path:
        """The machine process (``linux``, ``qemu-system-x86_64``); its PID is also its process group id."""
        return self.path / "machine.pid"

    @property
    def console_sock(self) -> Path:
        return self.path / "console.sock"

    @property
    def ready(self) -> Path:
        """Exists once the guest printed the readiness marker during this boot."""
        return self.path / "ready"

    @property
    def guest_error(self) -> Path:
        """Exists once the guest printed its error marker (it cannot become ready) during this boot."""
        return self.path / "guest-error"

    @property
    def exit_record(self) -> Path:
        """How the last run ended (JSON: returncode, ended_at, reason)."""
        return self.path / "exit.json"

    @property
    def paused(self) -> Path:
        """Exists while the machine is paused (UML: mconsole ``stop``; QEMU: QMP ``stop``)."""
        return self.path / "paused"

    @property
    def activity(self) -> Path:
        """Touched by the supervisor on console input and while a forwarded connection (SSH) is open; its mtime is
        the machine's last sign of a user (the idle sweep reads it without talking to the supervisor)."""
        return self.path / "activity"

    @property
    def supervisor_log(self) -> Path:
        """The supervisor's own stdout/stderr (its errors, not the guest console)."""
        return self.path / "supervisor.log"

    @property
    def netns_pid(self) -> Path:
        """The agent that holds the machine's private user + network namespace (labkit.runtime.netns)."""
        return self.path / "netns.pid"

    @property
    def slirp4netns_pid(self) -> Path:
        """slirp4netns, the namespace's way out when the machine has outbound traffic."""
        return self.path / "slirp4netns.pid"

    @property
    def slirp4netns_log(self) -> Path:
        return self.path / "slirp4netns.log"

    def mark_activity(self) -> None:
        """Set the activity mark's time to now (made if missing)."""
        try:
            os.utime(self.activity)
        except FileNotFoundError:
            self.activity.touch()

    def helper_pid_files(self) -> tuple[Path, ...]:
        """Pid files of the supervisor's own helpers, which end with it; a clean-up after a crash ends them by PID."""
        return (self.netns_pid, self.slirp4netns_pid)

    def runtime_files(self) -> tuple[Path, ...]:
        """Files that describe a live run, removed when it ends (the exit record and forwards stay as history)."""
        return (self.supervisor_pid, self.machine_pid, self.console_sock, self.ready, self.paused, self.guest_error,
                *self.helper_pid_files())

    def clean_runtime_files(self) -> None:
        for path in self.runtime_files():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def machine_argv(self) -> list[str] | None:
        """The machine's command line of the current (or last) run: it names that machine's processes."""
        spec = self.read_json(self.supervisor_spec)
        if isinstance(spec, dict) and isinstance(spec.get("argv"), list):
            return [str(a) for a in spec["argv"]]
        return None

    def write_json(self, path: Path, value: Any) -> None:
        write_atomic(path, json.dumps(value, indent=2, sort_keys=True) + "\n")

    def read_json(self, path: Path) -> Any:
        """The JSON in ``path``, or None when missing or unreadable."""
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
