"""A Guest seen through one check's time budget: every call gets at most the time the check has left.

A check makes several guest calls (stat, then read, ...); its `CheckDef.timeout` bounds them all together, and a
grading script cannot escape it by passing a larger timeout. The wrapper also records which transports answered.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from labkit.errors import GuestError

#: The least time a call is given, so a nearly spent budget still gets a clear answer or a clear timeout.
MIN_CALL = 0.5


class Budget:
    """The deadline of one check."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def remaining(self, what: str = "the check") -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise GuestError(f"{what} ran out of its {self.seconds:g} s time limit")
        return max(left, MIN_CALL)

    def clamp(self, timeout: float | None, what: str) -> float:
        left = self.remaining(what)
        return left if timeout is None else min(float(timeout), left)


class BudgetedGuest:
    """Forwards the Guest calls graders use, each with its timeout clamped to the budget; records transports."""

    def __init__(self, guest: Any, budget: Budget, transports: dict[str, None]) -> None:
        self._guest = guest
        self._budget = budget
        self._transports = transports  # insertion-ordered set shared by all guests of one check

    @property
    def name(self) -> str:
        return str(getattr(self._guest, "name", "?"))

    @property
    def forwards(self) -> Mapping[int, int]:
        return getattr(self._guest, "forwards", {}) or {}

    @property
    def last_transport(self) -> str | None:
        """The transport that answered the handle's last call."""
        used = getattr(self._guest, "last_transport", None)
        return str(used) if used else None

    @property
    def running(self) -> bool:
        """Whether the machine was running when its handle was opened (a stopped one is read offline)."""
        return bool(getattr(self._guest, "running", True))

    @property
    def inside_transport(self) -> str:
        """The transport that reaches inside the guest: SSH when the handle has it, else the console."""
        return "ssh" if getattr(self._guest, "ssh", None) is not None else "console"

    def _call(self, method: str, *args: Any, timeout: float | None, **kwargs: Any) -> Any:
        limit = self._budget.clamp(timeout, f"{method} in {self.name}")
        try:
            return getattr(self._guest, method)(*args, timeout=limit, **kwargs)
        finally:
            used = getattr(self._guest, "last_transport", None)
            if used:
                self._transports[str(used)] = None

    def run(self, command: str, timeout: float | None = None, transport: str | None = None, stdin: bytes = b"") -> Any:
        return self._call("run", command, timeout=timeout, transport=transport, stdin=stdin)

    def read_file(self, path: str, timeout: float | None = None, transport: str | None = None) -> bytes:
        return self._call("read_file", path, timeout=timeout, transport=transport)

    def exists(self, path: str, timeout: float | None = None, transport: str | None = None) -> bool:
        return bool(self._call("exists", path, timeout=timeout, transport=transport))

    def stat(self, path: str, timeout: float | None = None, transport: str | None = None) -> Any:
        return self._call("stat", path, timeout=timeout, transport=transport)

    def listening_ports(self, timeout: float | None = None, transport: str | None = None) -> set[int]:
        return self._call("listening_ports", timeout=timeout, transport=transport)

    def port_open(self, port: int, timeout: float | None = None, transport: str | None = None) -> bool:
        return bool(self._call("port_open", port, timeout=timeout, transport=transport))

    def http_get(self, port: int, path: str = "/", timeout: float | None = None,
                 transport: str | None = None) -> tuple[int, bytes]:
        return self._call("http_get", port, path, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"<BudgetedGuest {self._guest!r}>"
