"""Web benchmarks (issue 5). Writes the "## Web" section of docs/benchmarks.md.

Run: .venv/bin/python bench/web.py                     (both, about two minutes; builds tiny once if not cached)
     .venv/bin/python bench/web.py dashboard
     .venv/bin/python bench/web.py --small             (a trial: 5 s of load, 10 keystrokes; writes nothing)

Needs `wrk` (Debian package `wrk`) and Debian's `chromium` (the console is measured in it through Playwright; no
browser is downloaded). A private installation in a short folder under /tmp, removed at the end: one course of 30
students on the real `intro-shell` lab, provisioned (30 machines in the database), one student with a password.
The web app is the real `labkit serve` (gunicorn, its default workers and 32 threads each) on a free loopback
port, as a subprocess stopped by its pid at the end; guests are stopped by their pids through the service.

- dashboard: that student's `/my/` with their session cookie, under 50 concurrent keep-alive connections
  (`wrk -t2 -c50 -d30s --latency`, after a 5 s warm-up that is not counted), their machine running. wrk prints p50,
  p75, p90 and p99; p95 comes from a small Lua `done()` hook (`latency:percentile(95)`). Every answer must be 200
  (the Lua hook counts the others).
- console: keystroke to echo in the browser. The student's machine page in headless Chromium, the console
  connected to the BusyBox shell; 50 single key presses (Playwright), each measured in the page from the keydown
  event's timestamp to the first xterm.js render (`onRender`) that shows the cursor moved on by the echoed
  character. Nothing is added to the app for this: the page script reads the terminal that console.js keeps in
  `window.labkitConsole.views`.

Every figure is measured here, in this run, on this machine.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.installation import short_dir
from bench.report import REPO, REPORT, Row, write_report
from bench.served import CHROMIUM, CHROMIUM_ARGS, percentile, serve, stop
from labkit.cli.serve import default_workers
from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.accounts import Accounts
from labkit.services.courses import Courses
from labkit.services.db import Database

SECTION = "## Web"
MEASUREMENTS = ("dashboard", "console")
COURSE = "bweb"
STUDENT = "s001"
CONNECTIONS = 50
TARGET_P95_MS = 100.0

#: wrk's hooks: count answers that are not 200 (a lost session would answer 302 and look fast), print the figures.
#: Each wrk thread runs the script in a Lua state of its own, so `done` (in the main state) adds up the threads'
#: counts through the thread objects kept by `setup`.
WRK_SCRIPT = """\
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) bad = 0 end
response = function(status, headers, body)
  if status ~= 200 then bad = bad + 1 end
end
done = function(summary, latency, requests)
  local e, total = summary.errors, 0
  for _, thread in ipairs(threads) do total = total + thread:get("bad") end
  io.write(string.format("LKSTATS %d %d %d %d %d %d %d %d\\n", latency:percentile(50), latency:percentile(95),
    latency:percentile(99), summary.requests, summary.duration, e.connect + e.read + e.write, e.timeout, total))
