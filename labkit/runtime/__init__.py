"""Machine runtimes behind one `Backend` interface, chosen by kind from an explicit registry (style guide 3).

The registry names each backend's class as ``"module:Class"`` and imports it only when asked for, so reading the
list of kinds (lab validation, ``labkit doctor``) loads no backend, and one backend's missing dependency never breaks
another's machines.

Importing the package imports nothing but `labkit.lazy` (`Backend` loads on first use): the per-machine console
supervisor, ``python -m labkit.runtime.supervisor``, imports this package first, and every module it pulls in is memory
that each running machine pays for (docs/runtime.md, "Memory").
"""

from __future__ import annotations

import importlib

from labkit.lazy import lazy_exports

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see the module's docstring)
if TYPE_CHECKING:
    from labkit.runtime.base import Backend

#: Every backend labkit knows, by the name lab files and the database use: kind -> "module:Class".
BACKENDS: dict[str, str] = {
    "uml": "labkit.runtime.uml.backend:UmlBackend",
    "qemu": "labkit.runtime.qemu.backend:QemuBackend",
}

#: The backend of a machine whose lab and image name none (and of records made before machines named one).
DEFAULT_BACKEND = "uml"


def backend_kinds() -> list[str]:
    """The registered backend kinds, sorted."""
    return sorted(BACKENDS)


def backend_class(kind: str) -> type[Backend]:
    """The `Backend` class registered as ``kind`` (imported on first use)."""
    from labkit.errors import ConfigError
    from labkit.runtime.base import Backend

    try:
        target = BACKENDS[kind]
    except KeyError as err:
        raise ConfigError(f"unknown machine backend {kind!r}; known: {', '.join(backend_kinds())}") from err
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"backend {kind!r} is registered as {target}, which is not a Backend")
    return cls


def get_backend(kind: str) -> Backend:
    """A backend instance of ``kind`` with its default settings."""
    return backend_class(kind)()


__getattr__ = lazy_exports(__name__, {"Backend": "labkit.runtime.base"})

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "backend_class", "backend_kinds", "get_backend"]
