"""Looking inside guests from outside: the one `Guest` handle and its transports (SSH, console, offline)."""

from labkit.guest.files import FileStat
from labkit.guest.handle import Guest
from labkit.guest.result import Result

__all__ = ["FileStat", "Guest", "Result"]
