"""The one Guest handle: run commands and read files in a machine, over SSH when it answers, else over its console."""

from __future__ import annotations

import shlex

from labkit.errors import GuestError
from labkit.guest.console import ConsoleTransport
from labkit.guest.result import Result
from labkit.guest.ssh import SshTransport, SshUnreachable

TRANSPORTS = ("ssh", "console")


class Guest:
    """A machine seen from outside. Transports are tried in order; the Result says which one answered."""

    def __init__(self, name: str, ssh: SshTransport | None, console: ConsoleTransport | None) -> None:
        self.name = name
        self.ssh = ssh
        self.console = console

    def run(self, command: str, timeout: float = 60.0, transport: str | None = None, stdin: bytes = b"") -> Result:
        """Run ``command`` with ``sh -c`` semantics. ``transport`` forces "ssh" or "console".

        Only an unreachable SSH falls back to the console; a command that times out does not run twice.
        """
        if transport not in (None, *TRANSPORTS):
            raise GuestError(f"unknown transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")
        candidates = {"ssh": self.ssh, "console": self.console}
        failure: GuestError = GuestError(f"machine {self.name} has no {transport or 'SSH forward or console'} to use")
        for name in [transport] if transport else TRANSPORTS:
            chosen = candidates[name]
            if chosen is None:
                continue
            try:
                return chosen.run(command, timeout=timeout, stdin=stdin)
            except SshUnreachable as err:
                failure = err
        raise failure

    def read_file(self, path: str, timeout: float = 60.0) -> bytes:
        result = self.run(f"cat -- {shlex.quote(path)}", timeout=timeout)
        if not result.ok:
            reason = result.err.strip() or f"exit code {result.exit_code}"
            raise GuestError(f"cannot read {path} in {self.name}: {reason}")
        return result.stdout

    def close(self) -> None:
        for transport in (self.ssh, self.console):
            if transport is not None:
                transport.close()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
