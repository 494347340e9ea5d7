"""The instructor's live class grid at 200 students (issue 14). Writes the "## Class grid" section of
docs/benchmarks.md.

Run: .venv/bin/python bench/grid.py            (about a minute; builds tiny once if not cached)
     .venv/bin/python bench/grid.py --small    (a trial with 20 students; writes nothing)

A private installation in a short folder under /tmp, removed at the end: one course of 200 students (s1 ... s200) on
the real `two-hosts` lab, provisioned (400 machines in the database; none is booted: the grid shows the states
recorded in the database, and this measures the page and its stream, not the guests). Half the students have begun
(an `Attempt` an hour ago) and have a self-check of 3 checks, so every row shows time and checks. The web app is the
real `labkit serve` (gunicorn, its default workers and threads) on a free loopback port, in a subprocess stopped by
its pid at the end; the browser is Debian's Chromium through Playwright, logged in as the course's instructor.

- first paint: the grid page opened 5 times (a new navigation each time): the server's answer (responseStart -
  requestStart), Chromium's first contentful paint, the page's load event, and the moment its event stream is live.
- pushed changes: while the page is open, machine states are changed in the database the way a start or stop
  writes them (one transaction each, each cell once, at a steady rate), then a burst of 200 at once; a
  MutationObserver in the page stamps each cell's change. Latency = the page's stamp - the commit's (same clock).
- server cost: one reading of the grid (`GridReader.read`, what the stream does every second) in this process;
  then 20 grids kept open at once (event streams read by threads of this script) while nothing changes, and the CPU
  time the server's worker processes used meanwhile (/proc).

Every figure is measured here, in this run, on this machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from sqlalchemy import select

from bench.installation import Installation
from bench.report import REPO, Row, load_row, show_rows
from bench.served import CHROMIUM, CHROMIUM_ARGS, percentile, serve, stop
from labkit.services.accounts import Accounts
from labkit.services.class_grid import GridReader
from labkit.services.models import Attempt, Course, CourseLab, GradeResult, GradeRun, Machine, Student

SECTION = "## Class grid"
COURSE = "bgrid"

#: stamps every change of a cell's state (the stream's script sets td.dataset.state) with the wall clock in ms
OBSERVE = """() => {
  window.gridLog = [];
  new MutationObserver((records) => {
    const t = performance.timeOrigin + performance.now();
    for (const r of records) window.gridLog.push([r.target.dataset.machine, r.target.dataset.state, t]);
  }).observe(document.querySelector("#grid tbody"), {subtree: true, attributes: true, attributeFilter: ["data-state"]});
}"""

#: the page's timings, in ms from the navigation's start
TIMINGS = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const paint = performance.getEntriesByName("first-contentful-paint")[0];
  return {server: nav.responseStart - nav.requestStart, paint: paint ? paint.startTime : null,
          load: nav.loadEventEnd, rows: document.querySelectorAll("#grid tbody tr").length};
}"""


