"""``labkit demo``: a ready-to-try course for ``make run`` (an instructor, two students, the intro-shell lab).

Idempotent: a second run keeps what the first made and prints the same logins. The passwords are random, made once,
and kept in ``$LABKIT_HOME/demo-logins.txt`` (readable by the owner only) so they can be printed again.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from pathlib import Path

import click

from labkit.atomic import write_atomic
from labkit.cli.app import App
from labkit.errors import NotFoundError

pass_app = click.make_pass_decorator(App)

COURSE = "demo"
INSTRUCTOR = "teacher"
STUDENTS = {"student1": "Demo Student One", "student2": "Demo Student Two"}


@click.command("demo")
@click.option("--lab", "lab_path", default="labs/intro-shell", show_default=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path), help="The demo course's lab.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="Where the web app will be served.")
@pass_app
def command(app: App, lab_path: Path, url: str) -> None:
    """Set up the demo course (instructor "teacher", students "student1" and "student2") and print the logins."""
    from labkit.services.accounts import Accounts

    accounts = Accounts(app.settings, app.db, actor="demo")
    logins_file = app.settings.home / "demo-logins.txt"
    logins: dict[str, str] = json.loads(logins_file.read_text()) if logins_file.exists() else {}
    for name in [INSTRUCTOR, *STUDENTS]:
        logins.setdefault(name, secrets.token_urlsafe(9))
    write_atomic(logins_file, json.dumps(logins, indent=2) + "\n", 0o600)

    try:
        accounts.get(INSTRUCTOR)
    except NotFoundError:
        accounts.create_user(INSTRUCTOR, "instructor", logins[INSTRUCTOR])
    courses = app.courses
    try:
        courses.show(COURSE)
    except NotFoundError:
        courses.create(COURSE, [lab_path])
        accounts.set_course_owner(COURSE, INSTRUCTOR)
    with tempfile.TemporaryDirectory(prefix="lkdemo") as folder:
        roster = Path(folder) / "roster.csv"
        roster.write_text("id,name,email\n" + "".join(f"{sid},{name},\n" for sid, name in STUDENTS.items()))
        courses.import_roster(COURSE, roster)
    courses.provision(COURSE)
    for link in accounts.create_links(COURSE):  # only students who cannot log in yet get a link
        accounts.use_link(link.token, logins[link.username])

    click.echo(f"\nThe demo course '{COURSE}' is ready. Open {url}/ and log in as:")
    click.echo(f"  instructor  {INSTRUCTOR:<10} password {logins[INSTRUCTOR]}")
    for sid in STUDENTS:
        click.echo(f"  student     {sid:<10} password {logins[sid]}")
    click.echo(f"(kept in {logins_file})")
