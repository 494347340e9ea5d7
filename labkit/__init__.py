"""labkit: training labs on User-Mode Linux guests.

The Python API for grading scripts (docs/grading.md)::

    import labkit
    with labkit.open_guest("net101", "alice", "box") as box:
        box.read_file("/etc/motd")

Names load on first use, so ``import labkit`` (and the CLI) stays fast.
"""

from __future__ import annotations

from labkit.lazy import lazy_exports

#: typing.TYPE_CHECKING without importing typing: every console supervisor imports this package (docs/runtime.md)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from labkit.config import Settings
    from labkit.errors import GuestError, LabkitError
    from labkit.guest.files import FileStat
    from labkit.guest.handle import Guest
    from labkit.guest.result import Result
    from labkit.services.guests import open_guest, open_vm

__all__ = ["FileStat", "Guest", "GuestError", "LabkitError", "Result", "Settings", "open_guest", "open_vm"]

_WHERE = {
    "open_vm": "labkit.services.guests",
    "open_guest": "labkit.services.guests",
    "Guest": "labkit.guest.handle",
    "Result": "labkit.guest.result",
    "FileStat": "labkit.guest.files",
    "Settings": "labkit.config",
    "GuestError": "labkit.errors",
    "LabkitError": "labkit.errors",
}


__getattr__ = lazy_exports(__name__, _WHERE)
