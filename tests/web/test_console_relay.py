"""The browser console's relay against the console of a real tiny guest.

The WebSocket here is an in-process stand-in with the same three methods as flask-sock's (it is the transport, not
the thing under test); the console socket, the supervisor that fans output out to every client and the guest's shell
are real. One boot serves the whole module; the test that stops the machine boots it again for whoever runs next.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import make_settings, make_short_dir
from simple_websocket import ConnectionClosed

from labkit.errors import StateError
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.db import Database
from labkit.services.machines import ConsoleAccess, Machines
from web.console_relay import CLOSE_STOPPED, ConsoleRelay

pytestmark = pytest.mark.guest
MACHINE = "relay"
_LEAVE = object()


class FakeWebSocket:
    """The browser's end, in process: what the relay sent is collected, what the test 'types' is queued."""

    def __init__(self) -> None:
        self.inbox: queue.Queue[object] = queue.Queue()
        self.frames: list[str | bytes] = []
        self.changed = threading.Condition()
        self.close_code: int | None = None
        self.close_message: str | None = None
        self.gone = False

    # the relay's side (flask-sock's Server has the same methods)
    def send(self, data: str | bytes) -> None:
        if self.gone or self.close_code is not None:
            raise ConnectionClosed()
        with self.changed:
            self.frames.append(data)
            self.changed.notify_all()

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        if self.gone or self.close_code is not None:
            raise ConnectionClosed()
        try:
            item = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _LEAVE:
            self.gone = True
            raise ConnectionClosed()
        assert isinstance(item, str | bytes)
        return item

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        if self.close_code is not None:
            raise ConnectionClosed()
        with self.changed:
            self.close_code, self.close_message = reason or 1000, message
            self.changed.notify_all()

    # the test's side
    def type(self, text: str) -> None:
        self.inbox.put(text.encode())

    def control(self, message: dict[str, object]) -> None:
        self.inbox.put(json.dumps(message))

    def leave(self) -> None:
        self.inbox.put(_LEAVE)

    def output(self) -> str:
        with self.changed:
            data = b"".join(f for f in self.frames if isinstance(f, bytes))
        return data.decode(errors="replace").replace("\r", "")

    def controls(self) -> list[dict[str, object]]:
        with self.changed:
            return [json.loads(f) for f in self.frames if isinstance(f, str)]

    def wait(self, predicate: object, timeout: float = 15.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():  # type: ignore[operator]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; output so far: {self.output()[-600:]!r}, "
                                         f"controls: {self.controls()}")
                self.changed.wait(min(left, 0.2))

    def wait_output(self, needle: str, timeout: float = 15.0) -> None:
        self.wait(lambda: needle in self.output(), timeout, repr(needle))

    def wait_control(self, kind: str, timeout: float = 15.0) -> dict[str, object]:
        self.wait(lambda: any(c["type"] == kind for c in self.controls()), timeout, f"a {kind} message")
        return next(c for c in self.controls() if c["type"] == kind)


@dataclass
class Running:
    """A relay running in a thread of its own, as it would in a server worker."""

    relay: ConsoleRelay
    ws: FakeWebSocket
    thread: threading.Thread
    outcome: list[str]

    def result(self, timeout: float = 15.0) -> str:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the relay did not end"
        return self.outcome[0]


def start_relay(access: ConsoleAccess, read_only: bool = False) -> Running:
    relay = ConsoleRelay(MACHINE, access.socket, access.log, read_only=read_only, poll=0.1)
    ws = FakeWebSocket()
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(relay.run(ws)), daemon=True)
    thread.start()
    ws.wait_control("hello")
    return Running(relay, ws, thread, outcome)


def command(text: str) -> tuple[str, str]:
    """A command line, and an output mark the shell computes (so the typed line's echo never matches it)."""
    tag = f"m{time.monotonic_ns()}"
    return f"{text}; echo {tag}-$((40+2))\n", f"{tag}-42"


@pytest.fixture(scope="module")
def machines() -> Iterator[Machines]:
    home = make_short_dir("lkw")
    settings = make_settings(home / "home")
    ImageStore(settings).build(find_recipe(settings.recipes, "tiny"))
    db = Database(settings)
    service = Machines(settings, db, actor="teacher")
    service.create(MACHINE, "tiny", memory_mb=64)
    yield service
    for view in service.status():  # stop by PID whatever a failed test left running
        if view.state != "stopped":
            service.kill(view.name)
    db.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def access(machines: Machines) -> ConsoleAccess:
    """The running machine's console (booted again if an earlier test stopped it)."""
    if machines.status(MACHINE)[0].state != "running":
        machines.start(MACHINE)
    return machines.console(MACHINE)


