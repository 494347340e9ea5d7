"""Talking to a guest's raw console socket from tests that drive the runtime below the Guest handle."""

from __future__ import annotations

import contextlib
import socket
import time


def read_until(sock: socket.socket, needle: bytes, timeout: float = 15.0) -> bytes:
    """Everything the socket sends up to and including ``needle``; AssertionError on timeout or a closed console."""
    sock.settimeout(0.5)
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} did not arrive; got {seen[-500:]!r}")
        with contextlib.suppress(TimeoutError):
            chunk = sock.recv(65536)
            if not chunk:
                raise AssertionError(f"console closed before {needle!r}; got {seen[-500:]!r}")
            seen += chunk
    return seen


def console_run(sock: socket.socket, command: str, timeout: float = 15.0) -> str:
    """Run a shell command on the console and return its output, found between two marks that the shell computes
    (so the echo of the typed line, wrapped or not, never matches them)."""
    mark = f"m{time.monotonic_ns()}"
    sock.sendall(f"\necho {mark}-$((1+1))B; {command}; echo; echo {mark}-$((2+1))E\n".encode())
    out = read_until(sock, f"{mark}-3E".encode(), timeout).decode(errors="replace").replace("\r", "")
    return out.split(f"{mark}-2B\n", 1)[1].split(f"{mark}-3E", 1)[0]
