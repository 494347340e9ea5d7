"""Every registered backend implements every verb of Backend (style guide 2)."""

from __future__ import annotations

import pytest

from labkit.errors import ConfigError
from labkit.runtime import BACKENDS, get_backend
from labkit.runtime.base import Backend


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_every_backend_instantiates(kind: str) -> None:
    backend = BACKENDS[kind]()
    assert isinstance(backend, Backend)
    assert backend.kind == kind
    assert isinstance(get_backend(kind), BACKENDS[kind])


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown machine backend 'vbox'; known: qemu, uml"):
        get_backend("vbox")
