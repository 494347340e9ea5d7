"""Class rosters: a CSV file with one student per line (id, name, email), read strictly with line numbers."""

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


@dataclass(frozen=True)
class RosterEntry:
    sid: str
    name: str
    email: str
    line: int


def check_student_id(sid: str, where: str = "student id") -> str:
    if not sid:
        raise RosterError(f"{where} is empty")
    if ".." in sid or not _SID.fullmatch(sid):
        raise RosterError(f"{where} {sid!r} may only hold ASCII letters, digits, '.', '_' and '-' (at most 64, "
                          "starting and ending with a letter or digit, no '..')")
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
    except csv.Error as err:  # a field over csv's limit (128 KiB), a NUL byte ...
        raise RosterError(f"the roster cannot be read as CSV: {err}", file, reader.line_num or 1) from err
    problems: list[tuple[int, str]] = []
    entries: list[RosterEntry] = []
    seen: dict[str, int] = {}
    start = 1 if rows and [c.strip().lower() for c in rows[0][:3]] == list(COLUMNS) else 0
    for line, row in enumerate(rows[start:], start=start + 1):
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
            problems.append((line, f"email {email!r} has no '@'"))
        else:
            seen[sid] = line
            entries.append(RosterEntry(sid, name, email, line))
    if len(problems) == 1:
        raise RosterError(problems[0][1], file, problems[0][0])
    if problems:
        listed = "; ".join(f"line {line}: {message}" for line, message in problems)
        raise RosterError(f"{len(problems)} problems: {listed}", file)
    if not entries:
        raise RosterError("the roster has no students (expected lines of: id,name,email)", file)
    return entries


def read_roster(path: Path) -> list[RosterEntry]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RosterError(f"cannot read the roster: {err.strerror}", str(path)) from err
    return parse_roster(data, str(path))
