"""What the benchmarks of the web app share: the real `labkit serve` on a free loopback port, started for a private
installation and stopped by its pid; Debian's Chromium's flags; and a percentile of a list of samples."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from labkit.config import Settings

LABKIT = str(Path(sys.executable).parent / "labkit")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def settings_env(settings: Settings) -> dict[str, str]:
    """This process's environment with the LABKIT_* variables that make the CLI use ``settings``."""
    return {**os.environ, "LABKIT_HOME": str(settings.home), "LABKIT_DB": settings.db_url,
            "LABKIT_RUN": str(settings.run_dir), "LABKIT_CACHE": str(settings.cache),
            "LABKIT_RECIPES": str(settings.recipes)}


def serve(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`labkit serve` for ``settings`` on a free loopback port, its output in ``log``, once it answers /login: the
    process (the caller stops it with `stop`) and its base URL."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        server = subprocess.Popen([LABKIT, "serve", "--port", str(port)], env=settings_env(settings), stdout=out,
                                  stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/login", timeout=2):
                return server, base
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop(server)
                raise RuntimeError(f"labkit serve did not answer; see {log}") from None
            time.sleep(0.1)


def stop(server: subprocess.Popen[bytes] | None) -> None:
    """Stop the server by its pid: TERM, then KILL if it has not ended within 20 s."""
    if server is not None and server.poll() is None:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
