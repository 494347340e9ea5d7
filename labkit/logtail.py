"""The end of a log file, read the one way every part of labkit shows one (error messages, a console's replay).

Logs grow without bound (a console log keeps every byte a machine printed), so only the last ``max_bytes`` are read,
and the cut is moved to the next line start so that no line, multibyte character or escape sequence is shown in half.
"""

from __future__ import annotations

import os
from pathlib import Path


def tail(path: Path, lines: int | None = None, max_bytes: int = 16384) -> bytes | None:
    """The last ``lines`` lines (all that fit when None) of the file's last ``max_bytes`` bytes, raw; None when the
    file cannot be read."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return None
    if size > max_bytes:
        newline = data.find(b"\n")
        data = data[newline + 1:] if newline >= 0 else b""
    if lines is not None:
        ends = data.endswith(b"\n")
        parts = data.split(b"\n")[:-1] if ends else data.split(b"\n")
        kept = parts[-lines:] if lines > 0 else []
        data = b"\n".join(kept) + (b"\n" if ends and kept else b"")
    return data
