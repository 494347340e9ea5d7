"""One student's course on a real guest, for the web tests that drive the student portal's machine actions through
the routes and the app's own JobRunner (test_student_guests.py on UML, test_running_state.py on QEMU): a short home
with the tiny image, course ``c1`` with intro-shell (or a copy of it with an edited lab.toml) and alice on its roster,
her machine provisioned, and helpers to act as alice and wait for the jobs her clicks queue.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from flask import Flask
from flask.testing import FlaskClient
from web_app import app_home

from labkit.services.accounts import Accounts
from labkit.services.courses import Courses
from web.state import WebState

from .conftest import LABS, session_client


@dataclass
class Site:
    app: Flask
    state: WebState
    machine: str  # alice's first machine (her intro-shell box)
    machines: dict[str, str]  # alice's lab machine -> labkit machine name


@contextmanager
def student_site(prefix: str, secret_key: str, edit_lab_toml: Callable[[str], str] | None = None,
                 lab_name: str = "intro-shell") -> Iterator[Site]:
    """The app over a new installation whose course ``c1`` has alice's machines of ``lab_name`` provisioned (the
    lab's lab.toml passed through ``edit_lab_toml`` first, on a copy, if given). Afterwards whatever a failed test
    left running is stopped by PID (the services' kill) and the home removed."""
    with app_home(prefix, secret_key) as made:
        home, settings, app, state = made.home, made.settings, made.app, made.state
        lab = LABS / lab_name
        if edit_lab_toml is not None:
            lab = shutil.copytree(lab, home / "lab")
            (lab / "lab.toml").write_text(edit_lab_toml((lab / "lab.toml").read_text()))
        courses = Courses(settings, state.db, actor="teach")
        courses.create("c1", [lab])
        roster = home / "roster.csv"
        roster.write_text("id,name,email\nalice,Alice,a@example.org\n")
        courses.import_roster("c1", roster)
        courses.provision("c1")
        Accounts(settings, state.db, "teach").create_links("c1")
        rows = courses.status("c1")
        machines = {str(row["machine"]): str(row["name"]) for row in rows}
        yield Site(app, state, str(rows[0]["name"]), machines)


def alice_client(site: Site) -> FlaskClient:
    """A client logged in as alice."""
    return session_client(site.app, "alice")


def post(client: FlaskClient, path: str, data: dict[str, str] | None = None) -> object:
    """POST a portal form with the CSRF token of the client's session (read from /my/, as a browser would)."""
    page = client.get("/my/").get_data(as_text=True)
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert token
    return client.post(path, data={**(data or {}), "csrf_token": token.group(1)})


def jobs(site: Site, kind: str) -> list[int]:
    """The ids of the ``kind`` jobs on alice's machine, newest first."""
    return [j.id for j in site.state.job_queries.list(kind=kind, limit=100) if j.target == site.machine]


def finish(site: Site, kind: str, timeout: float = 300.0) -> dict[str, object]:
    """Wait for the newest ``kind`` job on alice's machine; it must end done. Its view as a dict."""
    view = site.state.jobs.wait(jobs(site, kind)[0], timeout=timeout)
    assert view.state == "done", view
    return view.as_dict()
