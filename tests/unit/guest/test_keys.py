"""labkit's SSH key is made once, even when many threads ask for it at the same moment."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labkit.guest.keys import KEY_NAME, ensure_key, public_key


def test_many_threads_get_one_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=16) as pool:
        paths = list(pool.map(lambda _: ensure_key(tmp_path / "keys"), range(64)))
    assert set(paths) == {tmp_path / "keys" / KEY_NAME}
    assert oct(paths[0].stat().st_mode & 0o777) == "0o600"
    assert public_key(tmp_path / "keys").startswith("ssh-ed25519 ")
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == [".lock", KEY_NAME, f"{KEY_NAME}.pub"]