end
"""

#: in the page: time from a key's keydown to the xterm render that shows its echo (the cursor moved on)
KEY_PROBE = """() => {
  const term = window.labkitConsole.views[0].term;
  const probe = window.lkProbe = { samples: [], waiting: null };
  document.addEventListener("keydown", (event) => {
    const buffer = term.buffer.active;
    probe.waiting = { t0: event.timeStamp, x: buffer.cursorX, y: buffer.baseY + buffer.cursorY };
  }, true);
  term.onRender(() => {
    const w = probe.waiting, buffer = term.buffer.active;
    if (w && (buffer.cursorX !== w.x || buffer.baseY + buffer.cursorY !== w.y)) {
      probe.samples.push(performance.now() - w.t0);
      probe.waiting = null;
    }
  });
}"""


class Bench:
    def __init__(self, small: bool) -> None:
        self.small = small
        self.root = short_dir("lkw")
        self.settings = Settings.from_env({
            "LABKIT_HOME": str(self.root / "home"), "LABKIT_RUN": str(self.root / "run"),
            "LABKIT_CACHE": os.environ.get("LABKIT_CACHE") or str(Path.home() / ".cache/labkit"),
            "LABKIT_RECIPES": str(REPO / "base_images"),
        })
        self.settings.ensure()
        self.db = Database(self.settings)
        self.courses = Courses(self.settings, self.db, actor="bench")
        self.password = secrets.token_urlsafe(12)
        self.server: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.cookie = ""
        self.machine = ""
        self.rows: list[Row] = []

    def close(self) -> None:
        stop(self.server)
        for view in self.courses.machines.status():
            if view.state != "stopped":
                self.courses.machines.kill(view.name)
        self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def setup(self) -> None:
        """The course of 30 provisioned students, one of them with a password and a running machine; the server;
        that student's session cookie (all before any clock)."""
        store = ImageStore(self.settings)
        if not store.list("tiny"):
            store.build(find_recipe(self.settings.recipes, "tiny"))
        self.courses.create(COURSE, [REPO / "labs" / "intro-shell"])
        roster = self.root / "roster.csv"
        roster.write_text("id,name,email\n" + "".join(f"s{i:03d},Student {i},s{i:03d}@example.org\n"
                                                      for i in range(1, 31)))
        self.courses.import_roster(COURSE, roster)
        self.courses.provision(COURSE)
        accounts = Accounts(self.settings, self.db, actor="bench")
        accounts.use_link(accounts.create_links(COURSE, [STUDENT])[0].token, self.password)
        views = self.courses.start(COURSE, student=STUDENT)
        self.machine = str(views[0]["name"])
        if views[0]["state"] != "running":
            raise RuntimeError(f"{self.machine} did not start: {views[0]['state']}")
        self.server, self.base = serve(self.settings, self.root / "serve.log")
        self.cookie = self.log_in()

    def log_in(self) -> str:
        """The student's session cookie, got as a browser gets it (the login form with its CSRF token)."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(f"{self.base}/login").read().decode()
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(
            r'<meta name="csrf-token" content="([^"]+)"', page)
        if token is None:
            raise RuntimeError("no CSRF token on /login")
        form = urllib.parse.urlencode({"username": STUDENT, "password": self.password, "csrf_token": token.group(1)})
        opener.open(f"{self.base}/login", data=form.encode()).read()
        cookie = "; ".join(f"{c.name}={c.value}" for c in jar)
        request = urllib.request.Request(f"{self.base}/my/", headers={"Cookie": cookie})
        with urllib.request.urlopen(request) as answer:
            body = answer.read().decode()
            if answer.url != f"{self.base}/my/" or f'id="machine-{self.machine}"' not in body:
                raise RuntimeError("the session cookie does not open the student's dashboard")
        return cookie

    # ---- the benchmarks --------------------------------------------------------------------------------------
    def wrk(self, seconds: int, path: str = "/my/", cookie: bool = True) -> dict[str, float]:
        script = self.root / "stats.lua"
        script.write_text(WRK_SCRIPT)
        headers = ["-H", f"Cookie: {self.cookie}"] if cookie else []
        result = subprocess.run(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script),
                                 *headers, f"{self.base}{path}"],
                                capture_output=True, text=True, timeout=seconds + 60, check=True)
        line = next(line for line in result.stdout.splitlines() if line.startswith("LKSTATS "))
        p50, p95, p99, requests, duration, errors, timeouts, bad = (int(v) for v in line.split()[1:])
        if errors or bad:
            raise RuntimeError(f"wrk saw {errors} socket errors and {bad} answers other than 200:\n{result.stdout}")
        return {"p50": p50 / 1000, "p95": p95 / 1000, "p99": p99 / 1000, "rps": requests / (duration / 1e6),
                "requests": requests, "timeouts": timeouts}

    def dashboard(self) -> None:
        self.wrk(2 if self.small else 5)  # warm-up: templates compiled, connections opened; not counted
        seconds = 5 if self.small else 30
        s = self.wrk(seconds)
        self.rows.append((
            f"student dashboard `/my/` under {CONNECTIONS} concurrent clients on loopback (`wrk -t2 -c{CONNECTIONS} "
            f"-d{seconds}s --latency`, one student's session cookie; 30 provisioned machines in the database, "
            f"theirs running; `labkit serve` defaults here: {default_workers()} workers (gthread, sharing the "
            f"connections), 32 threads and 2 turns each)",
            f"p95 ≤ {TARGET_P95_MS:.0f} ms",
            _figures(s), "pass" if s["p95"] <= TARGET_P95_MS else "FAIL"))
        floor = self.wrk(seconds // 2, "/login", cookie=False)
        self.rows.append((
            "baseline for the row above: the login page `/login` as a visitor without a session gets it (a form with "
            "its CSRF token, no database read) under the same load, same server", "report", _figures(floor),
            "measured"))
    def console(self) -> None:
        from playwright.sync_api import expect, sync_playwright

        keys = 10 if self.small else 50
        with sync_playwright() as driver:
            profile = self.root / "chromium-profile"
            context = driver.chromium.launch_persistent_context(
                str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900})
            try:
                page = context.new_page()
                name, value = self.cookie.split(";")[0].split("=", 1)
                context.add_cookies([{"name": name, "value": value, "url": self.base}])
                page.goto(f"{self.base}/my/machines/{self.machine}")
                expect(page.locator(".lk-console")).to_have_attribute("data-state", "connected", timeout=30_000)
                page.locator(".lk-console-screen").click()
                page.keyboard.press("Enter")  # a fresh prompt
                page.wait_for_timeout(1000)
                page.evaluate(KEY_PROBE)
                samples = []
                for _ in range(keys + 5):  # the first five warm the path up and are not counted
                    before = page.evaluate("() => window.lkProbe.samples.length")
                    page.keyboard.press("x")
                    page.wait_for_function(f"() => window.lkProbe.samples.length > {before}", timeout=10_000)
                    samples.append(page.evaluate("() => window.lkProbe.samples.at(-1)"))
                    page.wait_for_timeout(50)  # one key at a time, as a person types
                page.keyboard.press("Control+u")  # leave the shell's line empty
            finally:
                context.close()
        samples = samples[5:]
        self.rows.append((
            f"console round trip: keystroke to echo in the browser ({keys} single key presses in headless Chromium "
            "into the BusyBox shell of a running `tiny` guest; from the keydown event to the xterm.js render "
            "showing the echo)",
            "report the median",
            f"{statistics.median(samples):.1f} ms median of {keys} (p95 {percentile(samples, 95):.1f} ms, "
            f"min {min(samples):.1f}, max {max(samples):.1f})",
            "reported"))


def add_notes(notes: str) -> None:
    """Put ``notes`` under the section's table (write_report writes the heading, the machine line and the table)."""
    text = REPORT.read_text()
    head, _, rest = text.partition(SECTION)
    end = rest.find("\n## ")
    body, tail = (rest, "") if end < 0 else (rest[:end], rest[end:])
    REPORT.write_text(head + SECTION + body.rstrip() + "\n\n" + notes.strip() + "\n" + (tail or ""))


