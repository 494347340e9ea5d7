"""One host CPU for each UML machine, taken in turn from the CPUs labkit may use.

A UML guest is several host processes (the kernel, the process running guest code, I/O helpers, slirp) handing work to
each other on every system call and page fault. Left free, the host scheduler spreads those hand-offs over its CPUs and
each one wakes another CPU; pinned to one CPU, a guest boots in about half the time on this project's 2-vCPU virtual
machines (docs/benchmarks.md, "The Debian lab against Netkit-JH"). Machines started together get different CPUs, so a
lab's machines still boot side by side.
"""

from __future__ import annotations

import os
from pathlib import Path

from labkit.atomic import locked, write_atomic

#: set to 0 to leave UML machines free on every CPU (docs/runtime.md, "CPU affinity")
PIN_ENV = "LABKIT_PIN_CPU"


def pinning_wanted(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get(PIN_ENV, "1").strip() not in ("0", "no", "false", "off")


def next_cpu(run_root: Path) -> int | None:
    """The CPU for the next machine (round robin over this process's allowed CPUs, shared by every start under
    ``run_root``), or None when there is only one CPU to use."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    run_root.mkdir(parents=True, exist_ok=True)
    counter = run_root / ".cpu-next"
    with locked(run_root / ".cpu.lock"):
        try:
            turn = int(counter.read_text())
        except (OSError, ValueError):
            turn = 0
        write_atomic(counter, f"{(turn + 1) % len(allowed)}\n")
    return allowed[turn % len(allowed)]
