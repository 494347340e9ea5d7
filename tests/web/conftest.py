"""Fixtures of the web tests: an app over a fresh short LABKIT_HOME, users, a course with the real intro-shell lab.

CSRF stays on: the `login` fixture reads the token from the login page like a browser does, and `csrf_token(client)`
does the same for any other form.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from web_app import csrf_token, session_client  # noqa: F401  (the web tests import both from here)

from labkit.config import Settings
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.accounts import UserView
from labkit.services.courses import Courses
from web import create_app
from web.state import WebState

REPO = Path(__file__).resolve().parents[2]
LABS = REPO / "labs"
PASSWORD = "correct horse battery"


def _make_short_dir() -> Path:
    from conftest import make_short_dir  # tests/conftest.py (pythonpath = tests)

    return make_short_dir("lkw")


@pytest.fixture
def web_settings() -> Iterator[Settings]:
    from conftest import make_settings

    home = _make_short_dir()
    yield make_settings(home / "home")
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def app(web_settings: Settings) -> Iterator[Flask]:
    app = create_app({"LABKIT_SETTINGS": web_settings, "TESTING": True})
    yield app
    state(app).close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def state(app: Flask) -> WebState:
    return app.extensions["labkit"]


@pytest.fixture
def make_instructor(app: Flask) -> Callable[..., UserView]:
    def make(username: str = "teacher", password: str | None = PASSWORD) -> UserView:
        return state(app).accounts("test").create_user(username, "instructor", password)

    return make


@pytest.fixture
def courses(app: Flask) -> Courses:
    """The Courses service of the app's installation, with the tiny image built (from the shared build cache)."""
    settings = state(app).settings
    ImageStore(settings).build(find_recipe(settings.recipes, "tiny"))
    return state(app).courses("test")


@pytest.fixture
def make_course(app: Flask, courses: Courses) -> Callable[..., str]:
    def make(name: str = "c1", owner: str | None = None, labs: tuple[str, ...] = ("intro-shell",)) -> str:
        courses.create(name, [LABS / lab for lab in labs])
        if owner:
            state(app).accounts("test").set_course_owner(name, owner)
        return name

    return make


@pytest.fixture
def make_student(app: Flask, courses: Courses, tmp_path: Path) -> Callable[..., UserView]:
    """``make_student(course, sid, password=PASSWORD)``: a roster line in ``course`` (created if missing, with the
    intro-shell lab, no machines provisioned) and its account with a password set through its one-time link."""

    def make(course: str, sid: str, password: str | None = PASSWORD, owner: str | None = None) -> UserView:
        accounts = state(app).accounts("test")
        if course not in {c["name"] for c in _courses(courses)}:
            courses.create(course, [LABS / "intro-shell"])
            if owner:
                accounts.set_course_owner(course, owner)
        present = [s["id"] for s in courses.students(course) if not s["archived"]]
        roster = tmp_path / f"roster-{course}-{sid}.csv"
        roster.write_text("id,name,email\n" + "".join(f"{s},Student {s},{s}@example.org\n"
                                                       for s in [*present, sid]))
        courses.import_roster(course, roster)
        links = accounts.create_links(course, [sid])
        if password is None:
            return accounts.get(sid)
        return accounts.use_link(links[0].token, password)

    return make


def _courses(courses: Courses) -> list[dict[str, object]]:
    from sqlalchemy import select

    from labkit.services.models import Course

    with courses.db.transaction() as session:
        return [{"name": name} for name in session.scalars(select(Course.name))]


@pytest.fixture
def login() -> Callable[[FlaskClient, str, str], object]:
    """``login(client, username, password)`` -> the response of the POST (not followed), CSRF token included."""

    def do(client: FlaskClient, username: str, password: str = PASSWORD) -> object:
        token = csrf_token(client)
        return client.post("/login", data={"username": username, "password": password, "csrf_token": token})

    return do
