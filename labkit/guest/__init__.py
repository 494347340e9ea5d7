"""Looking inside guests from outside: the one `Guest` handle and its transports (SSH, console, offline).

Names load on first use: a sandboxed grader.py (labkit/grading/grader_process.py) imports `labkit.guest.result` and
`labkit.guest.files` under Debian's Python, which has no paramiko or pexpect for the handle itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.lazy import lazy_exports

if TYPE_CHECKING:
    from labkit.guest.files import FileStat
    from labkit.guest.handle import Guest
    from labkit.guest.result import Result

__all__ = ["FileStat", "Guest", "Result"]

_WHERE = {"FileStat": "labkit.guest.files", "Guest": "labkit.guest.handle", "Result": "labkit.guest.result"}


__getattr__ = lazy_exports(__name__, _WHERE)
