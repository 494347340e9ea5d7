"""Names a package exports but imports only when first used, so `import labkit` (and the CLI's start) stays light.

It imports neither `typing` nor `collections.abc` at run time: `import labkit` is also the first thing every
per-machine console supervisor does, and each module loaded there costs every running machine memory.
"""

from __future__ import annotations

import importlib
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that imports each name of ``where`` (name -> module) on first use and
    keeps it in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
