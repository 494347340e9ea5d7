"""What a new console tab is shown first: the end of the console log, cut cleanly (no guest needed)."""

from __future__ import annotations

from pathlib import Path

from web.console_relay import replay_tail


def test_replay_starts_at_a_line_and_drops_terminal_queries(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"x" * 50 + b"\r\nfirst line\nsecond \x1b[6n line\x1b[c\r\n# ")
    assert replay_tail(log, max_bytes=40) == b"first line\r\nsecond  line\r\n# "
    assert replay_tail(log, max_bytes=0) == b""
    assert replay_tail(tmp_path / "missing.log") == b""
    short = tmp_path / "short.log"
    short.write_bytes(b"login: ")
    assert replay_tail(short) == b"login: "
