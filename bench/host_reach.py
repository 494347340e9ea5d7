"""What keeping guests off the host's loopback costs: start to ready and throughput through a forward, before and after.

``.venv/bin/python bench/host_reach.py [--before COMMIT] [--runs N] [--small]`` measures, in one run and on the same
image, the runtime of this checkout (each machine in its own user + network namespace, forwards relayed by its
supervisor, with and without outbound traffic) and the runtime of COMMIT (default: the commit before host reach,
where slirp ran in the host's network), whose ``labkit`` package is unpacked into a temporary folder with ``git
archive``. Then it rewrites the "Host reach" section of docs/benchmarks.md (``--small`` writes nothing).

Throughput: the guest sends 512 KiB of zeros with ``dd`` through busybox ``nc`` listening on a forwarded port; the host
reads them through the forward's host port on 127.0.0.1. (Classic slirp on UML's slirp transport moves only about
44 KB/s either way, before and after, which is why the amount is small.) Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from report import Row, show_rows  # noqa: E402

SECTION = "## Host reach"
#: the last commit before guests were kept off the host's loopback
BEFORE = "587f28c"
STREAM_PORT = 5001
STREAM_BYTES = 512 << 10


def measure(image: Path, runs: int, variants: list[str]) -> dict[str, dict[str, list[float]]]:
    """Runs inside whichever ``labkit`` is first on sys.path; returns seconds to ready and bytes/s per variant."""
    from dataclasses import fields, replace

    from labkit.images.seed import SeedSpec, build_seed
    from labkit.runtime.base import Forward, MachineSpec
    from labkit.runtime.console import connect
    from labkit.runtime.uml.backend import UmlBackend

    sys.path.insert(0, str(REPO / "tests"))
    from guest_console import console_run

    backend = UmlBackend()
    root = Path(tempfile.mkdtemp(prefix="lkbreach", dir="/tmp"))
    seed = build_seed(SeedSpec(hostname="bench"), root / "seed.img")
    results: dict[str, dict[str, list[float]]] = {}
    try:
        for variant in variants:
            starts, rates = [], []
            for i in range(runs):
                spec = MachineSpec(name=f"h{i}", image=image, overlay=root / f"{variant}{i}.cow",
                                   run_dir=root / f"{variant[:3]}{i}", console_log=root / f"{variant}{i}.log",
                                   memory_mb=64, seed=seed, forwards=(Forward(0, 22), Forward(0, STREAM_PORT)))
                if "outbound" in {f.name for f in fields(MachineSpec)}:
                    spec = replace(spec, outbound=variant != "isolated-no-outbound")
                started = time.perf_counter()
                status = backend.start(spec, timeout=120)
                starts.append(time.perf_counter() - started)
                try:
                    if i < 3:  # three throughput runs are plenty
                        port = next(f.host_port for f in status.forwards if f.guest_port == STREAM_PORT)
                        with connect(backend.console_socket(spec)) as console:
                            console_run(console, f"(dd if=/dev/zero bs=65536 count={STREAM_BYTES >> 16} "
                                                 f"2>/dev/null | nc -l -p {STREAM_PORT} >/dev/null 2>&1 &)",
                                        timeout=30)
                        rates.append(stream(port))
                finally:
                    backend.kill(spec)
            results[variant] = {"start": starts, "rate": rates}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def stream(port: int) -> float:
    """Bytes per second read from ``port`` on the host's loopback until all have come (busybox nc does not close when
    its input ends; the guest's nc may still be starting: retry the connection for a few seconds)."""
    deadline = time.monotonic() + 10
    while True:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        started = time.perf_counter()
        total = 0
        with sock:
            while total < STREAM_BYTES and (chunk := sock.recv(1 << 16)):
                total += len(chunk)
        elapsed = time.perf_counter() - started
        if total >= STREAM_BYTES:
            return total / elapsed
        if time.monotonic() > deadline:
            raise RuntimeError(f"the guest sent {total} bytes, not {STREAM_BYTES}")
        time.sleep(0.2)


def relay_rate(size: int = 256 << 20) -> float:
    """Bytes per second through the supervisor's relay alone (a host forward into a namespace, to a sender there):
    what the relay could carry if slirp were not the narrower pipe."""
    import threading

    from labkit.runtime.netns import Namespace, Relays

    namespace = Namespace.create()
    relays = Relays(namespace)
    try:
        inside = namespace.socket()
        inside.bind(("127.0.0.1", 20000))
        inside.listen(1)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        relays.listen_on_host(port, 20000)
        relays.start()

        def send() -> None:
            conn, _ = inside.accept()
            block = bytes(1 << 16)
            with conn:
                for _ in range(size >> 16):
                    conn.sendall(block)

        threading.Thread(target=send, daemon=True).start()
        total = 0
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            while chunk := sock.recv(1 << 16):
                total += len(chunk)
        assert total == size, total
        return total / (time.perf_counter() - started)
    finally:
        relays.close()
        namespace.close()


