"""Grading: run a lab's ``[[checks]]`` against one student's Guest handles and score them.

Pure: nothing here opens guests, boots machines, or touches the database; callers store the `CheckResult`s.

Names load on first use (as in ``labkit``), so a light module such as `labkit.grading.report` does not bring the
checks, lab templates and guests with it (``labkit gradebook --csv``, ``labkit --help``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.lazy import lazy_exports

if TYPE_CHECKING:
    from labkit.grading.checks import CHECK_KINDS, Check, make_check
    from labkit.grading.result import CheckResult, safe_text
    from labkit.grading.runner import grade, total

__all__ = ["CHECK_KINDS", "Check", "CheckResult", "grade", "make_check", "safe_text", "total"]

_WHERE = {
    "CHECK_KINDS": "labkit.grading.checks",
    "Check": "labkit.grading.checks",
    "make_check": "labkit.grading.checks",
    "CheckResult": "labkit.grading.result",
    "safe_text": "labkit.grading.result",
    "grade": "labkit.grading.runner",
    "total": "labkit.grading.runner",
}


__getattr__ = lazy_exports(__name__, _WHERE)