class GridBench:
    def __init__(self, students: int) -> None:
        self.students = students
        self.lk = Installation("lkg")
        self.password = secrets.token_urlsafe(12)
        self.server: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.rows: list[Row] = []

    def close(self) -> None:
        stop(self.server)
        self.lk.close()

    def setup(self) -> None:
        """The course, its rows of time and checks, the instructor, the server (all before any clock)."""
        lk = self.lk
        lk.ensure_tiny()
        lk.courses.create(COURSE, [REPO / "labs" / "two-hosts"])
        roster = lk.root / "roster.csv"
        roster.write_text("id,name,email\n" + "".join(f"s{i},Student {i},\n" for i in range(1, self.students + 1)))
        lk.courses.import_roster(COURSE, roster)
        lk.courses.provision(COURSE)
        accounts = Accounts(lk.settings, lk.db, actor="bench")
        accounts.create_user("teacher", "instructor", self.password)
        accounts.set_course_owner(COURSE, "teacher")
        began = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        with lk.db.transaction() as session:  # what students' starts and self-checks would have left
            course = session.scalar(select(Course).where(Course.name == COURSE))
            lab = session.scalar(select(CourseLab).where(CourseLab.course_id == course.id))
            lab.allowance_minutes = 90
            run = GradeRun(course_id=course.id, kind="self-check", actor="bench")
            session.add(run)
            session.flush()
            for student in session.scalars(select(Student).where(Student.course_id == course.id)):
                if int(student.sid[1:]) % 2:
                    session.add(Attempt(student_id=student.id, course_lab_id=lab.id, began_at=began))
                    for i in range(3):
                        session.add(GradeResult(run_id=run.id, student_id=student.id, course_lab_id=lab.id,
                                                check_id=f"c{i}", passed=i < 2))
        self.server, self.base = serve(lk.settings, lk.root / "serve.log")

    def machines(self) -> list[str]:
        with self.lk.db.read() as session:
            return list(session.scalars(select(Machine.name).order_by(Machine.id)))

    def set_state(self, name: str, state: str) -> float:
        """Record ``state`` for machine ``name`` (as a start or stop does); the commit's wall clock in ms."""
        with self.lk.db.transaction() as session:
            session.scalar(select(Machine).where(Machine.name == name)).state = state
        return time.time() * 1000

    def server_cost(self) -> None:
        reader = GridReader(self.lk.db)
        times = []
        for _ in range(30):
            began = time.perf_counter()
            grid = reader.read(COURSE)
            times.append((time.perf_counter() - began) * 1000)
        self.rows.append((f"one reading of the grid ({len(grid.students)} students, {len(grid.cells)} machines: "
                          "what an open grid's stream does every second)", "report",
                          f"{statistics.median(times):.1f} ms median of 30 (max {max(times):.1f} ms)", "reported"))

    def browser(self) -> None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{self.base}/login")
                page.fill("#username", "teacher")
                page.fill("#password", self.password)
                page.click("button[type=submit]")
                page.wait_for_url(f"{self.base}/teach/")
                self.first_paint(page)
                self.pushed(page)
                cookie = "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())
            finally:
                browser.close()
        self.open_grids(cookie, 5 if self.students < 200 else 20)

    def server_cpu(self) -> float:
        """CPU seconds used so far by the server's worker processes (children of the arbiter)."""
        assert self.server is not None
        total = 0.0
        for child in Path(f"/proc/{self.server.pid}/task/{self.server.pid}/children").read_text().split():
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def open_grids(self, cookie: str, count: int) -> None:
        """``count`` grids open at once (event streams read by threads here): the server's CPU for them."""
        url = f"{self.base}/teach/courses/{COURSE}/grid/events"
        stop = threading.Event()
        opened: list[int] = []

        def listen() -> None:
            request = urllib.request.Request(url, headers={"Cookie": cookie, "Accept": "text/event-stream"})
            with urllib.request.urlopen(request, timeout=30) as stream:
                opened.append(1)
                while not stop.is_set() and stream.readline():
                    pass

        readers = [threading.Thread(target=listen, daemon=True) for _ in range(count)]
        for reader in readers:
            reader.start()
        time.sleep(3)  # every stream has sent its whole grid
        before, began = self.server_cpu(), time.monotonic()
        time.sleep(20)
        used = (self.server_cpu() - before) / (time.monotonic() - began)
        stop.set()
        self.rows.append((f"{count} grids open at once, nothing changing (each an event stream reading the grid "
                          "every second)", "report",
                          f"{len(opened)} streams open; the server's workers used {used * 100:.0f}% of a core in "
                          f"all ({used * 100 / count:.1f}% per open grid, measured over 20 s), one thread each",
                          "reported"))

    def first_paint(self, page: object) -> None:
        found = []
        for _ in range(5):
            began = time.time() * 1000
            page.goto(f"{self.base}/teach/courses/{COURSE}/grid")  # type: ignore[attr-defined]
            page.wait_for_selector('#grid-live[data-state="live"]')  # type: ignore[attr-defined]
            live = time.time() * 1000 - began
            found.append({**page.evaluate(TIMINGS), "live": live})  # type: ignore[attr-defined]
        rows = found[-1]["rows"]
        if rows != self.students:
            raise RuntimeError(f"the grid shows {rows} rows, not {self.students}")
        med = {key: statistics.median(f[key] for f in found) for key in ("server", "paint", "load", "live")}
        self.rows.append((f"time to first paint of the grid page ({self.students} students × 2 machines, "
                          "headless Chromium on loopback)", "report",
                          f"first contentful paint {med['paint']:.0f} ms median of 5 (server's answer "
                          f"{med['server']:.0f} ms, load event {med['load']:.0f} ms, stream live "
                          f"{med['live']:.0f} ms after the navigation began)", "reported"))

    def pushed(self, page: object) -> None:
        page.evaluate(OBSERVE)  # type: ignore[attr-defined]
        names = self.machines()
        steady, burst = names[: len(names) // 2], names[len(names) // 2:]
        rate = 20.0
        commits: list[tuple[str, str, float]] = []
        for i, name in enumerate(steady):
            wake = time.monotonic() + 1 / rate
            commits.append((name, "running", self.set_state(name, "running")))
            time.sleep(max(0.0, wake - time.monotonic()))
            if i == 0:
                began = time.monotonic()
        spread = time.monotonic() - began
        burst_at = time.time() * 1000

        def flip_all() -> None:
            with self.lk.db.transaction() as session:
                for machine in session.scalars(select(Machine).where(Machine.name.in_(burst))):
                    machine.state = "running"

        flipper = threading.Thread(target=flip_all)
        flipper.start()
        flipper.join()
        burst_done = time.time() * 1000
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            log = page.evaluate("window.gridLog")  # type: ignore[attr-defined]
            if len({(n, s) for n, s, _ in log}) >= len(names):
                break
            time.sleep(0.2)
        seen: dict[tuple[str, str], float] = {}
        for name, state, at in log:
            seen.setdefault((name, state), at)
        latencies = [seen[(n, s)] - t for n, s, t in commits if (n, s) in seen]
        missing = len(commits) - len(latencies)
        burst_seen = [seen[(n, "running")] for n in burst if (n, "running") in seen]
        self.rows.append((f"pushed changes: {len(commits)} machine states changed one by one at "
                          f"{len(commits) / spread:.0f}/s while the grid is open (server-sent events; the stream "
                          "reads the grid every second)", "report",
                          f"{len(latencies)} of {len(commits)} shown without a reload ({missing} missing); commit "
                          f"to cell changed in the page: median {statistics.median(latencies):.0f} ms, p95 "
                          f"{percentile(latencies, 95):.0f} ms, max {max(latencies):.0f} ms", "reported"))
        self.rows.append((f"pushed changes: a burst of {len(burst)} states changed in one transaction (a class "
                          "started at once)", "report",
                          f"{len(burst_seen)} of {len(burst)} shown; the last {max(burst_seen) - burst_done:.0f} ms "
                          f"after the commit (the commit took {burst_done - burst_at:.0f} ms)", "reported"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="20 students; writes nothing")
    args = parser.parse_args()
    bench = GridBench(20 if args.small else 200)
    try:
        print("setting up ...", file=sys.stderr)
        bench.setup()
        bench.rows.append(load_row("when the run began"))
        bench.server_cost()
        bench.browser()
        bench.rows.append(load_row())
    finally:
        bench.close()
    notes = ("How: `.venv/bin/python bench/grid.py` (needs Debian's `chromium`). The machines are provisioned but "
             "never booted: their states are written to the database as a start or stop writes them, which is what "
             "the grid's stream reads. Each open grid holds one server thread (gthread) while its page is open, and "
             "its stream ends after 5 minutes (the browser reconnects, sending the version it has).")
    show_rows(SECTION, "bench/grid.py", bench.rows, write=not args.small, notes=notes)


if __name__ == "__main__":
    main()