def setup_times(runs: int = 20) -> tuple[list[float], list[float]]:
    """Seconds to make a machine's namespace (fork the agent, unshare, bring lo up), and to start slirp4netns on it
    until it reports the namespace configured: what the supervisor adds before ``linux`` starts."""
    from labkit.runtime.netns import Namespace, start_slirp4netns, stop_process

    made, configured = [], []
    log = Path(tempfile.mkdtemp(prefix="lkbreach", dir="/tmp"))
    try:
        for _ in range(runs):
            started = time.perf_counter()
            namespace = Namespace.create()
            made.append(time.perf_counter() - started)
            try:
                started = time.perf_counter()
                proc = start_slirp4netns(shutil.which("slirp4netns") or "slirp4netns", namespace, log / "s.log")
                configured.append(time.perf_counter() - started)
                stop_process(proc)
            finally:
                namespace.close()
    finally:
        shutil.rmtree(log, ignore_errors=True)
    return made, configured


def tiny_image() -> Path:
    from labkit.config import Settings
    from labkit.images.recipe import find_recipe
    from labkit.images.store import ImageStore

    home = Path(os.environ.get("LABKIT_BENCH_HOME", Path.home() / ".cache/labkit-bench-home"))
    settings = Settings.from_env({"LABKIT_HOME": str(home), "LABKIT_RECIPES": str(REPO / "base_images"),
                                  "LABKIT_CACHE": os.environ.get("LABKIT_CACHE", str(Path.home() / ".cache/labkit"))})
    settings.ensure()
    store = ImageStore(settings)
    found = store.list("tiny")
    return Path((found[-1] if found else store.build(find_recipe(settings.recipes, "tiny"))).path)


def summary(values: list[float], scale: float, unit: str) -> str:
    return (f"{statistics.median(values) * scale:.2f} {unit} median of {len(values)} (min {min(values) * scale:.2f}, "
            f"max {max(values) * scale:.2f})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="the commit measured as 'before' (default %(default)s)")
    parser.add_argument("--runs", type=int, default=8, help="starts per variant (default %(default)s)")
    parser.add_argument("--small", action="store_true", help="3 starts per variant; write nothing")
    parser.add_argument("--inner", help=argparse.SUPPRESS)  # image path: measure with the labkit on sys.path
    parser.add_argument("--variants", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    runs = 3 if args.small else args.runs
    if args.inner:
        print(json.dumps(measure(Path(args.inner), runs, args.variants.split(","))))
        return 0
    sys.path.insert(0, str(REPO))
    image = tiny_image()
    old = Path(tempfile.mkdtemp(prefix="lkbreachold", dir="/tmp"))
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "labkit"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        results: dict[str, dict[str, list[float]]] = {}
        for path, variants in ((old, "shared"), (REPO, "isolated,isolated-no-outbound")):
            env = dict(os.environ, PYTHONPATH=str(path))
            out = subprocess.run([sys.executable, __file__, "--inner", str(image), "--runs", str(runs),
                                  "--variants", variants], env=env, check=True, capture_output=True, text=True,
                                 cwd=str(path))
            results.update(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(old, ignore_errors=True)
    names = {"shared": f"before (`{args.before}`: slirp in the host's network)",
             "isolated": "after: own namespace, outbound traffic through slirp4netns (the default)",
             "isolated-no-outbound": "after: own namespace, `outbound = false`"}
    rows: list[Row] = []
    for variant, name in names.items():
        rows.append((f"`tiny` start to ready, {name}", "report", summary(results[variant]["start"], 1, "s"),
                     "measured"))
    for variant, name in names.items():
        rows.append((f"throughput host ← guest through a forward (512 KiB), {name}", "report",
                     summary(results[variant]["rate"], 1 / 1000, "kB/s"), "measured"))
    made, configured = setup_times()
    rows.append(("making a machine's namespace (agent forked, `unshare`, `lo` up), in the supervisor", "report",
                 summary(made, 1000, "ms"), "measured"))
    rows.append(("starting slirp4netns on it until the namespace is configured (outbound traffic only)", "report",
                 summary(configured, 1000, "ms"), "measured"))
    rates = [relay_rate() for _ in range(3)]
    rows.append(("throughput of the supervisor's relay alone (256 MiB from inside a namespace to the host's loopback, "
                 "no guest)", "report", summary(rates, 1 / (1 << 20), "MiB/s"), "measured"))
    show_rows(SECTION, "bench/host_reach.py", rows, not args.small)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
