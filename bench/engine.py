"""Engine benchmarks (issue: base images, UML COW overlays, UML guests). Writes docs/benchmarks.md.

Run: .venv/bin/python bench/engine.py            (all, about 5 minutes; builds debian-bookworm once if not cached)
     .venv/bin/python bench/engine.py overlay reset

Every figure is measured here, in this run, on this machine; nothing is carried over from earlier runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import paramiko

from bench.report import REPO, Row, measure, write_report
from labkit.config import Settings
from labkit.guest.keys import ensure_key
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.overlays.umlcow import UmlCow
from labkit.services.db import Database
from labkit.services.images import Images
from labkit.services.machine_records import MachineView
from labkit.services.machines import Machines

SECTION = "## Engine"


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


@dataclass(frozen=True)
class Crowd:
    """Machines started at once: their views, seconds until all were ready and until all answered SSH, and the host
    memory each costs in MB (MemAvailable's drop over the whole start, once they settled, divided by the count: pages
    shared between guests count once)."""

    views: list[MachineView]
    ready: float
    answering: float
    mb_each: float


def start_at_once(bench: Bench, names: list[str], key: Path, settle: float = 5.0) -> Crowd:
    """Start ``names`` eight at a time (as a class start does), then wait until every one answers SSH."""
    before = mem_available()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=8) as pool:
        views = list(pool.map(lambda n: bench.machines.start(n, wait=True, timeout=300), names))
    ready = time.perf_counter() - started
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda v: wait_for_ssh(int(v.forwards[-1].split(":")[0]), key, timeout=120), views))
    answering = time.perf_counter() - started
    time.sleep(settle)
    return Crowd(views, ready, answering, (before - mem_available()) / len(names) / 2**20)


class Bench:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lkb", dir="/tmp"))
        self.settings = Settings.from_env({
            "LABKIT_HOME": str(self.root / "home"), "LABKIT_RUN": str(self.root / "run"),
            "LABKIT_CACHE": os.environ.get("LABKIT_CACHE", str(Path.home() / ".cache/labkit")),
            "LABKIT_RECIPES": str(REPO / "base_images"),
        })
        self.settings.ensure()
        self.db = Database(self.settings)
        self.machines = Machines(self.settings, self.db, actor="bench")
        self.images = Images(self.settings, self.db)
        self.store = ImageStore(self.settings)
        self.rows: list[Row] = []

    def image(self, name: str) -> Path:
        found = self.store.list(name)
        record = found[-1] if found else self.store.build(find_recipe(self.settings.recipes, name))
        return Path(record.path)

    def close(self) -> None:
        for view in self.machines.status():
            if view.state != "stopped":
                self.machines.kill(view.name)
        self.db.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # ---- the benchmarks --------------------------------------------------------------------------------------
    def overlay(self) -> None:
        base = self.image("debian-bookworm")
        cow = UmlCow()
        creates, copies = [], []
        for i in range(30):
            started = time.perf_counter()
            cow.create(base, self.root / f"o{i}.cow")
            creates.append(time.perf_counter() - started)
        for i in range(3):
            started = time.perf_counter()
            subprocess.run(["cp", "--sparse=always", str(base), str(self.root / f"copy{i}.img")], check=True)
            copies.append(time.perf_counter() - started)
            (self.root / f"copy{i}.img").unlink()
        create, copy = statistics.median(creates), statistics.median(copies)
        size = base.stat().st_size / 2**30
        self.rows.append((f"overlay for a {size:.0f} GB Debian base", "≤ 2 ms median, ≥ 100× faster than a copy",
                          f"{create * 1000:.2f} ms median of 30 (copy with `cp --sparse=always`: {copy * 1000:.0f} ms "
                          f"median of 3; {copy / create:.0f}× faster)",
                          "pass" if create <= 0.002 and copy / create >= 100 else "FAIL"))

    def _boot_times(self, image: str, runs: int, until_ssh: bool) -> list[float]:
        name = f"b-{image[:4]}"
        self.machines.create(name, image, memory_mb=256 if image != "tiny" else 64)
        key = ensure_key(self.settings.keys)
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            view = self.machines.start(name, wait=True, timeout=120)
            if until_ssh:
                port = int(view.forwards[-1].split(":")[0])
                wait_for_ssh(port, key)
            times.append(time.perf_counter() - started)
            self.machines.stop(name)
        self.machines.remove(name)
        return times

    def boot_tiny(self) -> None:
        self.image("tiny")
        times = self._boot_times("tiny", 10, until_ssh=False)
        median = statistics.median(times)
        self.rows.append(("`tiny` start to ready", "≤ 2 s median",
                          f"{median:.2f} s median of {len(times)} (min {min(times):.2f}, max {max(times):.2f})",
                          "pass" if median <= 2 else "FAIL"))

    def boot_debian(self) -> None:
        self.image("debian-bookworm")
        times = self._boot_times("debian-bookworm", 5, until_ssh=True)
        median = statistics.median(times)
        self.rows.append(("`debian-bookworm` start to SSH answering", "≤ 15 s median",
                          f"{median:.2f} s median of {len(times)} (min {min(times):.2f}, max {max(times):.2f})",
                          "pass" if median <= 15 else "FAIL"))

    def reset(self) -> None:
        self.image("debian-bookworm")
        self.machines.create("b-reset", "debian-bookworm")
        times = []
        for _ in range(20):
            started = time.perf_counter()
            self.machines.reset("b-reset")
            times.append(time.perf_counter() - started)
        self.machines.remove("b-reset")
        median = statistics.median(times)
        self.rows.append(("reset of a stopped machine (2 GB Debian base, through the service and database)",
                          "≤ 100 ms", f"{median * 1000:.1f} ms median of 20 (max {max(times) * 1000:.1f} ms)",
                          "pass" if median <= 0.1 else "FAIL"))

    def twenty(self) -> None:
        self.image("tiny")
        names = [f"b-t{i:02d}" for i in range(20)]
        for name in names:
            self.machines.create(name, "tiny", memory_mb=64)
        before = mem_available()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=20) as pool:
            list(pool.map(lambda n: self.machines.start(n, wait=True, timeout=180), names))
        elapsed = time.perf_counter() - started
        time.sleep(2)
        per_guest = (before - mem_available()) / len(names)
        for name in names:
            self.machines.stop(name)
            self.machines.remove(name)
        self.rows.append(("20 `tiny` guests (64 MB each) started at once", "report",
                          f"all ready after {elapsed:.1f} s; host memory {per_guest / 2**20:.0f} MB per guest "
                          "(MemAvailable drop / 20)", "reported"))


def wait_for_ssh(port: int, key: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    pkey = paramiko.Ed25519Key.from_private_key_file(str(key))
    while True:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect("127.0.0.1", port, username="root", pkey=pkey, timeout=5, banner_timeout=5,
                           auth_timeout=5, look_for_keys=False, allow_agent=False)
            client.exec_command("true")[1].channel.recv_exit_status()
            return
        except (OSError, paramiko.SSHException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
        finally:
            client.close()


def main(argv: list[str]) -> int:
    bench = Bench()
    chosen: dict[str, Callable[[], None]] = {
        "overlay": bench.overlay, "reset": bench.reset, "tiny": bench.boot_tiny, "debian": bench.boot_debian,
        "twenty": bench.twenty,
    }
    try:
        measure(chosen, argv or list(chosen), bench.rows)
    finally:
        bench.close()
    write_report(SECTION, "bench/engine.py", bench.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
