"""Fuzzing the roster CSV: a roster is a file from a school's system, uploaded through the CLI, the API or the web
page, so whatever its bytes, the import adds the students or fails with one `RosterError` and changes nothing.

Inputs are any bytes, and CSV built row by row from hostile cells (quotes, separators, line breaks, NUL, a BOM, very
long fields, ids at the edge of what is allowed) so most rows get past the CSV reader to the checks and the database.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st

from labkit.config import Settings
from labkit.errors import LabkitError, RosterError
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.services.courses import Courses
from labkit.services.db import Database
from labkit.services.roster import parse_roster

LABS = Path(__file__).resolve().parents[3] / "labs"

CELLS = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}[A-Za-z0-9]", fullmatch=True),  # a good id
    st.text(max_size=20),
    st.sampled_from(["", " ", "..", "a..b", "-a", "a" * 64, "a" * 65, '"', '""', ",", "\n", "\r", "\r\n", "\x00",
                     "\ufeff", "id", "name", "email", "x@y", "no-at", "é", "\u2028", "a\tb", "x" * 201]),
    st.builds(lambda n: "N" * n, st.sampled_from([200, 201, 131_072, 140_000])),
)
ROWS = st.lists(st.lists(CELLS, min_size=0, max_size=5), min_size=0, max_size=6)


@st.composite
def rosters(draw: st.DrawFn) -> bytes:
    """A CSV file: maybe a header and a BOM, then rows of cells, quoted as a spreadsheet would or cut anywhere."""
    rows = draw(ROWS)
    if draw(st.booleans()):
        rows.insert(0, ["id", "name", "email"])
    out = io.StringIO(newline="")
    csv.writer(out, quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))).writerows(rows)
    data = out.getvalue().encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


@pytest.fixture
def courses(lk_settings: Settings) -> Iterator[Courses]:
    ImageStore(lk_settings).build(find_recipe(lk_settings.recipes, "tiny"))
    db = Database(lk_settings)
    courses = Courses(lk_settings, db, actor="teacher")
    courses.create("c1", [LABS / "intro-shell"])
    yield courses
    db.close()


def import_or_refuse(courses: Courses, folder: Path, data: bytes) -> None:
    """Import ``data`` as c1's roster: a RosterError leaves the roster as it was, a success lists exactly its rows."""
    path = folder / "roster.csv"
    path.write_bytes(data)
    before = courses.students("c1")
    try:
        entries = parse_roster(data, "roster.csv")
    except RosterError as err:
        assert str(err).startswith("roster.csv") and len(str(err)) < 20_000
        entries = None
    try:
        courses.import_roster("c1", path)
    except LabkitError as err:
        assert entries is None, f"parse_roster accepted what the import refused: {err}"
        assert isinstance(err, RosterError), f"{type(err).__name__}: {err}"
        assert courses.students("c1") == before, "a refused roster changed the course"
        return
    assert entries is not None
    active = {s["id"]: (s["name"], s["email"]) for s in courses.students("c1") if not s["archived"]}
    assert active == {e.sid: (e.name, e.email) for e in entries}


@given(data=st.binary(max_size=2000))
@fuzz(150)
def test_any_bytes_as_a_roster(courses: Courses, short_tmp: Path, data: bytes) -> None:
    import_or_refuse(courses, short_tmp, data)


@given(data=rosters())
@fuzz(250)
def test_hostile_csv_as_a_roster(courses: Courses, short_tmp: Path, data: bytes) -> None:
    import_or_refuse(courses, short_tmp, data)
