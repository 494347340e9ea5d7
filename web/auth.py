"""Logging in and out, and setting a password through a one-time link.

Login attempts are rate-limited per username and per client address (`web.ratelimit.LoginLimiter`); an exceeded limit
answers 429 before any password is checked. A session holds the user's id and a stamp of their password, so a
changed password or a disabled account ends every older session. The session also has a row on the server
(`Accounts.open_session`): logging out deletes it, so a copied cookie stops working too.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, session
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from wtforms import HiddenField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from labkit.errors import LabkitError
from labkit.services.accounts import MAX_PASSWORD, MIN_PASSWORD, UserView
from web.access import SESSION_SECRET, SESSION_STAMP, SESSION_USER, actor, current_user, home_url, login_required
from web.state import services

bp = Blueprint("auth", __name__)


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=MAX_PASSWORD)])
    next = HiddenField()


class SetPasswordForm(FlaskForm):
    password = PasswordField("New password", validators=[DataRequired(), Length(min=MIN_PASSWORD, max=MAX_PASSWORD)])
    confirm = PasswordField("Repeat it", validators=[DataRequired(), EqualTo("password", "The passwords differ.")])


class ChangePasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired(), Length(max=MAX_PASSWORD)])
    password = PasswordField("New password", validators=[DataRequired(), Length(min=MIN_PASSWORD, max=MAX_PASSWORD)])
    confirm = PasswordField("Repeat it", validators=[DataRequired(), EqualTo("password", "The passwords differ.")])


class LogoutForm(FlaskForm):
    """Nothing but the CSRF token: logging out is a POST."""


def safe_next(target: str | None) -> str | None:
    """Only a path on this site (no scheme, no host, no "//evil"): an open redirect would make phishing easy.

    Control characters and spaces are refused too: CR/LF in a Location header would be a header injection (werkzeug
    refuses it with a 500), and browsers drop tabs and newlines from URLs, so "/<tab>/evil" would become "//evil".
    """
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in target):
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None


def log_in(user: UserView) -> None:
    _end_session()  # a browser that logs in again leaves no open session behind
    session.clear()  # a new session id for the new user (no fixation)
    session.permanent = True
    session[SESSION_USER] = user.id
    session[SESSION_STAMP] = user.stamp
    session[SESSION_SECRET] = services().accounts(user.username).open_session(
        user.id, current_app.permanent_session_lifetime)


def _end_session() -> None:
    """Delete this session's row on the server: its cookie, wherever it was copied, no longer logs anyone in."""
    secret = session.get(SESSION_SECRET)
    if isinstance(secret, str):
        services().accounts(actor()).close_session(secret)


@bp.get("/")
def index() -> ResponseReturnValue:
    user = current_user()
    return redirect(home_url(user) if user else "/login")


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    form = LoginForm()
    if request.method == "GET":
        form.next.data = request.args.get("next", "")
        user = current_user()
        if user is not None:
            return redirect(safe_next(form.next.data) or home_url(user))
        return render_template("login.html", form=form)
    if not form.validate_on_submit():
        return render_template("login.html", form=form), 400
    state = services()
    username, address = form.username.data.strip(), request.remote_addr or "unknown"
    wait = state.limiter.blocked(username, address)
    if wait is not None:
        minutes = max(1, round(wait / 60))
        flash(f"Too many failed logins for this user or from this address. Try again in about {minutes} "
              f"minute{'s' if minutes > 1 else ''}.", "error")
        return render_template("login.html", form=form), 429, {"Retry-After": str(int(wait))}
    user = state.accounts(username).verify(username, form.password.data)
    if user is None:
        state.limiter.failed(username, address)
        flash("Wrong username or password.", "error")
        return render_template("login.html", form=form), 401
    state.limiter.succeeded(username)
    log_in(user)
    return redirect(safe_next(form.next.data) or home_url(user))


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    form = LogoutForm()
    if not form.validate_on_submit():
        return render_template("error.html", message="The form was refused; reload the page and try again.",
                               status=400), 400
    _end_session()
    session.clear()
    flash("You are logged out.", "info")
    return redirect("/login")


@bp.route("/password", methods=["GET", "POST"])
@login_required
def change_password() -> ResponseReturnValue:
    """The account itself changes its password (an account shared by courses has no instructor who could): the
    current password is checked and rate-limited like a login; the user's other sessions end, this one goes on."""
    user = current_user()
    assert user is not None
    form = ChangePasswordForm()
    if not form.validate_on_submit():
        return render_template("change_password.html", form=form), 400 if request.method == "POST" else 200
    state, address = services(), request.remote_addr or "unknown"
    wait = state.limiter.blocked(user.username, address)
    if wait is not None:
        flash("Too many wrong passwords. Try again later.", "error")
        return render_template("change_password.html", form=form), 429, {"Retry-After": str(int(wait))}
    if state.accounts(user.username).verify(user.username, form.current.data) is None:
        state.limiter.failed(user.username, address)
        flash("The current password is wrong.", "error")
        return render_template("change_password.html", form=form), 400
    state.limiter.succeeded(user.username)
    changed = state.accounts(user.username).set_password(user.username, form.password.data)
    log_in(changed)
    flash("Your password is changed. Your other sessions have ended.", "info")
    return redirect(home_url(changed))


@bp.route("/set-password/<token>", methods=["GET", "POST"])
def set_password(token: str) -> ResponseReturnValue:
    accounts = services().accounts("anonymous")
    try:
        user = accounts.check_link(token)
    except LabkitError as err:
        return render_template("error.html", message=str(err), status=err.status), err.status
    form = SetPasswordForm()
    if not form.validate_on_submit():
        return render_template("set_password.html", form=form, username=user.username), \
            400 if request.method == "POST" else 200
    user = accounts.use_link(token, form.password.data)
    session.clear()
    flash("Your password is set. Log in with it now.", "info")
    return redirect(f"/login?next={home_url(user)}")
