"""One error tree for labkit.

Every error labkit raises on purpose is a `LabkitError`. Its message is one sentence a person can act on; the CLI
prints it and exits 1, the web app maps it to a status code. Lower-level causes are kept with ``raise ... from err``.
"""

from __future__ import annotations


class LabkitError(Exception):
    """The root of every error labkit raises on purpose."""

    #: HTTP status the web layer answers with.
    status = 400


class ConfigError(LabkitError):
    """The installation is missing something (a program, a folder, a setting)."""

    status = 500


class BadNameError(LabkitError):
    """A name given by a user is not acceptable (path characters, too long, unicode ...)."""


class NotFoundError(LabkitError):
    """A named image, machine, snapshot or record does not exist."""

    status = 404


class ConflictError(LabkitError):
    """The thing already exists, or is in use (a duplicate name, a busy port)."""

    status = 409


class NotYoursError(LabkitError):
    """The caller may see the thing but not do this to it (an account that is not only their course's)."""

    status = 403


class ImageError(LabkitError):
    """Building, storing or verifying a base image failed."""


class TamperedImageError(ImageError):
    """A base image changed after it was built; every overlay on it is broken."""

    status = 409


class OverlayError(LabkitError):
    """A copy-on-write overlay is unreadable, foreign, broken, or cannot be written."""


class RuntimeBackendError(LabkitError):
    """A backend could not start, stop or talk to a machine."""

    status = 500


class StateError(LabkitError):
    """The action is not allowed in the machine's current state."""

    status = 409

    def __init__(self, message: str, state: object | None = None) -> None:
        super().__init__(message)
        self.state = state


class DatabaseError(LabkitError):
    """The database could not be read or written (locked too long, disk full, unreachable)."""

    status = 503


class GuestError(LabkitError):
    """Talking to a guest (SSH, console) failed or timed out."""

    status = 502


class GuestUnavailableError(GuestError):
    """labkit could not look inside the guest at all: it is stopped (and the question needs it running), was never
    started, or cannot be reached. Grading records such a check as "not checked", never as failed."""


class AdmissionError(LabkitError):
    """Starting the machine would exceed a resource budget."""

    status = 409


class LabFormatError(LabkitError):
    """A lab file is wrong; says which file and where."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(f"{where}{message}")
        self.file = file
        self.line = line


class RosterError(LabFormatError):
    """A roster file is wrong; says which file and line."""
