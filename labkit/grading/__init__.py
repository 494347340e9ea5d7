"""Grading: run a lab's ``[[checks]]`` against one student's Guest handles and score them.

Pure: nothing here opens guests, boots machines, or touches the database; callers store the `CheckResult`s.
"""

from labkit.grading.checks import CHECK_KINDS, Check, make_check
from labkit.grading.result import CheckResult, safe_text
from labkit.grading.runner import grade, total

__all__ = ["CHECK_KINDS", "Check", "CheckResult", "grade", "make_check", "safe_text", "total"]
