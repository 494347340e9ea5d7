"""The whole web app in a real headless Chromium (Debian's, driven by Playwright; no browser is downloaded), against
a real ``labkit serve`` on a free loopback port, with the demo course (``labkit demo``) and real tiny guests.

One journey, in the order a class lives it: a student logs in, starts the machine and runs a command in the browser
console; takes a snapshot, changes the disk, stops, restores and finds the change gone; resets through the
confirmation page and finds the machine clean. Meanwhile the instructor, in a browser of their own, watches the class
grid follow those states, then grades the class and downloads the gradebook CSV, which must equal what
``labkit grades demo --csv`` writes.

With ``LABKIT_SCREENSHOTS=1`` the run also saves the pictures used in docs/ (docs/screenshots/*.png); without it,
the suite leaves the tree as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_settings, make_short_dir, settings_env
from playwright.sync_api import BrowserContext, Page, Playwright, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from labkit.config import Settings
from labkit.services.db import Database
from labkit.services.machines import Machines
from labkit.services.sweeper import Sweeper
from labkit.services.timing import now_utc

pytestmark = [pytest.mark.browser, pytest.mark.guest]

REPO = Path(__file__).resolve().parents[2]
LABKIT = str(Path(sys.executable).parent / "labkit")
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = REPO / "docs" / "screenshots"
BOOT = 60_000  # ms: a tiny guest is ready in about a second; a busy 2-core host may need more
JOB = 30_000

#: the text of the console's screen and scrollback; wrapped rows are joined back into their line
CONSOLE_TEXT = """() => {
  const buffer = window.labkitConsole.views[0].term.buffer.active;
  let text = "";
  for (let i = 0; i < buffer.length; i++) {
    const line = buffer.getLine(i);
    text += (i && !line.isWrapped ? "\\n" : "") + line.translateToString(true);
  }
  return text;
}"""


#: the absolute row of the console's cursor and the text of that row (trailing blanks cut)
CURSOR_LINE = """() => {
  const buffer = window.labkitConsole.views[0].term.buffer.active;
  const row = buffer.baseY + buffer.cursorY;
  return [row, buffer.getLine(row).translateToString(true)];
}"""

#: where ``needle`` is on the console's screen: the cell of its first "_" and a blank cell of the same row (far right,
#: nothing around it), each as a rectangle in the page's viewport, from the screen's size in cells
UNDERSCORE_CELLS = """(needle) => {
  const term = window.labkitConsole.views[0].term;
  const buffer = term.buffer.active;
  const screen = term.element.querySelector(".xterm-screen").getBoundingClientRect();
  const width = screen.width / term.cols, height = screen.height / term.rows;
  for (let row = 0; row < term.rows; row++) {
    const line = buffer.getLine(buffer.viewportY + row);
    const column = line ? line.translateToString(false).indexOf(needle) : -1;
    if (column >= 0 && column + needle.length < term.cols - 2) {
      const cell = (col) => ({x: screen.left + col * width, y: screen.top + row * height, width, height});
      return {underscore: cell(column + needle.indexOf("_")), blank: cell(term.cols - 2)};
    }
  }
  return null;
}"""


@dataclass
class Site:
    base: str
    settings: Settings
    env: dict[str, str]
    logins: dict[str, str]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"labkit serve did not answer on {url} (exit code {process.poll()})") from None
            time.sleep(0.1)


def labkit(site_env: dict[str, str], *args: str) -> str:
    result = subprocess.run([LABKIT, *args], env=site_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"labkit {' '.join(args)} failed: {result.stderr}"
    return result.stdout


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)  # the arbiter runs in this pid (it is also <run_dir>/web.pid)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def stop_guests(settings: Settings) -> None:
    """Every guest the run left running, stopped by its PID through the service."""
    db = Database(settings)
    try:
        machines = Machines(settings, db, actor="test")
        for view in machines.status():
            if view.state != "stopped":
                machines.kill(view.name)
    finally:
        db.close()


@contextmanager
def served_demo(prefix: str, *demo_args: str, env_extra: dict[str, str] | None = None,
                prepare: Callable[[Path, int], Sequence[str]] | None = None) -> Iterator[Site]:
    """The demo course (``labkit demo`` with ``demo_args``) served by a real ``labkit serve`` on a free loopback port,
    in a short home of its own (UML's socket paths are short); the server and every guest are stopped afterwards, by
    PID. ``prepare(home, port)`` runs first and returns more arguments for ``labkit demo`` (a lab needing the port)."""
    home = make_short_dir(prefix)
    settings = make_settings(home / "home")
    env = {**os.environ, **settings_env(settings), **(env_extra or {})}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process: subprocess.Popen[bytes] | None = None
    try:
        more = list(prepare(home, port)) if prepare else []
        labkit(env, "image", "build", "tiny", "--if-missing")
        labkit(env, "demo", "--url", base, *demo_args, *more)
        logins = json.loads((settings.home / "demo-logins.txt").read_text())
        with (home / "serve.log").open("wb") as log:
            process = subprocess.Popen([LABKIT, "serve", "--port", str(port), "--threads", "16"], env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
        wait_for(f"{base}/login", process)
        yield Site(base, settings, env, logins)
    finally:
        if process is not None:
            stop_server(process)
        stop_guests(settings)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with served_demo("lkb") as served:
        yield served


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():  # `make test` installs Debian's chromium: its absence is a broken setup, not a skip
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium, or `make test`)")
    with sync_playwright() as driver:
        yield driver


def open_browser(driver: Playwright, profile: Path) -> BrowserContext:
    """Debian's chromium with a fresh profile of its own (one per user: their cookies never mix)."""
    context = driver.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(JOB)
    return context


def shot(page: Page, name: str, **options: object) -> None:
    if os.environ.get("LABKIT_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / name), **options)


def log_in(page: Page, site: Site, username: str, picture: str | None = None) -> None:
    page.goto(f"{site.base}/login")
    page.fill("#username", username)
    page.fill("#password", site.logins[username])
    if picture:
        shot(page, picture)
    page.click("button[type=submit]")
    expect(page.locator("nav, header").first).to_contain_text(username)


def console_run(page: Page, command: str, timeout: float = 20.0, again: int = 1) -> str:
    """Type ``command`` into the browser console (real key presses into xterm) and return its output, read from the
    terminal's buffer between two marks the shell computes (so the echo of the typed line never matches them).

    A page that reloads itself meanwhile (it does when a job it shows ends) is waited for, and the command typed
    again into the new page's console.
    """
    mark = f"m{time.monotonic_ns()}"
    try:
        page.locator(".lk-console-screen").click()
        before = page.evaluate(CURSOR_LINE)[0]
        page.keyboard.press("Control+c")  # a fresh prompt, whatever an earlier page left typed on the line
        # BusyBox's line editor asks the terminal where its cursor is (ESC [6n) just before it prints each prompt,
        # and xterm.js answers as it shows it: once the fresh prompt is on screen the answer has gone out, and the
        # keys typed now follow it instead of landing in the middle of the exchange
        deadline = time.monotonic() + timeout
        while not ((line := page.evaluate(CURSOR_LINE))[0] > before and line[1].rstrip().endswith(("#", "$"))):
            assert time.monotonic() < deadline, f"no fresh prompt after Ctrl-C in the browser console: {line!r}"
            time.sleep(0.05)
    except PlaywrightError:
        if not again:
            raise
        page.wait_for_load_state()
        expect(page.locator(".lk-console")).to_have_attribute("data-state", "connected", timeout=JOB)
        return console_run(page, command, timeout, again - 1)
    page.keyboard.type(f"echo {mark}-$((1+1))B; {command}; echo {mark}-$((2+1))E")
    page.keyboard.press("Enter")
    deadline = time.monotonic() + timeout
    while True:
        try:
            text = page.evaluate(CONSOLE_TEXT)
        except PlaywrightError:
            if not again:
                raise
            page.wait_for_load_state()
            expect(page.locator(".lk-console")).to_have_attribute("data-state", "connected", timeout=JOB)
            return console_run(page, command, timeout, again - 1)
        if f"{mark}-3E" in text.split(f"{mark}-2B\n", 1)[-1]:
            return text.split(f"{mark}-2B\n", 1)[1].split(f"{mark}-3E", 1)[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer to {command!r} in the browser console; it shows: {text[-600:]!r}")
        time.sleep(0.1)


def underscore_is_drawn(page: Page, needle: str) -> bool:
    """Whether the "_" of ``needle`` (shown on the console's screen) leaves pixels where a blank cell has none.

    Both crops are the lower part of a cell (below the baseline, where "_" lies and no neighbouring digit or letter
    reaches), of the same size: an underscore that is cut off leaves exactly the background, so the two PNGs are the
    same bytes.
    """
    page.locator(".lk-console-screen").scroll_into_view_if_needed()
    cells = page.evaluate(UNDERSCORE_CELLS, needle)
    assert cells, f"{needle!r} is not on the console's screen"

    def lower_part(cell: dict[str, float]) -> bytes:
        width, height = int(cell["width"]) - 2, int(cell["height"] * 0.4)
        top = int(cell["y"] + cell["height"]) - height
        return page.screenshot(clip={"x": int(cell["x"]) + 1, "y": top, "width": width, "height": height})

    return lower_part(cells["underscore"]) != lower_part(cells["blank"])


def wait_running_with_console(page: Page, machine: str) -> None:
    expect(page.locator(f"#machine-{machine}")).to_have_attribute("data-state", "running", timeout=BOOT)
    expect(page.locator(".lk-console")).to_have_attribute("data-state", "connected", timeout=JOB)
    console_run(page, "true")  # the shell answers (the console may connect before its prompt)


def grid_state(teacher: Page, machine: str, state: str) -> None:
    cell = teacher.locator(f'#grid td[data-student="student1"][data-machine="{machine}"] .state')
    expect(cell).to_have_text(state, timeout=JOB)  # the grid polls every few seconds, without a reload


def job_done(page: Page) -> None:
    """The newest job on a student page ended well, and the page has reloaded itself (jobs.js does, 400 ms after a
    job it watched ended; a page rendered after the job ended does not).

    jobs.js marks the jobs it watches (data-watched); a page rendered after the job ended shows it unmarked, so
    waiting for an unmarked, done newest job waits for the reload exactly, however long it takes.
    """
    newest = page.locator(".lk-job").first
    expect(newest).to_have_attribute("data-state", "done", timeout=JOB)
    expect(newest).not_to_have_attribute("data-watched", "true", timeout=JOB)
    page.wait_for_load_state()


def test_a_class_in_the_browser(site: Site, playwright: Playwright, tmp_path: Path) -> None:
    student_browser = open_browser(playwright, tmp_path / "student-profile")
    teacher_browser = open_browser(playwright, tmp_path / "teacher-profile")
    try:
        student, teacher = student_browser.new_page(), teacher_browser.new_page()
        log_in(teacher, site, "teacher")
        log_in(student, site, "student1", picture="login.png")
        expect(student).to_have_url(f"{site.base}/my/")
        row = student.locator("tr.machine").first
        machine = row.get_attribute("data-machine")
        assert machine and row.get_attribute("data-state") == "stopped"

        teacher.goto(f"{site.base}/teach/courses/demo/grid")
        grid_state(teacher, machine, "stopped")

        # start the machine and use its console
        row.locator("a").first.click()
        expect(student).to_have_url(f"{site.base}/my/machines/{machine}")
        student.click("button[data-action=start]")
        wait_running_with_console(student, machine)
        assert console_run(student, "echo $((6*7))-from-the-browser; uname -s").split() == [
            "42-from-the-browser", "Linux"]
        # the console's font and line height leave room for what hangs below the baseline ("x86_64", not "x86 64")
        assert console_run(student, "uname -m").split() == ["x86_64"]
        assert underscore_is_drawn(student, "x86_64"), "the console hides the underscore of x86_64"
        if os.environ.get("LABKIT_SCREENSHOTS") == "1":  # for the picture: a console as a student uses it
            student.keyboard.type("clear")
            student.keyboard.press("Enter")
            student.wait_for_timeout(300)
            student.keyboard.type("uname -srm; id; ls /")
            student.keyboard.press("Enter")
            expect(student.locator(".lk-console-screen")).to_contain_text("uid=0(root)")
            student.mouse.move(0, 0)  # the console's scrollbar fades once the pointer has left it
            student.wait_for_timeout(1500)
            shot(student, "student-lab.png", full_page=True)
        grid_state(teacher, machine, "running")
        shot(teacher, "instructor-grid.png", full_page=True)

        # snapshot, change, stop, restore, start: the change is gone
        student.fill("input[name=snapshot]", "clean")
        student.click("button[data-action=snapshot]")
        job_done(student)
        expect(student.locator("#snapshot-clean")).to_be_visible(timeout=JOB)
        wait_running_with_console(student, machine)
        assert console_run(student, "echo changed > /root/mark.txt && sync && cat /root/mark.txt").strip() == "changed"
        student.click("button[data-action=stop]")
        expect(student.locator(f"#machine-{machine}")).to_have_attribute("data-state", "stopped", timeout=JOB)
        grid_state(teacher, machine, "stopped")
        student.click("#snapshot-clean a[data-action=restore]")
        expect(student.locator("h1")).to_contain_text("Restore clean?")
        student.click("button[data-action=restore]")
        expect(student).to_have_url(f"{site.base}/my/machines/{machine}")
        job_done(student)
        student.click("button[data-action=start]")
        wait_running_with_console(student, machine)
        grid_state(teacher, machine, "running")
        assert "changed" not in console_run(student, "cat /root/mark.txt 2>&1; ls -a /root")

        # reset through its confirmation page: the machine is as new (and the snapshot is kept)
        assert console_run(student, "echo again > /root/reset.txt && sync && ls /root").split() == ["reset.txt"]
        student.click("a[data-action=reset]")
        expect(student.locator("h1")).to_contain_text("Reset box?")
        student.click("button[data-action=reset]")
        expect(student).to_have_url(f"{site.base}/my/machines/{machine}")
        expect(student.locator(f"#machine-{machine}")).to_have_attribute("data-state", "stopped", timeout=JOB)
        job_done(student)
        grid_state(teacher, machine, "stopped")
        expect(student.locator("#snapshot-clean")).to_be_visible()
        student.click("button[data-action=start]")
        wait_running_with_console(student, machine)
        assert console_run(student, "ls -a /root; cat /root/reset.txt 2>&1 || echo none").split()[-1] == "none"
        grid_state(teacher, machine, "running")

        # the instructor grades the class and downloads the gradebook
        teacher.goto(f"{site.base}/teach/courses/demo/grades")
        teacher.click("button[data-action=grade]")
        job = teacher.locator("#jobs li.job").first
        expect(job).to_have_attribute("data-job-state", "done", timeout=JOB)
        teacher.wait_for_load_state()  # the page reloads itself when the job is done: the gradebook is filled in
        total = teacher.locator('#grades-table tr[data-student="student1"] td[data-column="intro-shell"]')
        expect(total).not_to_have_text("", timeout=JOB)
        shot(teacher, "grades.png", full_page=True)
        with teacher.expect_download() as download:
            teacher.click("#grades-csv")
        downloaded = Path(download.value.path()).read_bytes()
        cli_csv = tmp_path / "cli.csv"
        labkit(site.env, "grades", "demo", "--csv", str(cli_csv))
        assert downloaded == cli_csv.read_bytes()
        assert b"student1" in downloaded and b"student2" in downloaded
    finally:
        student_browser.close()
        teacher_browser.close()


def test_an_idle_machine_pauses_and_goes_on_when_the_student_is_back(site: Site, playwright: Playwright,
                                                                     tmp_path: Path) -> None:
    """Issue 14: a lab with an idle time. The real sweeper, its clock moved past that time, pauses the student's
    running machine; opening the workspace resumes it, and a process started in the console before goes on (the
    same kernel boot, the same PID, still counting)."""
    labkit(site.env, "course", "time", "demo", "intro-shell", "--idle", "1m")
    browser = open_browser(playwright, tmp_path / "student2-profile")
    try:
        student = browser.new_page()
        log_in(student, site, "student2")
        workspace = f"{site.base}/my/courses/demo/labs/intro-shell"
        student.goto(workspace)
        machine = student.locator(".ws-machine").first.get_attribute("data-machine")
        assert machine
        page = f"{site.base}/my/machines/{machine}"
        student.goto(page)
        student.click("button[data-action=start]")
        wait_running_with_console(student, machine)
        console_run(student, "(i=0; while true; do i=$((i+1)); echo $i > /root/count; sleep 1; done) >/dev/null 2>&1 &"
                             " echo $! > /root/pid")
        before = console_run(student, "cat /proc/sys/kernel/random/boot_id /root/pid").split()

        db = Database(site.settings)
        try:
            report = Sweeper(site.settings, db).sweep(now_utc() + dt.timedelta(minutes=2))
            assert machine in report.paused, report
            assert Machines(site.settings, db, actor="test").status(machine)[0].state == "paused"
            # the student's list shows it paused (a page with a console, or the workspace, would resume it)
            student.goto(f"{site.base}/my/")
            expect(student.locator(f"#machine-{machine}")).to_have_attribute("data-state", "paused")
            assert Machines(site.settings, db, actor="test").status(machine)[0].state == "paused"

            student.goto(workspace)  # the student is back
            # the workspace is rendered with the machine paused, then its scripts resume it
            expect(student.locator(".ws-machine").first).to_have_attribute("data-state", "paused")
            deadline = time.monotonic() + JOB / 1000
            while Machines(site.settings, db, actor="test").status(machine)[0].state != "running":
                assert time.monotonic() < deadline, "opening the workspace did not resume the paused machine"
                time.sleep(0.2)
        finally:
            db.close()
        student.goto(page)
        expect(student.locator(f"#machine-{machine}")).to_have_attribute("data-state", "running")
        expect(student.locator(".lk-console")).to_have_attribute("data-state", "connected", timeout=JOB)
        alive = "p=$(cat /root/pid); [ -d /proc/$p ] && echo alive; cat /proc/sys/kernel/random/boot_id /root/pid"
        after = console_run(student, alive).split()
        assert after == ["alive", *before], (before, after)
        first = int(console_run(student, "cat /root/count").strip())
        deadline = time.monotonic() + 20
        while int(console_run(student, "cat /root/count").strip()) <= first:
            assert time.monotonic() < deadline, "the counter did not go on after the resume"
            time.sleep(0.5)
    finally:
        browser.close()
