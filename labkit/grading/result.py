"""What grading one check gives: points, feedback for the student, and evidence for the instructor, safe to store.

Evidence comes from inside students' machines, so it may be huge, not UTF-8, or full of terminal escapes. Every
`CheckResult` cleans its text when it is built: invalid bytes become ``\\xNN``, ANSI escape sequences are removed, other
control characters (NUL included, which databases refuse) are shown as ``\\xNN``, and long text keeps its head and tail
with a note saying how much was cut.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Evidence keeps at most this many characters (head and tail) besides the note where it cut.
EVIDENCE_LIMIT = 4096
#: Feedback is written by instructors, but script checks may return anything; it gets a looser bound.
FEEDBACK_LIMIT = 2048

#: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-character ESC sequences.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]|\x9b[0-?]*[ -/]*[@-~]")
#: Control characters other than newline and tab, DEL and the C1 range.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def safe_text(data: bytes | str, limit: int = EVIDENCE_LIMIT) -> str:
    """``data`` as text that is safe to store and show, at most about ``limit`` characters (head and tail kept)."""
    if isinstance(data, bytes):
        if len(data) > 2 * limit:  # cut bytes first so a 100 MB stream costs nothing to clean
            cut = len(data) - limit
            head, tail = data[: limit // 2], data[-(limit // 2):]
            return _bound(_clean(_decode(head)) + _note(cut, "bytes") + _clean(_decode(tail)), limit * 5)
        data = _decode(data)
    return _bound(_clean(data), limit)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n")
    text = _ANSI.sub("", text)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _note(cut: int, unit: str) -> str:
    return f"\n[... labkit cut {cut} {unit} ...]\n"


def _bound(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return text[:half] + _note(len(text) - 2 * half, "characters") + text[-half:]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check for one student.

    ``passed`` means full marks. ``feedback`` is for the student, ``evidence`` for the instructor (what was run and
    seen). ``transport`` names how the guest was reached ("ssh", "console", "offline", "host", several joined by
    ",", or "" when no guest was touched); ``duration`` is in seconds. ``skipped_reason`` is set when the check did
    not run because a check it depends on did not pass. ``unchecked`` is set (to the reason) when labkit could not
    look at all (the machine is stopped and the check needs it running, was never started, or cannot be reached):
    such a result is neither passed nor failed, gives no points, and a grade holding one is "not graded".
    """

    check_id: str
    passed: bool
    points: float
    max_points: float
    feedback: str
    evidence: str
    transport: str
    duration: float
    skipped_reason: str | None = None
    unchecked: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "feedback", safe_text(self.feedback, FEEDBACK_LIMIT))
        object.__setattr__(self, "evidence", safe_text(self.evidence, EVIDENCE_LIMIT))
        if self.skipped_reason is not None:
            object.__setattr__(self, "skipped_reason", safe_text(self.skipped_reason, FEEDBACK_LIMIT))
        if self.unchecked is not None:
            object.__setattr__(self, "unchecked", safe_text(self.unchecked, FEEDBACK_LIMIT))
            object.__setattr__(self, "passed", False)
            object.__setattr__(self, "points", 0.0)
            return
        points = min(max(float(self.points), 0.0), float(self.max_points))
        object.__setattr__(self, "points", points)

    @property
    def skipped(self) -> bool:
        return self.skipped_reason is not None

    @property
    def checked(self) -> bool:
        """False when labkit could not look (see ``unchecked``): the result says nothing about the student's work."""
        return self.unchecked is None


def unchecked_reasons(results: Iterable[CheckResult]) -> list[str]:
    """The distinct reasons why checks of ``results`` could not be checked (empty: everything was checked)."""
    return list(dict.fromkeys(r.unchecked for r in results if r.unchecked is not None))


def total(results: Iterable[CheckResult]) -> tuple[float, float]:
    """(points, max points) over ``results``."""
    points = max_points = 0.0
    for result in results:
        points += result.points
        max_points += result.max_points
    return points, max_points
