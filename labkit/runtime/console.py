"""Clients of a machine's console socket: `connect` for programs (pexpect's fdspawn), `attach` for a person's terminal.

Backend-neutral: every backend whose ``console_kind`` is "socket" runs its machine under a supervisor that serves the
raw console bytes on `Backend.console_socket`; the CLI (``vm console``), the web relay and the guest layer's console
transport all attach here. The supervisor sends every console byte to every client and passes any client's input to
the guest, so a person and a grading script can share one console. Each client first says who it is (`hello_line`),
so that the supervisor's recording of its session (`labkit.runtime.recorder`) names its source, user and size.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import socket
import sys
import termios
import tty
from pathlib import Path
from typing import BinaryIO

from labkit.errors import GuestError, StateError
from labkit.logtail import tail
from labkit.runtime.recorder import DEFAULT_SIZE, hello_line

#: Ctrl-] (as in telnet) detaches from the console.
DETACH_BYTE = b"\x1d"


def local_user() -> str:
    """The name of the account this process runs as (for recordings' headers)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


def connect(socket_path: Path, timeout: float | None = 5.0, hello: bytes | None = None) -> socket.socket:
    """A stream socket connected to the console (blocking; ``timeout`` only bounds the connect), having sent
    ``hello`` (`hello_line`) first when given."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(socket_path))
    except (FileNotFoundError, ConnectionRefusedError) as err:
        sock.close()
        raise StateError(f"no console at {socket_path}: the machine is not running") from err
    except OSError as err:
        sock.close()
        raise GuestError(f"cannot connect to the console at {socket_path}: {err}") from err
    if hello:
        try:
            sock.sendall(hello)
        except OSError as err:
            sock.close()
            raise StateError(f"the console at {socket_path} closed: the machine is stopping") from err
    sock.settimeout(None)
    return sock


def log_tail(log: Path, lines: int = 20, max_bytes: int = 8192) -> bytes:
    """The last ``lines`` lines of the console log, raw, for the screen a person sees on attach."""
    return tail(log, lines, max_bytes) or b""


def attach(socket_path: Path, log: Path | None = None, stdin: BinaryIO | None = None,
           stdout: BinaryIO | None = None, user: str | None = None) -> None:
    """Join a person's terminal to the console until Ctrl-] or the machine ends; the terminal is always restored.
    The session is recorded as the CLI's, by ``user`` (default: this account), at the terminal's size."""
    in_stream = stdin or sys.stdin.buffer
    out_stream = stdout or sys.stdout.buffer
    in_fd, out_fd = in_stream.fileno(), out_stream.fileno()
    try:
        cols, rows = os.get_terminal_size(out_fd)
    except OSError:
        cols, rows = DEFAULT_SIZE
    sock = connect(socket_path, hello=hello_line("cli", user or local_user(), cols, rows))
    saved = termios.tcgetattr(in_fd) if os.isatty(in_fd) else None

    def say(text: bytes) -> None:
        os.write(out_fd, text)

    try:
        if log is not None:
            tail = log_tail(log)
            if tail:
                say(tail.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        say(b"\r\n[labkit: attached to the console; Ctrl-] detaches]\r\n")
        if saved is not None:
            tty.setraw(in_fd)
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ, "guest")
            selector.register(in_fd, selectors.EVENT_READ, "user")
            while True:
                for key, _ in selector.select():
                    if key.data == "guest":
                        data = sock.recv(65536)
                        if not data:
                            say(b"\r\n[labkit: the machine's console closed]\r\n")
                            return
                        say(data)
                    else:
                        data = os.read(in_fd, 4096)
                        if not data:
                            return
                        if DETACH_BYTE in data:
                            before = data.split(DETACH_BYTE, 1)[0]
                            if before:
                                sock.sendall(before)
                            say(b"\r\n[labkit: detached]\r\n")
                            return
                        sock.sendall(data)
    finally:
        if saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        sock.close()
