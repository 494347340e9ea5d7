"""Driving the real ``labkit`` command against a private installation, for the tests that walk a machine's life
through the CLI (test_vm_lifecycle.py, test_backend_contract.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import make_settings, make_short_dir, settings_env

LABKIT = str(Path(sys.executable).with_name("labkit"))


class Labkit:
    """Runs the real CLI against one private LABKIT_HOME."""

    def __init__(self, env: dict[str, str], exec_timeout: float | None = None) -> None:
        self.env = {**os.environ, **env}
        self.env.pop("LABKIT_DEBUG", None)
        #: ``vm exec --timeout`` for `sh` (None: the CLI's default)
        self.exec_timeout = exec_timeout

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([LABKIT, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"labkit {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def json(self, *args: str) -> object:
        return json.loads(self(*args, "--json").stdout)

    def status(self, name: str) -> dict[str, object]:
        return self.json("vm", "status", name)[0]  # type: ignore[index]

    def sh(self, name: str, command: str, *extra: str) -> dict[str, object]:
        """``labkit vm exec NAME --json -- COMMAND``'s report (stdout, stderr, exit_code, transport)."""
        timeout = () if self.exec_timeout is None else ("--timeout", str(self.exec_timeout))
        done = self("vm", "exec", name, *extra, "--json", *timeout, "--", command, check=False)
        assert done.stdout, done.stderr
        return json.loads(done.stdout)


@contextmanager
def labkit_home(prefix: str, exec_timeout: float | None = None, private_cache: bool = False) -> Iterator[Labkit]:
    """A new installation in a short home with the tiny image built, and a `Labkit` on it; afterwards whatever a
    failed test left running is stopped by PID (the CLI's kill) and the home removed. The build cache is the
    suite's shared one unless ``private_cache`` (then a new one in the home: the image is built from nothing)."""
    home = make_short_dir(prefix)
    try:
        settings = make_settings(home, cache=home / "cache" if private_cache else None)
        labkit = Labkit(settings_env(settings), exec_timeout)
        labkit("image", "build", "tiny")
        yield labkit
        for view in labkit.json("vm", "status"):  # type: ignore[union-attr]
            if view["state"] != "stopped":
                labkit("vm", "kill", view["name"], check=False)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def host_port(view: dict[str, object], guest: int) -> int:
    """The host port of the machine's forward to guest port ``guest`` (from ``vm status --json``)."""
    for forward in view["forwards"]:  # type: ignore[union-attr]
        host, to = str(forward).split(":")
        if int(to) == guest:
            return int(host)
    raise AssertionError(f"no forward to guest port {guest} in {view}")


def fetch(url: str, seconds: float = 30.0) -> str:
    """The body at ``url``, asked again until it answers or ``seconds`` pass (a guest service may still be starting)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.read().decode().strip()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def wait_state(lk: Labkit, name: str, state: str, seconds: float = 30.0) -> None:
    """Wait until ``vm status`` shows ``state`` for machine ``name``."""
    deadline = time.monotonic() + seconds
    while (now := lk.status(name)["state"]) != state:
        assert time.monotonic() < deadline, f"{name} is {now}, not {state}"
        time.sleep(0.3)
