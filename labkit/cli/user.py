"""``labkit user``: web accounts (instructors, students), passwords and API tokens."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from labkit.atomic import write_atomic
from labkit.cli.app import App, echo_json, json_option
from labkit.services.roles import ROLES

if TYPE_CHECKING:
    from labkit.services.accounts import Accounts

pass_app = click.make_pass_decorator(App)


def accounts(app: App) -> Accounts:
    from labkit.services.accounts import Accounts

    return Accounts(app.settings, app.db)


def read_password(stdin: bool, prompt: str = "Password") -> str:
    """One line from standard input (for scripts), or asked twice without echo."""
    if stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=True)


password_stdin = click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")


@click.group("user")
def command() -> None:
    """Web accounts: instructors, students, passwords and API tokens."""


@command.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="instructor or student.")
@click.option("--no-password", is_flag=True, help="Create it without a password (cannot log in until one is set).")
@password_stdin
@pass_app
def create(app: App, name: str, role: str, no_password: bool, password_stdin: bool) -> None:
    """Create user NAME (students usually get theirs from `labkit course links`)."""
    password = None if no_password else read_password(password_stdin)
    accounts(app).create_user(name, role, password)
    click.echo(f"created {role} {name}" + (" (no password yet)" if password is None else ""))


@command.command("list")
@json_option
@pass_app
def list_users(app: App, as_json: bool) -> None:
    """List the users."""
    users = accounts(app).users()
    if as_json:
        echo_json([{"username": u.username, "role": u.role, "has_password": u.has_password,
                    "disabled": u.disabled, "created_at": u.created_at.isoformat()} for u in users])
        return
    for user in users:
        flags = [f for f, on in (("no password", not user.has_password), ("disabled", user.disabled)) if on]
        click.echo(f"{user.username:<24} {user.role:<11} {', '.join(flags)}".rstrip())


@command.command("passwd")
@click.argument("name")
@password_stdin
@pass_app
def passwd(app: App, name: str, password_stdin: bool) -> None:
    """Set the password of user NAME (their open web sessions end)."""
    service = accounts(app)
    service.get(name)  # say "no user" before asking for a password
    service.set_password(name, read_password(password_stdin, "New password"))
    click.echo(f"password of {name} set")


@command.command("disable")
@click.argument("name")
@click.option("--enable", is_flag=True, help="Enable the user again.")
@pass_app
def disable(app: App, name: str, enable: bool) -> None:
    """Disable user NAME: no login, their sessions and API tokens stop working."""
    accounts(app).disable(name, disabled=not enable)
    click.echo(f"{'enabled' if enable else 'disabled'} {name}")


@command.command("link")
@click.argument("name")
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True,
              help="The web app's address as the user reaches it.")
@pass_app
def link(app: App, name: str, base_url: str) -> None:
    """A one-time set-password link for user NAME, whatever courses they are in (an admin's reset)."""
    made = accounts(app).admin_link(name)
    click.echo(f"{base_url.rstrip('/')}/set-password/{made.token}")
    click.echo(f"link for {name}, valid until {made.expires_at:%Y-%m-%d %H:%M} UTC; only the newest link works",
               err=True)


@command.command("enrol")
@click.argument("name")
@click.argument("course")
@pass_app
def enrol(app: App, name: str, course: str) -> None:
    """Enrol account NAME in COURSE (its roster line NAME), even if another instructor's course has it too."""
    courses = accounts(app).enrol(name, course)
    click.echo(f"{name} is enrolled in {', '.join(courses)}" + (
        "; no instructor can issue its links now, only 'labkit user link'" if len(courses) > 1 else ""))


@command.command("show")
@click.argument("name")
@json_option
@pass_app
def show(app: App, name: str, as_json: bool) -> None:
    """Show user NAME and the courses (with their owners) the account is enrolled in."""
    service = accounts(app)
    user = service.get(name)
    courses = service.enrolments(name)
    if as_json:
        echo_json({"username": user.username, "role": user.role, "has_password": user.has_password,
                   "disabled": user.disabled, "courses": [{"course": c, "owner": o} for c, o in courses]})
        return
    click.echo(f"{user.username} ({user.role}{', disabled' if user.disabled else ''}"
               f"{'' if user.has_password else ', no password'})")
    for course, owner in courses:
        click.echo(f"  {course:<24} owner {owner or '(command line)'}")
    owners = {o for _c, o in courses}
    if len(owners) > 1:
        click.echo("  shared by courses of different owners: only an admin issues its links", err=True)


@command.group("token")
def token() -> None:
    """API bearer tokens (for scripts that use /api/v1)."""


@token.command("create")
@click.argument("name")
@click.argument("token_name", metavar="TOKEN-NAME")
@pass_app
def token_create(app: App, name: str, token_name: str) -> None:
    """Create an API token for user NAME and print it: it is shown this once."""
    _view, secret = accounts(app).create_api_token(name, token_name)
    click.echo(secret)
    click.echo(f"token {token_name} of {name}: store it now, it is not shown again "
               "(use it as 'Authorization: Bearer <token>')", err=True)


@token.command("revoke")
@click.argument("name")
@click.argument("token_name", metavar="TOKEN-NAME")
@pass_app
def token_revoke(app: App, name: str, token_name: str) -> None:
    """Revoke an API token of user NAME."""
    accounts(app).revoke_api_token(name, token_name)
    click.echo(f"revoked token {token_name} of {name}")


@token.command("list")
@click.argument("name")
@json_option
@pass_app
def token_list(app: App, name: str, as_json: bool) -> None:
    """List the API tokens of user NAME (names and dates, never the secrets)."""
    tokens = accounts(app).api_tokens(name)
    if as_json:
        echo_json([{"name": t.name, "created_at": t.created_at.isoformat(), "revoked": t.revoked,
                    "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None} for t in tokens])
        return
    for t in tokens:
        used = f"last used {t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never used"
        click.echo(f"{t.name:<24} created {t.created_at:%Y-%m-%d %H:%M}  {used}{'  revoked' if t.revoked else ''}")


def show_links(app: App, course: str, students: list[str] | None, csv_file: Path | None, base_url: str,
               as_json: bool) -> None:
    """``labkit course links``: make the links, print them, and write them to a private CSV file if asked."""
    service = accounts(app)
    links = service.create_links(course, students)
    held = service.held(course) if students is None else []
    rows = [{"id": link.username, "name": link.name, "email": link.email,
             "url": f"{base_url.rstrip('/')}/set-password/{link.token}",
             "expires": link.expires_at.strftime("%Y-%m-%d %H:%M UTC")} for link in links]
    if csv_file is not None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["id", "name", "email", "url", "expires"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(csv_file, out.getvalue(), mode=0o600)  # the links are passwords until used
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['id']:<20} {row['url']}")
    click.echo(f"{len(rows)} links for course {course}, valid until {rows[0]['expires'] if rows else '-'}"
               + (f"; written to {csv_file}" if csv_file else "")
               + ("" if rows or held else " (every active student can already log in; use --student ID for a new "
                                          "link)"),
               err=True)
    for student in held:
        click.echo(f"no link for {student.sid}: {student.reason}", err=True)
