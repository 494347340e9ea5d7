"""Names that users give (machines, snapshots, images) become file names, umids and hostnames: checked once, here."""

from __future__ import annotations

import re

from labkit.errors import BadNameError

#: Letters, digits and hyphens: safe as a file name, a UML umid, a hostname and a shell word.
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
MAX_NAME = 32


def check_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is a safe labkit name, else raise one clear `BadNameError`."""
    if not isinstance(name, str) or not name:
        raise BadNameError(f"{what} is empty")
    if len(name) > MAX_NAME:
        raise BadNameError(f"{what} {name!r} is {len(name)} characters long; the limit is {MAX_NAME}")
    if not _NAME.fullmatch(name):
        raise BadNameError(
            f"{what} {name!r} may only hold lower-case ASCII letters, digits and inner hyphens "
            "(no '/', '..', spaces, upper case or unicode)"
        )
    return name
