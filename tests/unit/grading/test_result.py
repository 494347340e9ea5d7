"""Evidence and feedback are bounded and safe to store and show, whatever the guest printed."""

from __future__ import annotations

from labkit.grading import CheckResult, safe_text, total
from labkit.grading.result import EVIDENCE_LIMIT


def make(evidence: bytes | str = "", feedback: str = "", points: float = 1, max_points: float = 2) -> CheckResult:
    return CheckResult("c", False, points, max_points, feedback, evidence, "ssh", 0.1)  # type: ignore[arg-type]


def test_huge_output_keeps_head_and_tail_and_says_it_cut() -> None:
    data = b"HEAD" + b"x" * 100_000_000 + b"TAIL"
    text = safe_text(data)
    assert text.startswith("HEAD") and text.endswith("TAIL")
    assert "labkit cut" in text
    assert len(text) < 2 * EVIDENCE_LIMIT


def test_long_text_is_cut_in_characters() -> None:
    text = safe_text("é" * 10_000, limit=100)
    assert len(text) < 200 and "cut 9900 characters" in text


def test_invalid_utf8_ansi_and_control_characters_are_made_safe() -> None:
    raw = b"ok \xff\xfe \x1b[31mred\x1b[0m \x1b]0;title\x07 nul\x00 bell\x07 tab\tnewline\r\n"
    text = safe_text(raw)
    assert text == "ok \\xff\\xfe red  nul\\x00 bell\\x07 tab\tnewline\n"
    text.encode("utf-8")  # storable: no surrogates left


def test_check_result_cleans_its_text_and_clamps_points() -> None:
    result = make(evidence=b"\x1b[2J\xc3(" + b"y" * 50_000, feedback="fine\x00", points=5)
    assert result.evidence.startswith("\\xc3(") and "labkit cut" in result.evidence
    assert result.feedback == "fine\\x00"
    assert result.points == 2.0
    assert make(points=-3).points == 0.0


def test_total_adds_points_and_max_points() -> None:
    assert total([make(points=1), make(points=0.5), make(points=2)]) == (3.5, 6.0)
    assert total([]) == (0.0, 0.0)
