"""The browser console's relay: one WebSocket joined to one machine's console socket, without Flask in sight.

The machine's console supervisor (`labkit.runtime.supervisor`; `labkit.runtime.console` tells how clients attach)
sends every byte the guest prints to every client of the console socket and passes any client's input to the guest, so
each browser tab gets a relay of its own and they all see the same screen. The relay only moves bytes and speaks this
small protocol:

- server to browser: binary frames are console output (raw bytes, as the terminal expects them); text frames are JSON
  control messages: ``{"type": "hello", "machine", "read_only"}`` first, then the replay of the log's tail, then
  ``{"type": "resized", "cols", "rows"}`` (the answer to a resize), ``{"type": "pong"}``, ``{"type": "error",
  "message"}`` and, when the machine is or goes down, ``{"type": "stopped", "message"}`` followed by close code 4000.
- browser to server: binary frames are keystrokes; text frames are JSON: ``{"type": "input", "data": "..."}``,
  ``{"type": "resize", "cols": 80, "rows": 24}`` (acknowledged; the guest's console keeps its own size, the relay has
  no say over it) and ``{"type": "ping"}``.

A read-only relay (an instructor watching a student) drops every keystroke; it still answers resize and ping.

The supervisor records each relay's session (`labkit.runtime.recorder`). The relay's hello to it, which names the web
user and the terminal size, waits for the browser's first resize (the page sends one as soon as it opens), for up to
`HELLO_WAIT` seconds, and always goes before any keystroke.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Protocol

from simple_websocket import ConnectionClosed

from labkit.errors import LabkitError
from labkit.logtail import tail
from labkit.runtime.console import connect
from labkit.runtime.recorder import DEFAULT_SIZE, hello_line

#: How much of the console log a new tab sees first, so the prompt (and what led to it) is on the screen at once.
REPLAY_BYTES = 8192
#: WebSocket close code (application range) for "the machine is not running"; the page stops reconnecting quickly.
CLOSE_STOPPED = 4000
#: Keystrokes in one message beyond this are dropped (the supervisor keeps no more than 64 KiB for the guest anyway).
INPUT_LIMIT = 1 << 16
#: Terminal size bounds accepted in a resize message.
MAX_COLS, MAX_ROWS = 1000, 500
#: Terminal queries (device status, device attributes) that a replayed screen must not repeat: the new tab would
#: answer them, and the answer would reach whatever program reads the console now.
_QUERIES = re.compile(rb"\x1b\[[0-9;?>=]*[nc]")
#: how long the relay waits for the browser's size before it tells the supervisor the default one
HELLO_WAIT = 1.0


class WebSocketLike(Protocol):
    """What the relay needs of a WebSocket: flask-sock's (simple-websocket's) server object has exactly this.
    ``receive`` returns None on timeout and raises `simple_websocket.ConnectionClosed` once the peer is gone."""

    def send(self, data: str | bytes) -> None: ...

    def receive(self, timeout: float | None = None) -> str | bytes | None: ...

    def close(self, reason: int | None = None, message: str | None = None) -> None: ...


def replay_tail(log: Path | None, max_bytes: int = REPLAY_BYTES) -> bytes:
    """The end of the console log, starting at a line boundary, with CRLF line ends and no terminal queries."""
    if log is None or max_bytes <= 0:
        return b""
    # `tail` starts at a line start, so the replay does not begin inside a multibyte character or an escape sequence
    data = _QUERIES.sub(b"", tail(log, max_bytes=max_bytes) or b"")
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def refuse(ws: WebSocketLike, machine: str, detail: str | None = None) -> None:
    """Tell the browser that the machine is not running and close (used when there is no console to relay)."""
    message = detail or f"machine {machine} is stopped; start it to use its console"
    with contextlib.suppress(ConnectionClosed, OSError):
        ws.send(json.dumps({"type": "stopped", "machine": machine, "message": message}))
        ws.close(CLOSE_STOPPED, "machine stopped")


class ConsoleRelay:
    """Relays between one WebSocket and one console socket until either side ends; `run` blocks the calling thread.

    Console output is read by a thread of its own (the supervisor pushes it whenever the guest prints); the calling
    thread reads the WebSocket. Sends to the WebSocket from both threads go through one lock.
    """

    def __init__(self, machine: str, console_socket: Path, log: Path | None = None, read_only: bool = False,
                 replay_bytes: int = REPLAY_BYTES, poll: float = 0.5, user: str = "") -> None:
        self.machine = machine
        self.user = user
        self._hello_due: float | None = None  # until the hello is sent: when it is sent with the default size
        self.console_socket = console_socket
        self.log = log
        self.read_only = read_only
        self.replay_bytes = replay_bytes
        self.poll = poll
        self.dropped_bytes = 0  # keystrokes a read-only relay did not pass on
        self._send_lock = threading.Lock()
        self._done = threading.Event()
        self._outcome = "client-closed"

    # ---- public

    def run(self, ws: WebSocketLike) -> str:
        """Relay until the browser leaves ("client-closed"), the machine stops ("stopped") or the relay fails
        ("error"); the WebSocket is closed with a reason in the last two cases."""
        try:
            sock = connect(self.console_socket)
        except LabkitError:
            refuse(ws, self.machine)
            return "stopped"
        try:
            if not self._send(ws, json.dumps({"type": "hello", "machine": self.machine,
                                              "read_only": self.read_only})):
                return "client-closed"
            replay = replay_tail(self.log, self.replay_bytes)
            if replay and not self._send(ws, replay):
                return "client-closed"
            self._hello_due = time.monotonic() + HELLO_WAIT
            reader = threading.Thread(target=self._pump_console, args=(sock, ws), daemon=True,
                                      name=f"console-relay-{self.machine}")
            reader.start()
            try:
                self._pump_browser(sock, ws)
            finally:
                self._done.set()
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the reader thread out of recv
                reader.join(timeout=5)
            return self._outcome
        finally:
            sock.close()

    def stop(self) -> None:
        """End `run` from another thread (server shutdown); the WebSocket is left to its owner."""
        self._done.set()

    # ---- the two directions

    def _pump_console(self, sock: socket.socket, ws: WebSocketLike) -> None:
        """Console to browser; the end of the console means the machine stopped."""
        while not self._done.is_set():
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if self._done.is_set():
                return
            if not data:
                self._finish(ws, "stopped", json.dumps({
                    "type": "stopped", "machine": self.machine,
                    "message": f"machine {self.machine} stopped; its console closed"}), CLOSE_STOPPED,
                    "machine stopped")
                return
            if not self._send(ws, data):
                self._finish(ws, "client-closed")
                return

    def _pump_browser(self, sock: socket.socket, ws: WebSocketLike) -> None:
        """Browser to console, until the browser leaves or the reader ended the relay."""
        while not self._done.is_set():
            try:
                message = ws.receive(timeout=self.poll)
            except ConnectionClosed:
                self._finish(ws, "client-closed")
                return
            if message is None:
                if self._hello_due is not None and time.monotonic() >= self._hello_due:
                    self._hello(sock, *DEFAULT_SIZE)
                continue
            if isinstance(message, bytes):
                self._input(sock, ws, message)
            else:
                self._control(sock, ws, message)

    def _control(self, sock: socket.socket, ws: WebSocketLike, text: str) -> None:
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: arrays nested a hundred thousand deep
            message = None
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "input" and isinstance(message.get("data"), str):
            self._input(sock, ws, message["data"].encode("utf-8", "replace"))
        elif kind == "resize":
            cols, rows = message.get("cols"), message.get("rows")
            if (isinstance(cols, int) and isinstance(rows, int) and not isinstance(cols, bool)
                    and not isinstance(rows, bool) and 0 < cols <= MAX_COLS and 0 < rows <= MAX_ROWS):
                self._hello(sock, cols, rows)
                self._send(ws, json.dumps({"type": "resized", "cols": cols, "rows": rows}))
            else:
                self._send(ws, json.dumps({"type": "error", "message": f"a resize needs whole numbers cols 1-"
                                           f"{MAX_COLS} and rows 1-{MAX_ROWS}; got {text[:200]}"}))
        elif kind == "ping":
            self._send(ws, json.dumps({"type": "pong"}))
        else:
            self._send(ws, json.dumps({"type": "error", "message": "a text message must be JSON with type input, "
                                       f"resize or ping; got {text[:200]}"}))

    def _hello(self, sock: socket.socket, cols: int, rows: int) -> None:
        """Tell the supervisor who this session is (once): its recording's header."""
        if self._hello_due is None:
            return
        self._hello_due = None
        with contextlib.suppress(OSError):  # the console went away; the reader thread reports it
            sock.sendall(hello_line("browser", self.user, cols, rows, read_only=self.read_only))

    def _input(self, sock: socket.socket, ws: WebSocketLike, data: bytes) -> None:
        if self.read_only:
            self.dropped_bytes += len(data)
            return
        self._hello(sock, *DEFAULT_SIZE)
        try:
            sock.sendall(data[:INPUT_LIMIT])
        except OSError:
            # The console went away; the reader thread sees the same and reports the stopped machine.
            return

    # ---- sending and ending

    def _send(self, ws: WebSocketLike, data: str | bytes) -> bool:
        """Send one frame; False once the browser is gone."""
        with self._send_lock:
            if self._done.is_set():
                return False
            try:
                ws.send(data)
            except (ConnectionClosed, OSError):
                return False
        return True

    def _finish(self, ws: WebSocketLike, outcome: str, last: str | None = None, code: int | None = None,
                reason: str | None = None) -> None:
        """Record why the relay ended (the first reason wins) and, for the machine's side, tell and close."""
        with self._send_lock:
            if self._done.is_set():
                return
            self._outcome = outcome
            self._done.set()
            if code is None:
                return
            with contextlib.suppress(ConnectionClosed, OSError):
                if last is not None:
                    ws.send(last)
                ws.close(code, reason)
