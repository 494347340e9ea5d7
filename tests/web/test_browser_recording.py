"""A recorded console replayed in the instructor's browser: the student works in the browser console and runs a
self-check meanwhile; the instructor opens the student's recordings from the read-only console and asciinema-player
shows what the student typed and saw, with a marker at the self-check (real ``labkit serve``, real Chromium, a real
tiny guest; helpers from test_browser.py).

With ``LABKIT_SCREENSHOTS=1`` it saves docs/screenshots/replay.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from playwright.sync_api import Playwright, expect

from .test_browser import (  # noqa: F401
    JOB,
    Site,
    console_run,
    labkit,
    log_in,
    open_browser,
    playwright,
    shot,
    site,
    wait_running_with_console,
)

pytestmark = [pytest.mark.browser, pytest.mark.guest]

#: the text on the player's terminal
PLAYER_TEXT = "() => (document.querySelector('#player .ap-term') || {innerText: ''}).innerText"


def test_the_instructor_replays_a_students_console(site: Site, playwright: Playwright,  # noqa: F811
                                                   tmp_path: Path) -> None:
    student_browser = open_browser(playwright, tmp_path / "student-profile")
    teacher_browser = open_browser(playwright, tmp_path / "teacher-profile")
    try:
        student, teacher = student_browser.new_page(), teacher_browser.new_page()
        log_in(student, site, "student1")
        log_in(teacher, site, "teacher")
        machine = student.locator("tr.machine").first.get_attribute("data-machine")
        assert machine
        student.goto(f"{site.base}/my/machines/{machine}")
        student.click("button[data-action=start]")
        wait_running_with_console(student, machine)
        assert console_run(student, "echo replay-$((6*7))").strip() == "replay-42"
        json.loads(labkit(site.env, "check", "demo", "student1", "--json"))  # a self-check while the console is open
        assert console_run(student, "echo after-$((2*3))-check").strip() == "after-6-check"
        student.goto(f"{site.base}/my/")  # leaving the page closes the console session and its recording

        teacher.goto(f"{site.base}/teach/courses/demo/machines/{machine}/console")
        teacher.click("#recordings-link")
        expect(teacher).to_have_url(f"{site.base}/teach/courses/demo/recordings/{machine}")
        chosen = teacher.locator("#recordings tr[aria-current=true]")
        expect(chosen).to_contain_text("browser")
        expect(chosen).to_contain_text("student1")
        expect(teacher.locator("#markers li")).to_contain_text(["self-check"])  # the page's list
        teacher.evaluate("window.labkitReplay.play()")
        teacher.evaluate("window.labkitReplay.seek(window.labkitReplay.getDuration() - 0.01)")
        deadline = time.monotonic() + 30
        while "after-6-check" not in (text := teacher.evaluate(PLAYER_TEXT)):
            assert time.monotonic() < deadline, f"the player does not show the recorded session: {text!r}"
            time.sleep(0.2)
        assert "echo replay-$((6*7))" in text and "replay-42" in text
        expect(teacher.locator("#player .ap-marker")).to_have_count(1)  # the player's, on its progress bar
        teacher.evaluate("window.labkitReplay.pause()")
        teacher.hover("#player .ap-term")  # the control bar, with the marker on its progress bar, shows on hover
        shot(teacher, "replay.png", full_page=True)
    finally:
        student_browser.close()
        teacher_browser.close()
