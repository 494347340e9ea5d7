"""A short-lived QMP connection to one QEMU machine, through ``qemu.qmp``'s synchronous client, with timeouts.

QEMU serves one QMP client at a time on its socket: a second one waits until the first hangs up. So every verb
opens its own connection, does its few commands and closes it, and no call waits longer than its timeout.
The synchronous client runs its own event loop; it must never be used inside a running one (`QmpError` says so).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from types import TracebackType
from typing import Any

from qemu.qmp import ExecuteError, QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol


class QmpError(Exception):
    """The machine's QMP socket could not be reached, or a command failed (the message says which)."""


class Qmp:
    """``with Qmp(path) as qmp: qmp.cmd("query-status")``."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._client: _Client | None = None

    def __enter__(self) -> Qmp:
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            raise QmpError("the synchronous QMP client cannot run inside a running event loop")
        client = _Client(str(self.path))
        client.settimeout(self.timeout)
        try:
            client.connect_within(self.timeout)
        except (QMPError, OSError, TimeoutError) as err:
            with contextlib.suppress(Exception):
                client.close()
            raise QmpError(f"cannot reach QMP at {self.path}: {err or type(err).__name__}") from err
        self._client = client
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None

    def cmd(self, name: str, timeout: float | None = None, **arguments: Any) -> Any:
        """Run one QMP command and return its result; hyphenated argument names go as ``**{"a-b": x}``."""
        assert self._client is not None, "use Qmp as a context manager"
        self._client.settimeout(timeout or self.timeout)
        try:
            return self._client.cmd(name, **arguments)
        except ExecuteError as err:
            raise QmpError(f"QMP {name} failed: {err.error.desc if err.error else err}") from err
        except (QMPError, OSError, TimeoutError) as err:
            raise QmpError(f"QMP {name} did not answer: {err or type(err).__name__}") from err

    def hmp(self, command_line: str, timeout: float | None = None) -> str:
        """Run a human monitor command (``savevm``, ``info snapshots`` ...) and return what it printed."""
        return str(self.cmd("human-monitor-command", timeout=timeout, **{"command-line": command_line}))


class _Client(QEMUMonitorProtocol):
    def connect_within(self, timeout: float) -> None:
        """`connect` with a bound: QEMU sends its greeting only once an earlier client has gone."""
        self._qmp.await_greeting = True
        self._qmp.negotiate = True
        self._sync(self._qmp.connect(self._address), timeout)
