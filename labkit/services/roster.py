"""Class rosters: a CSV file with the header line ``id,name,email`` and one student per line, read strictly with line
numbers. The header is required: a file without it (or with the columns in another order) is refused, so a name can
never be read as an id or the other way round."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import RosterError

#: Student ids appear in URLs, logs and machine records: letters, digits, dot, underscore, hyphen; no "..".
_SID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?")
MAX_BYTES = 2 << 20
COLUMNS = ("id", "name", "email")
#: the longest name or email the database keeps (models.Student)
MAX_FIELD = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class RosterEntry:
    sid: str
    name: str
    email: str
    line: int


def shorten(text: str, limit: int = 80) -> str:
    """A value quoted in a message: a hostile 100 KiB cell must not become a 100 KiB error line."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def check_student_id(sid: str, where: str = "student id") -> str:
    if not sid:
        raise RosterError(f"{where} is empty")
    if ".." in sid or not _SID.fullmatch(sid):
        raise RosterError(f"{where} {shorten(sid)!r} may only hold ASCII letters, digits, '.', '_' and '-' "
                          "(at most 64, starting and ending with a letter or digit, no '..')")
    return sid


def parse_roster(data: bytes, file: str = "roster.csv") -> list[RosterEntry]:
    """Parse a roster, reporting every bad line at once. UTF-8, with or without a byte order mark."""
    if len(data) > MAX_BYTES:
        raise RosterError(f"the roster is {len(data)} bytes; the limit is {MAX_BYTES}", file)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise RosterError(f"not UTF-8 (byte {err.start} cannot be decoded); save the file as UTF-8", file, line) \
            from err
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as err:  # a field over csv's limit (128 KiB): no name or email is that long
        raise RosterError(f"cannot be read as CSV: {err}", file, reader.line_num or 1) from err
    problems: list[tuple[int, str]] = []
    entries: list[RosterEntry] = []
    seen: dict[str, int] = {}
    first = next((n for n, row in enumerate(rows) if any(cell.strip() for cell in row)), None)
    if first is None:
        raise RosterError("the roster has no students (expected a header line id,name,email, then one line a "
                          "student)", file)
    header = [cell.strip().lower() for cell in rows[first]]
    if header != list(COLUMNS):
        # Without the header a reordered file (name,id,email) would import cleanly and overwrite every name.
        found = ",".join(cell.strip() for cell in rows[first])[:80]
        raise RosterError(f"the first line must be the header id,name,email (found {found!r}); add it, with the "
                          "columns in that order", file, first + 1)
    for line, row in enumerate(rows[first + 1:], start=first + 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 3:
            problems.append((line, f"expected 3 columns (id, name, email), found {len(row)}"))
            continue
        sid, name, email = (cell.strip() for cell in row)
        try:
            check_student_id(sid)
        except RosterError as err:
            problems.append((line, str(err)))
            continue
        if sid in seen:
            problems.append((line, f"student id {sid!r} is already on line {seen[sid]}"))
        elif email and "@" not in email:
            problems.append((line, f"email {shorten(email)!r} has no '@'"))
        elif len(name) > MAX_FIELD or len(email) > MAX_FIELD:
            problems.append((line, f"a name or email is longer than {MAX_FIELD} characters"))
        elif _CONTROL.search(name + email):
            problems.append((line, "a name or email holds a control character (a line break, a tab, a NUL ...)"))
        else:
            seen[sid] = line
            entries.append(RosterEntry(sid, name, email, line))
    if len(problems) == 1:
        raise RosterError(problems[0][1], file, problems[0][0])
    if problems:
        listed = "; ".join(f"line {line}: {message}" for line, message in problems)
        raise RosterError(f"{len(problems)} problems: {listed}", file)
    if not entries:
        raise RosterError("the roster has no students (expected lines of: id,name,email after the header)", file)
    return entries


def read_roster(path: Path) -> list[RosterEntry]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RosterError(f"cannot read the roster: {err.strerror}", str(path)) from err
    return parse_roster(data, str(path))
