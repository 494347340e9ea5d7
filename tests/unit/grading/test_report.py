"""Gradebook CSV: opens cleanly in a spreadsheet and never turns a name into a formula."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from labkit.grading.report import cell, to_csv, write_csv


def test_cells_are_plain_numbers_or_safe_text() -> None:
    assert [cell(None), cell(2.0), cell(1.5), cell(3), cell(True), cell(False)] == ["", "2", "1.5", "3", "yes", "no"]
    assert cell("=HYPERLINK(\"http://x\")").startswith("'=")
    assert [cell(t) for t in ("+1", "-1", "@SUM(A1)", "\tx", "\rx")] == ["'+1", "'-1", "'@SUM(A1)", "'\tx", "'\rx"]
    assert cell("Zoë, \"the\" admin") == "Zoë, \"the\" admin"


def test_csv_round_trips_with_bom_and_crlf(tmp_path: Path) -> None:
    columns = ["student", "name", "lab", "total"]
    rows = [["alice", "Zoë, \"Z\"", 12.5, 12.5], ["bob", "=cmd|' /C calc'!A0", None, 0.0]]
    text = to_csv(columns, rows)
    assert text.count("\r\n") == 3
    out = tmp_path / "book.csv"
    write_csv(out, columns, rows)
    raw = out.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    parsed = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert parsed == [columns, ["alice", "Zoë, \"Z\"", "12.5", "12.5"], ["bob", "'=cmd|' /C calc'!A0", "", "0"]]
    assert [p.name for p in tmp_path.iterdir()] == ["book.csv"]  # no temporary file left
