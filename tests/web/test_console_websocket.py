"""The console WebSocket end to end: the real app on Werkzeug's threaded server, real logins (with CSRF), a real
WebSocket client (simple-websocket), and a real tiny guest of a provisioned course.

Rights are checked before the handshake (404 for someone else's machine or no session, 403 for another site's
page); a student types, their instructor watches read-only, and a stop reaches both.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import re
import shutil
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import LABS, make_course, make_settings, make_short_dir
from simple_websocket import Client, ConnectionClosed
from simple_websocket import ConnectionError as HandshakeRefused
from werkzeug.serving import BaseWSGIServer, make_server

from labkit.services.accounts import Accounts
from labkit.services.courses import Courses
from web import create_app
from web.console_relay import CLOSE_STOPPED

pytestmark = pytest.mark.guest
PASSWORD = "a long test password"


@dataclass
class Site:
    base: str
    courses: Courses
    machines: dict[str, str]  # student -> their intro-shell machine


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    home = make_short_dir("lkx")
    settings = make_settings(home / "home")
    courses = make_course(settings, "c1", [LABS / "intro-shell"],
                          [("alice", "Alice", "a@example.org"), ("bob", "Bob", "b@example.org")])
    db = courses.db
    accounts = Accounts(settings, db, "teacher")
    accounts.create_user("teach", "instructor", PASSWORD)
    accounts.create_user("other", "instructor", PASSWORD)
    accounts.set_course_owner("c1", "teach")
    accounts.create_links("c1")  # makes the students' accounts
    for student in ("alice", "bob"):
        accounts.set_password(student, PASSWORD)
    machines = {str(row["student"]): str(row["name"]) for row in courses.status("c1")}
    courses.start("c1", student="alice")

    app = create_app({"LABKIT_SETTINGS": settings, "SECRET_KEY": "console-websocket-test"})
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(f"127.0.0.1:{server.server_port}", courses, machines)
    finally:
        server.shutdown()
        thread.join(10)
        for view in courses.machines.status():  # stop by PID whatever a failed test left running
            if view.state != "stopped":
                courses.machines.kill(view.name)
        app.extensions["labkit"].close()
        db.close()
        shutil.rmtree(home, ignore_errors=True)


def log_in(site: Site, username: str) -> str:
    """The session cookie of a real login through the form (CSRF token included)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"http://{site.base}/login").read().decode()
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)
    assert token, "no CSRF token on the login page"
    form = urllib.parse.urlencode({"csrf_token": token.group(1), "username": username, "password": PASSWORD})
    opener.open(f"http://{site.base}/login", data=form.encode()).read()
    cookie = next((c for c in jar if c.name == "labkit_session"), None)
    assert cookie is not None, f"{username} was not logged in"
    return f"{cookie.name}={cookie.value}"


class Tab:
    """One browser tab's WebSocket: frames are collected by a thread, as the page's onmessage would."""

    def __init__(self, site: Site, machine: str, cookie: str | None, origin: str | None = None) -> None:
        headers = {"Cookie": cookie} if cookie else {}
        if origin:  # a browser sends one; scripts need not
            headers["Origin"] = origin
        self.ws = Client.connect(f"ws://{site.base}/ws/console/{machine}", headers=headers)
        self.output = b""
        self.controls: list[dict[str, object]] = []
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            while True:
                frame = self.ws.receive()
                if isinstance(frame, bytes):
                    self.output += frame
                elif frame is not None:
                    self.controls.append(json.loads(frame))
        except ConnectionClosed:
            self.closed.set()

    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r", "")

    def wait(self, predicate: object, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.text()[-500:]!r} {self.controls}"
            time.sleep(0.05)

    def control(self, kind: str) -> dict[str, object]:
        self.wait(lambda: any(c["type"] == kind for c in self.controls), f"a {kind} message")
        return next(c for c in self.controls if c["type"] == kind)

    def run(self, command: str) -> str:
        """Type a command; its output mark is computed by the shell, so the echoed line never matches."""
        tag = f"m{time.monotonic_ns()}"
        self.ws.send(f"{command}; echo {tag}-$((40+2))\n".encode())
        return f"{tag}-42"

    def close(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            self.ws.close()


def refused(site: Site, machine: str, cookie: str | None, origin: str | None = None) -> int:
    with pytest.raises(HandshakeRefused) as caught:
        Tab(site, machine, cookie, origin)
    return int(caught.value.status_code)


def test_rights_are_checked_before_the_handshake(site: Site) -> None:
    alice, bob, other = log_in(site, "alice"), log_in(site, "bob"), log_in(site, "other")
    assert refused(site, site.machines["alice"], None) == 404  # no session
    assert refused(site, site.machines["alice"], bob) == 404  # another student's machine
    assert refused(site, site.machines["alice"], other) == 404  # an instructor of another course
    assert refused(site, "no-such-machine", alice) == 404
    assert refused(site, site.machines["alice"], alice, origin="http://evil.example") == 403
    # The page's own origin is accepted (simple-websocket sends Host without the port, so the origin has none here).
    own = Tab(site, site.machines["alice"], alice, origin="http://127.0.0.1")
    assert own.control("hello")["read_only"] is False
    own.close()


def test_student_types_instructor_watches_and_a_stop_reaches_both(site: Site) -> None:
    alice, teach = log_in(site, "alice"), log_in(site, "teach")
    student = Tab(site, site.machines["alice"], alice)
    assert student.control("hello") == {"type": "hello", "machine": site.machines["alice"], "read_only": False}
    watcher = Tab(site, site.machines["alice"], teach)
    assert watcher.control("hello")["read_only"] is True

    mark = student.run("echo typed-by-alice; hostname")
    for tab in (student, watcher):
        tab.wait(lambda tab=tab: mark in tab.text(), "the command's output")  # type: ignore[misc]
        assert "box" in tab.text().split(mark)[0]

    ignored = watcher.run("touch /tmp/teacher-typed")
    student.ws.send(json.dumps({"type": "resize", "cols": 100, "rows": 30}))
    assert student.control("resized") == {"type": "resized", "cols": 100, "rows": 30}
    mark = student.run("test -e /tmp/teacher-typed && echo there-$((1+1)) || echo absent-$((1+3))")
    student.wait(lambda: mark in student.text(), "the check's output")
    assert "absent-4" in student.text() and ignored not in student.text()

    # A second tab of the student's sees the recent screen at once (the replay), then live output.
    again = Tab(site, site.machines["alice"], alice)
    again.wait(lambda: mark in again.text(), "the replay")
    again.close()

    site.courses.stop("c1", student="alice")
    for tab in (student, watcher):
        assert f"machine {site.machines['alice']} stopped" in str(tab.control("stopped")["message"])
        assert tab.closed.wait(15) and tab.ws.close_reason == CLOSE_STOPPED

    # Connecting to the stopped machine: the handshake succeeds (rights are fine) and the answer is a clear sentence.
    late = Tab(site, site.machines["alice"], alice)
    assert "is stopped" in str(late.control("stopped")["message"])
    assert late.closed.wait(15) and late.ws.close_reason == CLOSE_STOPPED