NOTES = """\
How: `.venv/bin/python bench/web.py` (needs `apt-get install wrk chromium`). It sets up a private installation with
one course of 30 students on `intro-shell`, all provisioned, starts one student's machine, serves the app with
`labkit serve` on a free loopback port, logs that student in through the login form and gives wrk their session
cookie (`-H "Cookie: labkit_session=..."`). p95 is printed by a Lua `done(summary, latency, requests)` hook
(`latency:percentile(95)`); the script's `response()` hook counts answers other than 200 in each wrk thread, `done`
adds them up, and the run fails if there is any. wrk and the server share the host's cores. The console figure is
measured inside the page (keydown event timestamp to xterm.js `onRender` with the cursor moved), so Playwright's
own delay is not in it.

What brought the dashboard from p95 1093 ms (the first run, 92 requests/s) and then 254 ms (473 requests/s) to
its target, all on 2026-11-26: reading transactions that begin DEFERRED, one prebuilt statement for the labs and
machines, no write unless a machine's record changed, no cookie re-signing, several workers; then plain rows
instead of ORM objects for the user, their jobs and the dashboard's statement, no snapshot list or disk size the
page does not show, one read of `/proc/<pid>/stat` per process, `gc.freeze()` in each worker once the app is
loaded, and two changes to how the app is served (docs/web.md, "Serving"). Pages take turns
in each worker, oldest first, instead of 32 threads taking the interpreter from each other at random, which turned
an even load into a long tail. Workers share the connections: wrk's 50 connections (like a class opening the page at
once) arrive in a burst, and plain gthread workers split such a burst 32 to 8 or 34 to 6 in the test
`tests/web/test_serve.py::test_two_workers_take_equal_shares_of_a_burst_of_kept_alive_connections`, which made
the busier worker's pages take several times as long as the other's. wrk's clients are closed-loop (each sends its
next request when the last is answered), so the mean latency is 50 / throughput (Little's law): the p95 can only
be as low as the throughput is high and the answers even."""


MISSED = """\
The dashboard missed its target in this run. Compare its throughput with the login page's (the floor of this stack
here: Flask, Jinja2, flask-wtf, gunicorn): with 50 closed-loop clients the mean latency is 50 / throughput, so a
missed p95 with a throughput like the last passing run's means the answers were uneven (look at the access log's
`pid=` counts for a lopsided split between the workers), and a lower throughput means each page cost more."""


def _figures(s: dict[str, float]) -> str:
    return (f"p50 {s['p50']:.1f} ms, p95 {s['p95']:.1f} ms, p99 {s['p99']:.1f} ms; {s['rps']:.0f} requests/s "
            f"({s['requests']:.0f} answers, all 200; {s['timeouts']:.0f} requests over wrk's 2 s timeout, not in "
            "the percentiles)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/web.py", description=__doc__.splitlines()[0])
    parser.add_argument("measurements", nargs="*", metavar="dashboard|console",
                        help="which to run (default: both, in this order)")
    parser.add_argument("--small", action="store_true", help="a short trial; prints the rows, writes no report")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.measurements) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"unknown measurement {', '.join(unknown)}; choose from {', '.join(MEASUREMENTS)}")
    for tool in ("wrk", CHROMIUM):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is missing: apt-get install wrk chromium")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a SIGTERM still stops the server and the guests
    bench = Bench(small=args.small)
    chosen: dict[str, Callable[[], None]] = {name: getattr(bench, name) for name in MEASUREMENTS}
    try:
        print("setting up the course and the server ...", file=sys.stderr)
        bench.setup()
        for name in [m for m in MEASUREMENTS if m in (args.measurements or MEASUREMENTS)]:
            print(f"running {name} ...", file=sys.stderr)
            chosen[name]()
            print(f"  {json.dumps(bench.rows[-1], ensure_ascii=False)}", file=sys.stderr)
    finally:
        bench.close()
    if not args.small:
        write_report(SECTION, "bench/web.py", bench.rows)
        missed = any(row[3] == "FAIL" for row in bench.rows)
        add_notes(NOTES + ("\n\n" + MISSED if missed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
