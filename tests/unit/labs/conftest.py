"""Sample labs built in temporary folders: one valid two-machine lab that every error test breaks in one place."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

VALID_TOML = '''\
id = "two-hosts"
title = "Two hosts"
version = 2
instructions = "instructions.md"
reset_policy = "each-session"

[machines.a]
image = "tiny"
memory = 64
forwards = [22]
networks = { lan = 1 }
depends_on = ["b"]
startup = ["startup/a.sh.j2", "startup/common.sh"]

[machines.b]
image = "tiny:1"
forwards = [22, "{{ port }}"]
networks = { lan = "{{ lan | host(2) }}" }

[networks.lan]
subnet = "{{ lan }}"

[params.lan]
kind = "ipv4"
subnet = "10.100.0.0/16"
prefix = 24

[params.port]
kind = "int"
min = 8000
max = 8999

[params.user]
kind = "word"
digits = 2

[params.secret]
kind = "hex"
length = 24

[params.color]
kind = "choice"
choices = ["red", "green", "blue"]

[params.pw]
kind = "password"

[[checks]]
id = "b-listens"
title = "b serves on its port"
machine = "b"
kind = "port"
port = "{{ port }}"
points = 2

[[checks]]
id = "a-reaches-b"
machine = "a"
kind = "command"
command = "wget -qO- http://{{ addresses.b.lan }}:{{ port }}/"
contains = "{{ secret }}"
depends_on = ["b-listens"]
feedback_fail = "a cannot fetch http://{{ addresses.b.lan }}:{{ port }}/"

[[checks]]
id = "secret-file"
machine = "b"
kind = "file"
path = "/home/{{ user }}/secret.txt"
regex = "^{{ secret }}$"
mode = "0600"
hidden = true

[[checks]]
id = "http-page"
machine = "b"
kind = "http"
port = "{{ port }}"
via = "host"
status = 200
contains = "{{ color }}"

[[checks]]
id = "routes"
kind = "script"
function = "grade_routes"
points = 3.5
timeout = 30
'''

VALID_FILES: dict[str, str] = {
    "instructions.md": "# Two hosts\n\nHello {{ student }}. Log in as {{ user }}.\n"
                       "Machine b is at {{ addresses.b.lan }} on {{ networks.lan }}, port {{ port }}.\n",
    "files/a/etc/motd.j2": "Welcome {{ user }} ({{ color }})\n",
    "files/a/usr/local/bin/hello": "#!/bin/sh\necho '{{ not a template }}'\n",
    "files/b/var/www/index.html.j2": "<p>{{ color }} {{ secret }}</p>\n",
    "startup/a.sh.j2": "ip addr add {{ addresses.a.lan }}/{{ networks.lan | prefixlen }} dev eth1\n",
    "startup/common.sh": "echo {{ kept as is }}\n",
    "grader.py": "def grade_routes(guests, params):\n    return 3.5, 'ok'\n",
}

MakeLab = Callable[..., Path]


def write_lab(root: Path, toml: str = VALID_TOML, files: dict[str, str | None] | None = None) -> Path:
    """Write a lab into ``root``: the valid files, overridden (or removed, with None) by ``files``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "lab.toml").write_text(toml)
    merged: dict[str, str | None] = {**VALID_FILES, **(files or {})}
    for rel, text in merged.items():
        if text is None:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    hello = root / "files/a/usr/local/bin/hello"
    if hello.exists():
        os.chmod(hello, 0o755)
    return root


@pytest.fixture
def make_lab(tmp_path: Path) -> MakeLab:
    """``make_lab(toml=..., files=..., replace={old: new})`` writes a lab into a fresh folder and returns it."""
    counter = iter(range(1000))

    def make(toml: str = VALID_TOML, files: dict[str, str | None] | None = None,
             replace: dict[str, str] | None = None) -> Path:
        for old, new in (replace or {}).items():
            assert old in toml, f"sample lab has no {old!r}"
            toml = toml.replace(old, new, 1)
        return write_lab(tmp_path / f"lab{next(counter)}" / "two-hosts", toml, files)

    return make


@pytest.fixture
def valid_toml() -> str:
    """The valid sample lab.toml text (tests import no helper modules: pytest runs with --import-mode=importlib)."""
    return VALID_TOML
