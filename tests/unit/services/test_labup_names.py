"""The personal course of ``labkit lab up``: one valid, distinct course name per (lab, user), and a seed that gives
the same values again."""

from __future__ import annotations

import pytest

from labkit.names import check_name
from labkit.services.labup import course_name, seed_secret


def test_a_readable_name_when_it_fits() -> None:
    assert course_name("two-hosts", "alice") == "lab-two-hosts-alice"


@pytest.mark.parametrize(("lab", "users"), [
    ("two-hosts", ["John.Doe", "john-doe", "john_doe", "JOHN"]),          # not valid in a course name, or the same
    ("a-lab-with-a-really-long-identifier", ["alice", "bob"]),           # too long for 32 characters
])
def test_names_stay_valid_and_apart(lab: str, users: list[str]) -> None:
    names = [course_name(lab, user) for user in users]
    assert all(check_name(name) == name and name.startswith("lab-") for name in names)
    assert len(set(names)) == len(users)
    assert names == [course_name(lab, user) for user in users]  # deterministic


def test_the_seed_is_the_secret() -> None:
    assert seed_secret(1) == seed_secret(1) != seed_secret(2)
    assert len(seed_secret(0)) == 64
