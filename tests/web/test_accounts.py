"""The Accounts service: users, constant-time verify, one-time links from the roster, API tokens, owners, 404 rules."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import select

from labkit.errors import BadNameError, ConflictError, NotFoundError
from labkit.services.accounts import Accounts, UserView
from labkit.services.courses import Courses
from labkit.services.models import ApiToken, Student

from .conftest import PASSWORD, state


@pytest.fixture
def accounts(app: Flask) -> Accounts:
    return state(app).accounts("admin")


def test_users_names_roles_and_passwords(accounts: Accounts) -> None:
    user = accounts.create_user("teacher", "instructor", PASSWORD)
    assert (user.username, user.role, user.has_password) == ("teacher", "instructor", True)
    with pytest.raises(ConflictError, match="already exists"):
        accounts.create_user("teacher", "student")
    with pytest.raises(BadNameError, match="role"):
        accounts.create_user("x", "admin")
    for bad in ("", "a b", "../x", "é"):
        with pytest.raises(BadNameError):
            accounts.create_user(bad, "student")
    with pytest.raises(BadNameError, match="too short"):
        accounts.create_user("shorty", "student", "1234567")
    assert accounts.verify("teacher", PASSWORD) == accounts.get("teacher")
    assert accounts.verify("teacher", "wrong") is None
    assert accounts.verify("nobody", PASSWORD) is None
    assert [u.username for u in accounts.users()] == ["teacher"]


def test_verify_takes_as_long_for_unknown_users(accounts: Accounts) -> None:
    accounts.create_user("teacher", "instructor", PASSWORD)
    accounts.verify("nobody", "warm the dummy hash up")

    def timed(username: str) -> float:
        start = time.perf_counter()
        accounts.verify(username, "wrong password")
        return time.perf_counter() - start

    # interleaved, and the medians compared: a burst of load from elsewhere on the machine slows single tries of
    # either kind, not the middle of seven of each
    samples = [(timed("teacher"), timed("nobody")) for _ in range(7)]
    known, unknown = statistics.median(k for k, _ in samples), statistics.median(u for _, u in samples)
    assert 0.5 < unknown / known < 2.0  # both pay for one scrypt check


def test_links_make_student_accounts_from_the_roster(app: Flask, accounts: Accounts,
                                                      make_student: Callable[..., UserView]) -> None:
    make_student("c1", "alice", password=None)
    make_student("c1", "bob", password=None)
    links = accounts.create_links("c1")
    assert sorted(link.username for link in links) == ["alice", "bob"]
    assert {u.username: u.role for u in accounts.users()} == {"alice": "student", "bob": "student"}
    with state(app).db.transaction() as session:
        assert all(s.user_id is not None for s in session.scalars(select(Student)))
    # a newer link replaces the older one
    [newer] = accounts.create_links("c1", ["alice"])
    old = next(link for link in links if link.username == "alice")
    with pytest.raises(ConflictError, match="already used"):
        accounts.check_link(old.token)
    accounts.use_link(newer.token, PASSWORD)
    # alice can log in now: only bob gets a link
    assert [link.username for link in accounts.create_links("c1")] == ["bob"]
    with pytest.raises(NotFoundError, match="no active student"):
        accounts.create_links("c1", ["carol"])
    with pytest.raises(NotFoundError):
        accounts.create_links("nope")


def test_a_student_id_that_is_an_instructor_name_is_refused(accounts: Accounts,
                                                            make_student: Callable[..., UserView]) -> None:
    accounts.create_user("alice", "instructor", PASSWORD)
    with pytest.raises(ConflictError, match="instructor"):
        make_student("c1", "alice", password=None)


def test_api_tokens_are_shown_once_and_stored_hashed(app: Flask, accounts: Accounts) -> None:
    accounts.create_user("teacher", "instructor", PASSWORD)
    view, secret = accounts.create_api_token("teacher", "grader")
    assert secret.startswith("lk_") and len(secret) > 40 and view.name == "grader"
    with state(app).db.transaction() as session:
        assert secret not in session.scalar(select(ApiToken.token_hash))
    assert accounts.verify_api_token(secret).username == "teacher"
    assert accounts.api_tokens("teacher")[0].last_used_at is not None
    assert accounts.verify_api_token(secret + "x") is None
    assert accounts.verify_api_token("Bearer nothing") is None
    with pytest.raises(ConflictError):
        accounts.create_api_token("teacher", "grader")
    accounts.revoke_api_token("teacher", "grader")
    assert accounts.verify_api_token(secret) is None
    _, other = accounts.create_api_token("teacher", "ci")
    accounts.disable("teacher")
    assert accounts.verify_api_token(other) is None
    with pytest.raises(NotFoundError):
        accounts.revoke_api_token("teacher", "missing")


def test_owners_and_what_each_user_may_see(app: Flask, accounts: Accounts, courses: Courses,
                                           make_instructor: Callable[..., UserView],
                                           make_student: Callable[..., UserView]) -> None:
    teacher, other = make_instructor("teacher"), make_instructor("other")
    alice = make_student("c1", "alice", owner="teacher")
    bob = make_student("c1", "bob")
    make_student("c2", "carol", owner="other")
    with pytest.raises(ConflictError, match="only an enabled instructor"):
        accounts.set_course_owner("c1", "alice")
    courses.provision("c1")
    courses.provision("c2")
    assert accounts.owned_course(teacher, "c1") is not None
    assert accounts.owned_course(teacher, "c2") is None and accounts.owned_course(alice, "c1") is None
    assert accounts.owned_courses(other.id) == ["c2"]

    [mine] = accounts.machines_of(alice)
    [bobs] = accounts.machines_of(bob)
    assert (mine.student, mine.lab, mine.machine, mine.read_only) == ("alice", "intro-shell", "box", False)
    assert accounts.owned_machine(alice, mine.name) == mine
    assert accounts.owned_machine(alice, bobs.name) is None
    assert accounts.owned_machine(alice, "no-such-machine") is None
    watched = accounts.owned_machine(teacher, bobs.name)
    assert watched is not None and watched.read_only
    assert len(accounts.machines_of(teacher)) == 2 and accounts.machines_of(teacher, "c2") == []
    assert accounts.owned_machine(other, mine.name) is None
    # an archived student sees nothing; a disabled instructor sees nothing
    roster = courses.settings.home / "r.csv"
    roster.write_text("id,name,email\nbob,Bob,b@example.org\n")
    courses.import_roster("c1", roster)
    assert accounts.machines_of(alice) == []
    assert accounts.machines_of(accounts.disable("teacher")) == []
