"""Running commands over a guest's serial console (pexpect), for when SSH is broken or not there.

The command runs in a child shell with its output captured to files and printed base64-encoded between markers, so
terminal echo, line wrapping and kernel messages on the console cannot garble the result. The markers are assembled by
the guest's printf, so the typed command line never contains them.
"""

from __future__ import annotations

import base64
import re
import secrets
import shlex
import socket
import time
from pathlib import Path

import pexpect
from pexpect import fdpexpect

from labkit.errors import GuestError, GuestUnavailableError, LabkitError
from labkit.guest.result import OUTPUT_LIMIT, Result
from labkit.runtime.console import connect, local_user
from labkit.runtime.recorder import hello_line

#: Terminal control sequences a shell may print after its prompt (busybox ash asks for the cursor position: ESC [6n).
_CONTROL = rb"(?:\x1b\[[0-9;?]*[A-Za-z])*"
_PROMPTS = [re.compile(rb"login: ?" + _CONTROL + rb"$", re.M), re.compile(rb"[Pp]assword: ?" + _CONTROL + rb"$", re.M),
            re.compile(rb"[#$] ?" + _CONTROL + rb"$", re.M)]
LOGIN, PASSWORD, SHELL = 0, 1, 2


class ConsoleTransport:
    """Logs in on the console the supervisor holds (as root, with the password labkit placed through the seed disk)."""

    name = "console"

    def __init__(self, socket_path: Path, password: str | None, user: str = "root",
                 login_timeout: float = 20.0) -> None:
        self.socket_path = socket_path
        self.password = password
        self.user = user
        self.login_timeout = login_timeout
        #: who the console recording names for this transport's sessions
        self.recorded_as = f"grader ({local_user()})"

    def _open(self) -> tuple[socket.socket, fdpexpect.fdspawn]:
        try:
            sock = connect(self.socket_path, timeout=None, hello=hello_line("grader", self.recorded_as))
        except LabkitError as err:
            raise GuestUnavailableError(f"cannot attach to the console at {self.socket_path}: {err}") from err
        return sock, fdpexpect.fdspawn(sock, timeout=self.login_timeout, maxread=65536)

    def _login(self, child: fdpexpect.fdspawn, timeout: float) -> None:
        limit = min(self.login_timeout, timeout)  # a call's own timeout bounds the login too
        deadline = time.monotonic() + limit
        child.send(b"\x03\n")  # interrupt whatever sits on the line, ask for a fresh prompt
        while time.monotonic() < deadline:
            try:
                which = child.expect(_PROMPTS, timeout=max(0.1, deadline - time.monotonic()))
            except pexpect.TIMEOUT:
                break
            if which == SHELL:
                return
            if which == LOGIN:
                child.send(f"{self.user}\n".encode())
            elif which == PASSWORD:
                if self.password is None:
                    raise GuestError("the console asks for a password and labkit has none for this machine")
                child.send(f"{self.password}\n".encode())
        raise GuestError(f"no shell prompt on the console within {limit:g} s")

    def run(self, command: str, timeout: float = 60.0, stdin: bytes = b"") -> Result:
        started = time.monotonic()
        sock, child = self._open()
        try:
            self._login(child, timeout)
            tag = secrets.token_hex(6)
            limit = OUTPUT_LIMIT
            feed = f"printf %s {shlex.quote(base64.b64encode(stdin).decode())} | base64 -d" if stdin else "true"
            script = (
                f"d=$(mktemp -d); {feed} > $d/i; sh -c {shlex.quote(command)} <$d/i >$d/o 2>$d/e; "
                f"c=$?; printf '\\n%s%s %s\\n' LKC {tag} $c; head -c {limit} $d/o | base64; "
                f"printf '%s%s\\n' LKS {tag}; head -c {limit} $d/e | base64; printf '%s%s\\n' LKX {tag}; rm -rf $d"
            )
            child.send(f" {script}\n".encode())
            try:
                left = max(0.5, started + timeout - time.monotonic())
                child.expect(re.compile(rb"LKC" + tag.encode() + rb" (\d+)\r?\n"), timeout=left)
                code = int(child.match.group(1))
                child.expect(re.compile(rb"LKX" + tag.encode()), timeout=30)
            except pexpect.TIMEOUT as err:
                child.send(b"\x03")
                raise GuestError(f"command timed out after {timeout:g} s on the console: {command[:80]!r}") from err
            except pexpect.EOF as err:
                raise GuestError("the console closed while the command ran (did the machine stop?)") from err
            body = child.before.decode("ascii", errors="replace")
            out_part, _, err_part = body.partition(f"LKS{tag}")
            stdout, stderr = _decode(out_part), _decode(err_part)
        finally:
            sock.close()
        truncated = len(stdout) >= OUTPUT_LIMIT or len(stderr) >= OUTPUT_LIMIT
        return Result(code, stdout, stderr, time.monotonic() - started, self.name, truncated)

    def close(self) -> None:
        """Nothing is held between commands."""


_B64_LINE = re.compile(r"^[A-Za-z0-9+/=]+$")


def _decode(text: str) -> bytes:
    """Decode the base64 lines of ``text``, skipping anything else the console printed in between."""
    lines = [line.strip() for line in text.splitlines()]
    return base64.b64decode("".join(line for line in lines if line and _B64_LINE.match(line)))
