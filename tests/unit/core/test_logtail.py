"""`labkit.logtail.tail`: the one way labkit reads the end of a log (consoles, switches, the browser's replay)."""

from __future__ import annotations

from pathlib import Path

from labkit.logtail import tail


def test_tail_keeps_whole_lines_within_its_byte_budget(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"".join(f"line {n}\n".encode() for n in range(100)))
    assert tail(log, lines=2) == b"line 98\nline 99\n"
    assert tail(log, max_bytes=20) == b"line 98\nline 99\n"  # the cut moves to the next line start
    assert tail(log, lines=0) == b""
    log.write_bytes(b"a\nb\nno end")
    assert tail(log, lines=2) == b"b\nno end"
    assert tail(log, max_bytes=4) == b""  # nothing but half a line fits
    assert tail(tmp_path / "missing.log") is None
