"""Roster files: every bad line is reported with its line number, and nothing is imported from a bad file."""

from __future__ import annotations

import pytest

from labkit.errors import RosterError
from labkit.services.roster import parse_roster


def test_header_bom_and_blank_lines() -> None:
    data = "\ufeffid,name,email\nalice,Alice Liddell,alice@example.org\n\nbob,\"Bob, Jr.\",\n".encode()
    entries = parse_roster(data)
    assert [(e.sid, e.name, e.email, e.line) for e in entries] == [
        ("alice", "Alice Liddell", "alice@example.org", 2), ("bob", "Bob, Jr.", "", 4)]


@pytest.mark.parametrize(
    ("data", "line", "found"),
    [
        (b"s1,One,one@example.org\ns2,Two,two@example.org\n", 1, "s1,One,one@example.org"),
        (b"\n\nname,id,email\nAlice,alice,a@x.org\n", 3, "name,id,email"),  # columns swapped: names would become ids
        (b"id,name\nalice,Alice\n", 1, "id,name"),
    ],
)
def test_a_roster_without_its_header_line_is_refused(data: bytes, line: int, found: str) -> None:
    with pytest.raises(RosterError) as err:
        parse_roster(data, "r.csv")
    assert str(err.value).startswith(f"r.csv:{line}: the first line must be the header id,name,email (found {found!r})")


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"id,name,email\nalice,A,a@x.org\nalice,B,b@x.org\n", "roster.csv:3: student id 'alice' is already on line 2"),
        (b"id,name,email\n,Nobody,n@x.org\n", "roster.csv:2: student id is empty"),
        (b"id,name,email\n../etc,Evil,e@x.org\n", "roster.csv:2: student id '../etc' may only hold"),
        (b"id,name,email\na/b,Evil,e@x.org\n", "roster.csv:2: student id 'a/b' may only hold"),
        (b"id,name,email\nalice,Alice\n", "roster.csv:2: expected 3 columns (id, name, email), found 2"),
        (b"id,name,email\nalice,Alice,not-an-email\n", "roster.csv:2: email 'not-an-email' has no '@'"),
        (b"id,name,email\nalice,Al\xe9,a@x.org\n", "roster.csv:2: not UTF-8"),
        (b"id,name,email\n", "the roster has no students"),
        (b"id,name,email\nalice,Alice,a@x.org\nbob," + b"B" * (200 << 10) + b",b@x.org\n",
         "roster.csv:3: cannot be read as CSV: field larger than field limit"),
    ],
)
def test_bad_rosters(data: bytes, says: str) -> None:
    with pytest.raises(RosterError) as err:
        parse_roster(data, "roster.csv")
    assert says in str(err.value)


def test_every_problem_is_listed() -> None:
    with pytest.raises(RosterError) as err:
        parse_roster(b"id,name,email\na,A,a@x.org\na,A,a@x.org\n,B,b@x.org\n", "r.csv")
    assert "2 problems" in str(err.value)
    assert "line 3" in str(err.value) and "line 4" in str(err.value)


def test_huge_roster_is_refused() -> None:
    with pytest.raises(RosterError, match="the limit is"):
        parse_roster(b"x" * (3 << 20))
