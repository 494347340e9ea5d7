"""Every registered backend implements every verb of Backend (style guide 2) and says what it needs and can do."""

from __future__ import annotations

from pathlib import Path

import pytest

from labkit.errors import ConfigError, StateError
from labkit.overlays import OVERLAYS
from labkit.runtime import backend_class, backend_kinds, get_backend
from labkit.runtime.base import Backend, Capabilities, MachineSpec


@pytest.mark.parametrize("kind", backend_kinds())
def test_every_backend_instantiates_and_names_what_it_needs(kind: str) -> None:
    backend = backend_class(kind)()
    assert isinstance(backend, Backend)
    assert backend.kind == kind
    assert isinstance(get_backend(kind), backend_class(kind))
    assert backend.overlay_kind in OVERLAYS, f"{kind} names an unknown overlay kind {backend.overlay_kind!r}"
    assert backend.console_kind == "socket"
    assert isinstance(backend.capabilities, Capabilities)


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown machine backend 'vbox'; known: qemu, uml"):
        get_backend("vbox")


def test_a_backend_without_running_state_refuses_state_verbs_in_one_sentence(tmp_path: Path) -> None:
    backend = get_backend("uml")
    assert not backend.capabilities.ram_snapshots
    spec = MachineSpec("m1", tmp_path / "base.img", tmp_path / "m1.cow", tmp_path / "run", tmp_path / "log")
    for call in (lambda: backend.save_state(spec, tmp_path / "t.state"),
                 lambda: backend.load_state(spec, tmp_path / "t.state")):
        with pytest.raises(StateError, match="uml machine m1 cannot keep a running state"):
            call()
