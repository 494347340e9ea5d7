"""The student's lab workspace in a real headless Chromium against a real ``labkit serve``, on the two-machine lab
(``labkit demo --lab labs/two-hosts``: b, then a, which depends on it), at 1280×800.

One journey: Start lab brings both machines up in ``depends_on`` order; a command typed in a's tab and one typed in
b's (switched to with Alt+2) show their output; the first step's Check button shows that step's feedback; a code
block's Copy button puts its text on the clipboard, and its "Run in a" types it into a's terminal.

With ``LABKIT_SCREENSHOTS=1`` the run saves docs/screenshots/workspace.png (1280×800) and workspace-narrow.png.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Playwright, expect
from sqlalchemy import select

from labkit.services.db import Database
from labkit.services.models import Event

from .test_browser import (  # noqa: F401  (playwright: the shared fixture)
    BOOT,
    JOB,
    REPO,
    SCREENSHOTS,
    Site,
    job_done,
    labkit,
    log_in,
    open_browser,
    playwright,
    served_demo,
)

pytestmark = [pytest.mark.browser, pytest.mark.guest]

PAGE = "/my/courses/demo/labs/two-hosts"

#: the view (console.js) of the lab machine's tab
VIEW = """(machine) => {
  const root = document.querySelector(`.ws-panel[data-machine="${machine}"] .lk-console`);
  return window.labkitConsole.views.find((v) => v.root === root);
}"""
#: the text of that console's screen and scrollback; wrapped rows joined back into their line
TEXT = "(machine) => { const view = (" + VIEW + """)(machine);
  const buffer = view.term.buffer.active;
  let text = "";
  for (let i = 0; i < buffer.length; i++) {
    const line = buffer.getLine(i);
    text += (i && !line.isWrapped ? "\\n" : "") + line.translateToString(true);
  }
  return text;
}"""
#: the absolute row of that console's cursor and the text of that row
CURSOR = "(machine) => { const view = (" + VIEW + """)(machine);
  const buffer = view.term.buffer.active;
  const row = buffer.baseY + buffer.cursorY;
  return [row, buffer.getLine(row).translateToString(true)];
}"""


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with served_demo("lkbw", "--lab", str(REPO / "labs" / "two-hosts")) as served:
        yield served


def shot(page: Page, name: str) -> None:
    if os.environ.get("LABKIT_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.mouse.move(0, 0)  # the console's scrollbar fades once the pointer has left it
        page.wait_for_timeout(1200)
        page.screenshot(path=str(SCREENSHOTS / name))


def run_in(page: Page, machine: str, command: str, timeout: float = 20.0) -> str:
    """Type ``command`` into the lab machine's terminal (real key presses into xterm, its tab shown first) and return
    its output, read between two marks the shell computes (the echo of the typed line never matches them). As in
    test_browser.console_run, Ctrl-C first and a fresh prompt before typing (BusyBox asks where the cursor is)."""
    tab = page.locator(f'.ws-tab[data-machine="{machine}"]')
    if tab.get_attribute("aria-selected") != "true":
        tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")
    panel = page.locator(f'.ws-panel[data-machine="{machine}"]')
    expect(panel.locator(".lk-console")).to_have_attribute("data-state", "connected", timeout=JOB)
    panel.locator(".lk-console-screen").click()
    before = page.evaluate(CURSOR, machine)[0]
    page.keyboard.press("Control+c")
    deadline = time.monotonic() + timeout
    while not ((line := page.evaluate(CURSOR, machine))[0] > before and line[1].rstrip().endswith(("#", "$"))):
        assert time.monotonic() < deadline, f"no fresh prompt in {machine}'s terminal: {line!r}"
        time.sleep(0.05)
    mark = f"m{time.monotonic_ns()}"
    page.keyboard.type(f"echo {mark}-$((1+1))B; {command}; echo {mark}-$((2+1))E")
    page.keyboard.press("Enter")
    while True:
        text = page.evaluate(TEXT, machine)
        if f"{mark}-3E" in text.split(f"{mark}-2B\n", 1)[-1]:
            return text.split(f"{mark}-2B\n", 1)[1].split(f"{mark}-3E", 1)[0]
        assert time.monotonic() < deadline + timeout, f"no answer to {command!r} in {machine}: {text[-600:]!r}"
        time.sleep(0.1)


def started_order(site: Site) -> list[str]:
    db = Database(site.settings)
    try:
        with db.transaction() as session:
            return list(session.scalars(select(Event.target).where(Event.action == "start").order_by(Event.id)))
    finally:
        db.close()


def test_the_workspace_in_the_browser(site: Site, playwright: Playwright, tmp_path: Path) -> None:  # noqa: F811
    browser = open_browser(playwright, tmp_path / "student-profile")
    try:
        browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.base)
        page = browser.new_page()
        page.set_viewport_size({"width": 1280, "height": 800})
        log_in(page, site, "student1")
        page.goto(site.base + PAGE)
        machines = {m: page.locator(f'.ws-panel[data-machine="{m}"] .ws-machine').get_attribute("data-machine")
                    for m in ("a", "b")}
        assert page.locator(".ws-tab").all_inner_texts()[0].startswith("a")

        # Start lab: b first (a depends on it), then a; the page reloads when the job is done
        page.click("button[data-action=start-lab]")
        job_done(page)
        for machine in ("a", "b"):
            expect(page.locator(f"#machine-{machines[machine]}")).to_have_attribute("data-state", "running",
                                                                                      timeout=BOOT)
        assert started_order(site) == [machines["b"], machines["a"]]

        # a terminal tab per machine: type in a's, then in b's (Alt+2)
        assert run_in(page, "a", "uname -m").split() == ["x86_64"]
        page.keyboard.press("Alt+2")
        expect(page.locator('.ws-tab[data-machine="b"]')).to_have_attribute("aria-selected", "true")
        expect(page.locator('.ws-panel[data-machine="a"]')).to_have_attribute("data-active", "false")
        assert run_in(page, "b", "mkdir -p /srv/lab_notes && ls -d /srv/lab_notes").split() == ["/srv/lab_notes"]
        assert "lab_notes" not in page.evaluate(TEXT, "a")  # each tab is its own machine
        page.keyboard.press("Alt+1")
        expect(page.locator('.ws-tab[data-machine="a"]')).to_have_attribute("aria-selected", "true")

        # the steps: "Step 1 of 4", Next and Previous
        step = page.locator('.ws-step[data-step="look-around"]')
        expect(page.locator(".ws-step-count")).to_have_text("Step 1 of 4")
        page.click("button[data-action=next-step]")
        expect(page.locator(".ws-step-count")).to_have_text("Step 2 of 4")
        expect(step).to_be_hidden()
        page.click("button[data-action=previous-step]")
        expect(step).to_be_visible()

        # the copy button puts the block's text on the clipboard; "Run in a" types it into a's terminal
        step.locator("pre button[data-action=copy]").click()
        expect(step.locator("pre button[data-action=copy]")).to_have_text("Copied")
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied.startswith("ping -c 1 ") and copied == step.locator("pre code").inner_text()
        step.locator("pre button[data-action=run]").click()
        expect(page.locator('.ws-panel[data-machine="a"] .lk-console-screen')).to_contain_text("1 packets received",
                                                                                             timeout=JOB)
        if os.environ.get("LABKIT_SCREENSHOTS") == "1":  # for the picture: both commands in a's terminal
            run_in(page, "a", "true")  # a fresh prompt, with the terminal focused
            page.keyboard.type("clear")
            page.keyboard.press("Enter")
            page.wait_for_timeout(300)
            page.keyboard.type("uname -m; mkdir -p /root/lab_notes; ls -d /root/lab_notes")
            page.keyboard.press("Enter")
            expect(page.locator('.ws-panel[data-machine="a"] .lk-console-screen')).to_contain_text("/root/lab_notes")

        # the step's Check button: that step's checks only, and their feedback under the step
        step.locator("button[data-action=check-step]").click()
        job_done(page)
        step = page.locator('.ws-step[data-step="look-around"]')
        expect(step).to_be_visible()
        expect(step.locator('.ws-feedback li[data-check="lan-link"]')).to_have_class("check check-pass")
        expect(step.locator(".ws-feedback")).to_contain_text("a reaches b at ")
        assert page.locator(".ws-feedback").count() == 1
        shot(page, "workspace.png")
        page.set_viewport_size({"width": 600, "height": 900})
        step.scroll_into_view_if_needed()
        expect(page.locator(".ws-handle")).to_be_hidden()  # stacked: the guide above the terminals
        guide, terminals = page.locator("#guide").bounding_box(), page.locator("#terminals").bounding_box()
        assert guide and terminals and terminals["y"] >= guide["y"] + guide["height"] - 1
        shot(page, "workspace-narrow.png")
    finally:
        browser.close()
