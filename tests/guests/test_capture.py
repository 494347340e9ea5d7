"""Packet capture on real guests: the two-hosts lab booted for alice and bob (four tiny guests, once for the module);
a ping between alice's two machines is captured by ``labkit capture`` and by her Capture button (through the routes,
and once in Debian's chromium against ``labkit serve``), and read back with ``tcpdump -r``; bob's capture of his
network of the same name sees none of it; Ctrl-C; who may capture what, and bad input.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import settings_env
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from web_app import app_home, csrf_token, session_client

from labkit.errors import ConfigError, NotFoundError
from labkit.runtime.capture import TapRecord
from labkit.services.accounts import Accounts
from labkit.services.captures import Captures
from labkit.services.courses import Courses
from labkit.services.models import Event, Machine
from web.state import WebState

from .labkit_cli import LABKIT, Labkit

pytestmark = [pytest.mark.guest,
              pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump (Debian package tcpdump) missing")]
LABS = Path(__file__).resolve().parents[2] / "labs"


@dataclass
class Class:
    home: Path
    app: Flask
    state: WebState
    courses: Courses
    lk: Labkit
    #: (student, lab machine) -> machine name
    names: dict[tuple[str, str], str]
    #: student -> (a's address, b's address) on their lab network
    lan: dict[str, tuple[str, str]]


def eth1(courses: Courses, machine: str) -> str:
    with courses.machines.open_guest(machine) as guest:
        out = guest.run("ip -4 -o addr show eth1").out.split()
    return out[out.index("inet") + 1].split("/")[0]


@pytest.fixture(scope="module")
def klass() -> Iterator[Class]:
    """Course ``net`` with two-hosts, alice, bob and carol on the roster (with accounts) and teacher as its owner;
    alice's and bob's machines running."""
    with app_home("lkp", "capture-test") as made:
        home, settings, app, state = made.home, made.settings, made.app, made.state
        courses = Courses(settings, state.db, actor="teacher")
        courses.create("net", [LABS / "two-hosts"])
        roster = home / "roster.csv"
        roster.write_text("id,name,email\nalice,Alice,a@example.org\nbob,Bob,b@example.org\ncarol,C,c@example.org\n")
        courses.import_roster("net", roster)
        courses.provision("net")
        accounts = Accounts(settings, state.db, "teacher")
        accounts.create_links("net")
        accounts.create_user("teacher", "instructor", "correct horse battery")
        accounts.set_course_owner("net", "teacher")
        for student in ("alice", "bob"):
            courses.start("net", student=student)
        names = {(str(r["student"]), str(r["machine"])): str(r["name"]) for r in courses.status("net")}
        lan = {s: (eth1(courses, names[(s, "a")]), eth1(courses, names[(s, "b")])) for s in ("alice", "bob")}
        yield Class(home, app, state, courses, Labkit(settings_env(settings)), names, lan)


class Ping:
    """A ping from alice's a to her b that runs in the guest for ``seconds``, started before a capture and checked to
    outlast it (so a capture window lies inside the ping, whatever the scheduler does)."""

    def __init__(self, klass: Class, seconds: int = 12) -> None:
        self.klass, self.machine = klass, klass.names[("alice", "a")]
        target = klass.lan["alice"][1]
        with klass.courses.machines.open_guest(self.machine) as guest:
            guest.run(f"ping -c {seconds * 5} -i 0.2 {target} </dev/null >/tmp/ping.log 2>&1 &")
            deadline = time.monotonic() + 10
            while "bytes from" not in guest.run("cat /tmp/ping.log").out:
                assert time.monotonic() < deadline, "alice's a does not reach b"
                time.sleep(0.1)

    def still_running(self) -> bool:
        with self.klass.courses.machines.open_guest(self.machine) as guest:
            return guest.run("pidof ping").ok

    def stop(self) -> None:
        with self.klass.courses.machines.open_guest(self.machine) as guest:
            guest.run("kill $(pidof ping) 2>/dev/null; true")


def icmp(pcap: Path) -> list[str]:
    """``tcpdump -r``'s lines for the ICMP packets in the file (it fails on a file that is not pcap)."""
    done = subprocess.run(["tcpdump", "-n", "-r", str(pcap), "icmp"], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_a_ping_is_captured_by_its_student_only(klass: Class) -> None:
    a, b = klass.lan["alice"]
    ping = Ping(klass)
    try:
        lk = klass.lk
        runs = [subprocess.Popen([LABKIT, "capture", "net", who, "lan", "-o", str(klass.home / f"{who}.pcap"),
                                  "--duration", "2"], env=lk.env, stderr=subprocess.PIPE, text=True)
                for who in ("alice", "bob")]
        errors = [run.communicate(timeout=60)[1] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], errors
        assert ping.still_running()  # both captures lay inside the ping
    finally:
        ping.stop()
    assert "capturing lan of alice's two-hosts (machines a, b) for 2 s" in errors[0]
    seen = icmp(klass.home / "alice.pcap")
    # a ping every 0.2 s for 2 s: both ways, every time (a switch would flood a's first request, then send b's
    # replies to a's port only; lab networks are hubs so the capture's port gets them too)
    requests = [line for line in seen if f"IP {a} > {b}: ICMP echo request" in line]
    replies = [line for line in seen if f"IP {b} > {a}: ICMP echo reply" in line]
    assert len(requests) >= 3 and len(replies) >= 3, seen
    # bob's network has the same name, but it is his own switch: nothing of alice's ping is on it
    bobs = subprocess.run(["tcpdump", "-n", "-r", str(klass.home / "bob.pcap")], capture_output=True, text=True,
                          check=True).stdout
    assert icmp(klass.home / "bob.pcap") == [] and a not in bobs and b not in bobs
    assert not list((klass.home / "home").rglob("taps/*.json"))  # every plug ended and its record removed


def test_ctrl_c_ends_the_capture_and_keeps_the_file(klass: Class) -> None:
    """SIGINT to ``labkit capture`` (what Ctrl-C sends it; its plug is in a session of its own): the plug is ended by
    its PID, its record removed, and the file holds what was captured."""
    out = klass.home / "interrupted.pcap"
    run = subprocess.Popen([LABKIT, "capture", "net", "alice", "lan", "-o", str(out), "--duration", "60"],
                           env=klass.lk.env, stderr=subprocess.PIPE, text=True)
    taps = klass.home / "home"
    deadline = time.monotonic() + 30
    while not (records := list(taps.rglob("taps/*.json"))):
        assert run.poll() is None and time.monotonic() < deadline, "the capture did not start"
        time.sleep(0.05)
    plug = TapRecord.read(records[0])
    assert plug is not None and plug.owner and plug.process().alive()
    run.send_signal(signal.SIGINT)
    _, errors = run.communicate(timeout=30)
    assert run.returncode == 0 and "stopped: interrupted" in errors, errors
    assert not plug.process().alive() and not list(taps.rglob("taps/*.json"))
    icmp(out)  # a whole pcap file: tcpdump reads it


def test_the_capture_buttons_download_pcaps(klass: Class) -> None:
    alice, teacher = session_client(klass.app, "alice"), session_client(klass.app, "teacher")
    page = alice.get("/my/courses/net/labs/two-hosts").get_data(as_text=True)
    assert 'action="/my/courses/net/labs/two-hosts/capture/lan"' in page and "Capture lan" in page
    assert 'action="/teach/courses/net/students/bob/labs/two-hosts/capture/lan"' in teacher.get(
        "/teach/courses/net/capture").get_data(as_text=True)
    mine = ("/my/courses/net/labs/two-hosts/capture/lan", csrf_token(alice, "/my/"), alice)
    theirs = ("/teach/courses/net/students/alice/labs/two-hosts/capture/lan", csrf_token(teacher, "/teach/"), teacher)
    ping = Ping(klass)
    try:
        def download(target: tuple[str, str, FlaskClient]) -> tuple[int, dict[str, str], bytes]:
            path, token, client = target
            answer = client.post(path, data={"csrf_token": token, "duration": "2"})
            return answer.status_code, dict(answer.headers), answer.get_data()

        with ThreadPoolExecutor(2) as pool:
            got = list(pool.map(download, [mine, theirs]))
        assert ping.still_running()
    finally:
        ping.stop()
    a, b = klass.lan["alice"]
    for (status, headers, data), name in zip(got, ("alice", "teacher"), strict=True):
        assert status == 200 and headers["Content-Type"] == "application/vnd.tcpdump.pcap"
        assert headers["Content-Disposition"] == 'attachment; filename="net-alice-two-hosts-lan.pcap"'
        (klass.home / f"web-{name}.pcap").write_bytes(data)
        seen = icmp(klass.home / f"web-{name}.pcap")
        assert any(f"IP {a} > {b}: ICMP echo request" in line for line in seen), (name, seen)
    with klass.state.db.transaction() as session:  # each capture is in the audit log, with who asked
        found = session.scalars(select(Event).where(Event.action == "capture"))
        events = {(e.actor, e.target, e.detail) for e in found}
    assert {("alice", "net/alice/two-hosts/lan", "2 s"), ("teacher", "net/alice/two-hosts/lan", "2 s")} <= events


def test_who_may_capture_what_and_bad_input(klass: Class) -> None:
    alice, teacher = session_client(klass.app, "alice"), session_client(klass.app, "teacher")
    token, teacher_token = csrf_token(alice, "/my/"), csrf_token(teacher, "/teach/")

    def post(client: FlaskClient, path: str, duration: str = "1", csrf_token: str = token) -> tuple[int, str]:
        answer = client.post(path, data={"csrf_token": csrf_token, "duration": duration})
        return answer.status_code, answer.get_data(as_text=True)

    # a student cannot reach another student's network: not through the instructor's route, not through a lab or a
    # course that is not theirs (404, like what does not exist)
    assert post(alice, "/teach/courses/net/students/bob/labs/two-hosts/capture/lan")[0] == 404
    assert post(alice, "/my/courses/other/labs/two-hosts/capture/lan")[0] == 404
    assert post(alice, "/my/courses/net/labs/intro-shell/capture/lan")[0] == 404
    assert post(alice, "/my/courses/net/labs/two-hosts/capture/lan", csrf_token="forged")[0] == 400
    # ... nor through the service, whose answer is the same as for a network that does not exist
    state = klass.state
    user = state.accounts("test").get("alice")
    with pytest.raises(NotFoundError, match="student bob of course net has no lab network lan that you may capture"):
        Captures(state.settings, state.db, "alice").start("net", "bob", "lan", seconds=1, user=user)
    # bad input: an unknown network, names with path characters, durations out of range
    status, text = post(alice, "/my/courses/net/labs/two-hosts/capture/wan")
    assert status == 404 and "has no lab network wan" in text
    for bad in ("%2E%2E", "lan%2F..", "LAN", "l%C3%A4n"):
        status, text = post(alice, f"/my/courses/net/labs/two-hosts/capture/{bad}")
        assert status in (400, 404) and "Traceback" not in text, bad
    for duration in ("0", "61", "-5", "soon", "nan"):
        status, text = post(alice, "/my/courses/net/labs/two-hosts/capture/lan", duration)
        assert status == 400 and ("No capture" in text or "not a number" in text), (duration, text)
    # carol's machines are stopped: her switch does not run
    status, text = post(teacher, "/teach/courses/net/students/carol/labs/two-hosts/capture/lan",
                        csrf_token=teacher_token)
    assert status == 409 and "cannot capture network lan: it is stopped" in text
    # the CLI says the same in one line
    done = klass.lk("capture", "net", "alice", "wan", "-o", str(klass.home / "x.pcap"), check=False)
    assert done.returncode == 1 and done.stderr.strip() == (
        "labkit: error: student alice of course net has no lab network wan that you may capture")
    done = klass.lk("capture", "net", "alice", "lan", "-o", str(klass.home / "x.pcap"), "--duration", "0",
                    check=False)
    assert done.returncode == 1 and "capture duration 0.0 must be more than 0" in done.stderr
    assert not (klass.home / "x.pcap").exists()
    # a recorded folder outside the installation's run/net is never used
    with state.db.transaction() as session:
        for machine in session.scalars(select(Machine).where(Machine.name.in_(
                [klass.names[("carol", "a")], klass.names[("carol", "b")]]))):
            machine.networks = [["lan", str(klass.home / "elsewhere")]]
    with pytest.raises(ConfigError, match="not under"):
        Captures(state.settings, state.db, "teacher").start("net", "carol", "lan", seconds=1)


@pytest.mark.browser
def test_the_capture_button_in_chromium(klass: Class) -> None:
    """The button as a student uses it: ``labkit serve`` (gunicorn streams the capture), Debian's chromium logs in as
    alice, picks 5 s on her lab page and presses "Capture lan"; the download is a pcap with her ping in it."""
    from playwright.sync_api import expect, sync_playwright

    accounts = Accounts(klass.state.settings, klass.state.db, "teacher")
    accounts.use_link(accounts.create_links("net", ["alice"])[0].token, "alice's long password")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with (klass.home / "serve.log").open("wb") as log:
        server = subprocess.Popen([LABKIT, "serve", "--port", str(port), "--threads", "4"], env=klass.lk.env,
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/login", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "labkit serve did not answer"
                time.sleep(0.1)
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(accept_downloads=True)
            page.set_default_timeout(30_000)
            page.goto(f"{base}/login")
            page.fill("#username", "alice")
            page.fill("#password", "alice's long password")
            page.click("button[type=submit]")
            page.goto(f"{base}/my/courses/net/labs/two-hosts")
            form = page.locator("form.capture-form[data-network=lan]")
            expect(form).to_be_visible()
            form.locator("select[name=duration]").select_option("5")
            ping = Ping(klass)
            try:
                with page.expect_download() as download:
                    form.locator("button[data-action=capture]").click()
                path = klass.home / "browser.pcap"
                download.value.save_as(path)
                assert download.value.suggested_filename == "net-alice-two-hosts-lan.pcap"
                assert ping.still_running()
            finally:
                ping.stop()
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)  # our own server, by its PID
        server.wait(20)
    a, b = klass.lan["alice"]
    seen = icmp(path)
    assert any(f"IP {a} > {b}: ICMP echo request" in line for line in seen), seen
    assert any(f"IP {b} > {a}: ICMP echo reply" in line for line in seen), seen
