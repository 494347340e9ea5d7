"""Grades as CSV that opens cleanly in a spreadsheet.

- UTF-8 with a byte order mark, so spreadsheet programs guess the encoding right; CRLF line ends (RFC 4180).
- Numbers without noise (``2``, ``1.5``), empty cells for "never graded".
- Text that a spreadsheet would run as a formula (starting with ``=``, ``+``, ``-``, ``@``, tab or CR) gets a
  leading ``'``: a roster name or a feedback line can never become a formula (CSV injection).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from labkit.atomic import write_atomic

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def cell(value: object) -> str:
    """One value as spreadsheet-safe text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | int):
        return f"{value:g}" if isinstance(value, float) else str(value)
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def to_csv(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([cell(c) for c in columns])
    for row in rows:
        writer.writerow([cell(v) for v in row])
    return out.getvalue()


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Write the table atomically (a reader sees the old file or the whole new one)."""
    write_atomic(path, "\ufeff" + to_csv(columns, rows), 0o644)
