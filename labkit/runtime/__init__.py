"""Machine runtimes behind one `Backend` interface, chosen by kind from an explicit registry (style guide 3)."""

from __future__ import annotations

from labkit.errors import ConfigError
from labkit.runtime.base import Backend
from labkit.runtime.qemu.backend import QemuBackend
from labkit.runtime.uml.backend import UmlBackend

BACKENDS: dict[str, type[Backend]] = {"uml": UmlBackend, "qemu": QemuBackend}


def get_backend(kind: str) -> Backend:
    """A backend instance of ``kind`` with its default settings."""
    try:
        cls = BACKENDS[kind]
    except KeyError as err:
        raise ConfigError(f"unknown machine backend {kind!r}; known: {', '.join(sorted(BACKENDS))}") from err
    return cls()
