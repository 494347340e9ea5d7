"""An exam in a real Chromium against a real ``labkit serve`` (its sweeper every second) with a real tiny guest, from
start to released results (issue 14, sections 3 and 4).

The instructor turns exam mode on with the CLI; the student's self-check is refused; their guest, started in the
browser, has no way out of its namespace and cannot reach the host's loopback (not even the port its lab allows
outside exams: the web app's). The instructor then closes the window a few seconds ahead: the workspace's countdown
reaches zero, the server freezes and submits the machine (graded) and stops it, the page says so, and the student can
no longer start it. Results stay hidden until ``labkit course release``, then the countdown shows the result.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LABS
from playwright.sync_api import Playwright, expect

from labkit.runtime.process import ProcessRecord
from labkit.runtime.rundir import RunDir

from .test_browser import (
    BOOT,
    JOB,
    Site,
    console_run,
    labkit,
    log_in,
    open_browser,
    playwright,  # noqa: F401  (the shared fixture)
    served_demo,
    shot,
    wait_running_with_console,
)

pytestmark = [pytest.mark.browser, pytest.mark.guest]

COURSE, LAB = "demo", "intro-shell"


@pytest.fixture(scope="module")
def exam_site() -> Iterator[Site]:
    """The demo course on a copy of intro-shell whose guests may reach the web app's port (outside exams)."""

    def lab_reaching(home: Path, port: int) -> list[str]:
        lab = home / LAB
        shutil.copytree(LABS / LAB, lab)
        with (lab / "lab.toml").open("a") as toml:
            toml.write(f"\n[reach]\nhost_ports = [{port}]\n")
        return ["--lab", str(lab)]

    with served_demo("lke", env_extra={"LABKIT_SWEEP_SECONDS": "1"}, prepare=lab_reaching) as served:
        yield served


def namespace_links(pid: int) -> tuple[set[str], bool]:
    """The interfaces of the network namespace of ``pid`` and whether it has a default route (read from /proc)."""
    interfaces = {line.split(":")[0].strip() for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]}
    routes = Path(f"/proc/{pid}/net/route").read_text().splitlines()[1:]
    return interfaces, any(line.split()[1] == "00000000" for line in routes)


def failed_job(site: Site, kind: str) -> str:
    """The error of the newest job of ``kind``, once it has failed (the workspace shows no line for a whole-lab
    self-check in an exam)."""
    deadline = time.monotonic() + JOB / 1000
    while True:
        with sqlite3.connect(site.settings.home / "labkit.db") as db:
            row = db.execute("select state, error from jobs where kind = ? order by id desc limit 1",
                             (kind,)).fetchone()
        if row is not None and row[0] == "failed":
            return str(row[1])
        assert time.monotonic() < deadline and (row is None or row[0] != "done"), row
        time.sleep(0.2)


def exam_row(site: Site) -> dict[str, object]:
    rows = json.loads(labkit(site.env, "course", "exam-status", COURSE, LAB, "--json"))
    return next(row for row in rows if row["student"] == "student1")


def test_an_exam_from_start_to_released_results(exam_site: Site, playwright: Playwright,  # noqa: F811
                                                tmp_path: Path) -> None:
    site = exam_site
    port = int(site.base.rsplit(":", 1)[1])
    assert "exam on, results held back" in labkit(site.env, "course", "exam", COURSE, LAB, "on")
    browser = open_browser(playwright, tmp_path / "student-profile")
    try:
        student = browser.new_page()
        log_in(student, site, "student1")
        workspace = f"{site.base}/my/courses/{COURSE}/labs/{LAB}"
        student.goto(workspace)
        countdown = student.locator("#lk-countdown")
        expect(countdown).to_have_attribute("data-state", "unlimited", timeout=JOB)
        expect(countdown).to_contain_text("no self-check")
        # the workspace offers no check, and the server refuses one asked for all the same (the page's own token)
        expect(student.locator("button[data-action=self-check]")).to_have_count(0)
        assert student.evaluate("""async (url) => {
            const token = document.querySelector("meta[name=csrf-token]").content;
            return (await fetch(url, {method: "POST", body: new URLSearchParams({csrf_token: token})})).ok;
        }""", f"{workspace}/self-check")
        assert "is an exam: there is no self-check" in failed_job(site, "self-check")

        # the guest: started in the browser, cut off from everything but its own forwards
        machine = student.locator(".ws-machine").first.get_attribute("data-machine")
        assert machine
        student.goto(f"{site.base}/my/machines/{machine}")
        student.click("button[data-action=start]")
        wait_running_with_console(student, machine)
        linux = ProcessRecord.read(RunDir(site.settings.run_dir / machine).machine_pid)
        assert linux is not None and namespace_links(linux.pid) == ({"lo"}, False)
        answer = console_run(student, f"printf 'GET /login HTTP/1.0\\r\\n\\r\\n' | timeout 8 nc 10.0.2.2 {port} 2>&1"
                                      " | head -c 300; echo", timeout=30)
        assert "HTTP/" not in answer and "refused" in answer.lower(), answer
        assert console_run(student, "echo my-answer > /root/exam.txt && sync && cat /root/exam.txt").strip() == \
            "my-answer"
        assert exam_row(site)["in"] is True

        # the window closes in a few seconds: the countdown reaches zero and the machine is frozen and submitted
        closes = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)).isoformat(timespec="seconds")
        labkit(site.env, "course", "time", COURSE, LAB, "--closes", closes)
        student.goto(workspace)
        expect(countdown).to_have_attribute("data-state", "warning", timeout=JOB)
        shot(student, "exam-countdown.png")
        expect(countdown).to_have_attribute("data-state", "closed", timeout=BOOT)
        expect(countdown).to_contain_text("frozen and submitted")
        expect(countdown).not_to_contain_text("Your result")
        row = exam_row(site)
        assert (row["closed"], row["in"]) == ("window", False) and row["submitted_at"], row
        status = json.loads(labkit(site.env, "course", "status", COURSE, "--student", "student1", "--json"))
        assert [r["state"] for r in status] == ["stopped"]

        # the student can no longer start it
        student.goto(f"{site.base}/my/machines/{machine}")
        student.click("button[data-action=start]")
        expect(student.locator(".lk-job-error").first).to_contain_text("has ended", timeout=JOB)

        # released: the countdown shows the result
        labkit(site.env, "course", "release", COURSE, LAB)
        student.goto(workspace)
        expect(countdown).to_contain_text("Your result:", timeout=JOB)
    finally:
        browser.close()
