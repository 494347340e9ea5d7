"""Looking inside guests from outside: the one `Guest` handle and its transports (SSH, console, offline).

Names load on first use: a sandboxed grader.py (labkit/grading/grader_process.py) imports `labkit.guest.result` and
`labkit.guest.files` under Debian's Python, which has no paramiko or pexpect for the handle itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from labkit.guest.files import FileStat
    from labkit.guest.handle import Guest
    from labkit.guest.result import Result

__all__ = ["FileStat", "Guest", "Result"]

_WHERE = {"FileStat": "labkit.guest.files", "Guest": "labkit.guest.handle", "Result": "labkit.guest.result"}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'labkit.guest' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
