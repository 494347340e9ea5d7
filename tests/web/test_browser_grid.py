"""The live class grid in a real headless Chromium against a real ``labkit serve`` (gunicorn threads), with the demo
course and real tiny guests: the instructor's page follows a machine started and stopped from the command line, and
a self-check's result, through the server-sent event stream, without a reload; it lists students in natural order,
filters by name and by state, and gives one student extra time from a cell.

With ``LABKIT_SCREENSHOTS=1`` it saves docs/screenshots/grid.png.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import Page, Playwright, expect

from .test_browser import BOOT, JOB, Site, labkit, log_in, open_browser, playwright, shot, site  # noqa: F401

MORE = [f"student{n}" for n in range(3, 12)]  # with student1 and student2: student1 ... student11


def cell(page: Page, machine: str) -> object:
    return page.locator(f'#grid td[data-machine="{machine}"] .state')


def shown_students(page: Page) -> list[str]:
    return page.eval_on_selector_all("#grid tbody tr:not([hidden])", "rows => rows.map(r => r.dataset.student)")


def test_the_grid_follows_the_class_live(site: Site, playwright: Playwright, tmp_path: Path) -> None:  # noqa: F811
    roster = tmp_path / "roster.csv"
    roster.write_text("id,name,email\n" + "".join(f"{s},Demo {s.title()},\n" for s in ["student1", "student2", *MORE]))
    labkit(site.env, "course", "roster", "demo", str(roster))
    labkit(site.env, "course", "provision", "demo")
    status = json.loads(labkit(site.env, "course", "status", "demo", "--json"))
    machine = next(str(row["name"]) for row in status if row["student"] == "student1")

    browser = open_browser(playwright, tmp_path / "teacher-profile")
    try:
        teacher = browser.new_page()
        log_in(teacher, site, "teacher")
        teacher.goto(f"{site.base}/teach/courses/demo/grid")
        expect(teacher.locator("#grid-live")).to_have_attribute("data-state", "live", timeout=JOB)
        assert shown_students(teacher) == [f"student{n}" for n in range(1, 12)]  # natural order: 2 before 10
        expect(cell(teacher, machine)).to_have_text("stopped")
        teacher.evaluate("window.notReloaded = true")

        # a machine started from the command line: its cell changes on the open page, which is not reloaded
        labkit(site.env, "vm", "start", machine)
        expect(cell(teacher, machine)).to_have_text("running", timeout=BOOT)
        checks = teacher.locator('#grid td.checks[data-student="student1"]')
        expect(checks).to_have_text("—")
        labkit(site.env, "check", "demo", "student1")  # the student's own self-check, from the command line
        expect(checks).to_have_text(re.compile(r"^\d+/\d+$"), timeout=JOB)
        assert teacher.evaluate("window.notReloaded") is True

        # search by name or id, and by state
        teacher.fill("#grid-search", "student1")
        assert shown_students(teacher) == ["student1", "student10", "student11"]
        teacher.fill("#grid-search", "")
        teacher.select_option("#grid-state", "running")
        assert shown_students(teacher) == ["student1"]
        expect(teacher.locator("#grid-shown")).to_have_text("1")
        teacher.select_option("#grid-state", "")
        shot(teacher, "grid.png", full_page=True)

        labkit(site.env, "vm", "stop", machine)
        expect(cell(teacher, machine)).to_have_text("stopped", timeout=JOB)
        assert teacher.evaluate("window.notReloaded") is True

        # from a cell: the student's grades, and extra time (recorded in the audit log)
        teacher.click('#grid tr[data-student="student2"] a.grades-link')
        expect(teacher.locator("#grades-only")).to_contain_text("student2")
        teacher.go_back()
        teacher.click('#grid td.time[data-student="student2"] button.extend-button')
        expect(teacher.locator("#extend-form select[name=student]")).to_have_value("student2")
        teacher.fill("#extend-form input[name=minutes]", "25")
        teacher.click("button[data-action=extend]")
        expect(teacher.locator(".flash-success")).to_contain_text("student2 has 25 more minutes on intro-shell")
        expect(teacher.locator('#grid td.time[data-student="student2"] .extra')).to_have_text("+25 min")
        teacher.goto(f"{site.base}/teach/courses/demo/audit")
        expect(teacher.locator("body")).to_contain_text("student student2, lab intro-shell: +25 min")
    finally:
        browser.close()