def test_command_output_reaches_every_tab_and_read_only_input_is_dropped(access: ConsoleAccess) -> None:
    first, second, watcher = start_relay(access), start_relay(access), start_relay(access, read_only=True)
    assert first.ws.controls()[0] == {"type": "hello", "machine": MACHINE, "read_only": False}
    assert watcher.ws.controls()[0]["read_only"] is True

    line, mark = command("echo typed-in-first; uname -s")
    first.ws.type("\n" + line)
    for tab in (first, second, watcher):
        tab.ws.wait_output(mark)
        assert "Linux" in tab.ws.output().split(mark)[0]

    # Keystrokes from the second tab reach the same shell; the first tab sees their output too.
    line, mark = command("echo from-second")
    second.ws.control({"type": "input", "data": line})
    first.ws.wait_output(mark)

    # The watcher's keystrokes go nowhere: no file appears, and its marker is never printed.
    ro_line, ro_mark = command("touch /tmp/watcher-typed")
    watcher.ws.type(ro_line)
    deadline = time.monotonic() + 15  # the relay drops them when its thread gets to read them
    while watcher.relay.dropped_bytes < len(ro_line.encode()):
        assert time.monotonic() < deadline, f"only {watcher.relay.dropped_bytes} bytes were dropped"
        time.sleep(0.02)
    assert watcher.relay.dropped_bytes == len(ro_line.encode())
    line, mark = command("test -e /tmp/watcher-typed && echo file-$((1+1))-there || echo file-$((2+2))-absent")
    first.ws.type(line)
    first.ws.wait_output(mark)
    assert "file-4-absent" in first.ws.output() and "file-2-there" not in first.ws.output()
    assert ro_mark not in first.ws.output()

    for tab in (first, second, watcher):
        tab.ws.leave()
        assert tab.result() == "client-closed"
        assert tab.ws.close_code is None  # the browser left; nothing to tell it


def test_new_tab_sees_recent_output_and_resize_and_ping_are_answered(access: ConsoleAccess) -> None:
    tab = start_relay(access)
    line, mark = command("echo before-the-second-tab")
    tab.ws.type(line)
    tab.ws.wait_output(mark)

    late = start_relay(access)
    # hello first, then the replay of the log's tail as console output: the prompt and the last command are there.
    late.ws.wait_output(mark, timeout=5)
    assert isinstance(late.ws.frames[0], str) and isinstance(late.ws.frames[1], bytes)

    late.ws.control({"type": "resize", "cols": 132, "rows": 40})
    assert late.ws.wait_control("resized") == {"type": "resized", "cols": 132, "rows": 40}
    late.ws.control({"type": "resize", "cols": "wide", "rows": 40})
    assert "cols" in str(late.ws.wait_control("error")["message"])
    late.ws.control({"type": "ping"})
    late.ws.wait_control("pong")
    # arrays nested 100,000 deep are "not a control message", not a RecursionError that ends the relay
    late.ws.inbox.put("[" * 100_000 + "]" * 100_000)
    late.ws.wait(lambda: sum(c["type"] == "error" for c in late.ws.controls()) == 2, what="a second error message")
    assert "must be JSON" in str([c for c in late.ws.controls() if c["type"] == "error"][-1]["message"])

    # The relay still works after the control messages.
    line, mark = command("echo after-resize")
    late.ws.type(line)
    late.ws.wait_output(mark)
    for running in (tab, late):
        running.ws.leave()
        assert running.result() == "client-closed"


def test_stopping_the_machine_tells_every_tab(machines: Machines, access: ConsoleAccess) -> None:
    tabs = [start_relay(access), start_relay(access, read_only=True)]
    machines.stop(MACHINE)
    for tab in tabs:
        assert tab.result(30) == "stopped"
        stopped = tab.ws.wait_control("stopped")
        assert f"machine {MACHINE} stopped" in str(stopped["message"])
        assert tab.ws.close_code == CLOSE_STOPPED

    # A tab that connects now gets the same clear answer (the route asks Machines first and refuses before this).
    with pytest.raises(StateError, match=f"machine {MACHINE} is stopped"):
        machines.console(MACHINE)
    relay, ws = ConsoleRelay(MACHINE, access.socket, access.log), FakeWebSocket()
    assert relay.run(ws) == "stopped"
    assert ws.controls() == [{"type": "stopped", "machine": MACHINE,
                              "message": f"machine {MACHINE} is stopped; start it to use its console"}]
    assert ws.close_code == CLOSE_STOPPED

