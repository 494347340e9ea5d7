"""How many `tiny` guests run at once here, all answering SSH, and what each costs (issue: performance §5).

Run: .venv/bin/python bench/density.py --count 150 [--write]      (a few minutes; 64 MB guests)

Starts ``--count`` 64 MB `tiny` UML machines through the services, eight at a time, then checks that every one answers
an SSH login that runs `true`, and reports: the host memory each costs (MemAvailable's drop over the whole start,
divided by the count; pages shared between guests, such as the `linux` binary's, count once), the resident memory of
one machine's parts (its supervisor, its UML processes, its slirp), which counts shared pages in every process, and
two figures that do not: the proportional memory (Pss) of the machine's console supervisor with its namespace agent (a
fork of it, sharing most of its pages), and the guest memory UML has touched (the allocated size of its memory file in
/dev/shm, which UML never gives back while the guest runs). Target (the issue's): at least 150 guests, at most 40 MB
each.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.engine import Bench, start_at_once
from bench.report import Row, load_row, show_rows
from labkit.guest.keys import ensure_key
from labkit.runtime.process import process_group_members

SECTION = "## Density: tiny guests at once"

#: What the rows mean and what was measured by hand (written below the table with --write).
NOTES = """
Where a machine's memory goes (measured on this machine kind with `/proc/PID/smaps_rollup` and the guest's own
`/proc/meminfo`):

- **The guest's memory.** UML keeps it in a deleted file in /dev/shm (tmpfs), mapped shared into its processes. The
  host allocates a page of it the first time the guest touches it and never gets it back while the guest runs: UML
  does not return pages the guest frees (after `echo 3 > /proc/sys/vm/drop_caches` in a Debian guest, its file kept
  all of its 68.6 MB). So the host pays for the guest's high-water mark. Until `linux` ran without address-space
  randomization (docs/runtime.md, "Memory"), a 64 MB `tiny` guest touched 27 to 38 MB (median of 10: 29 to 32 MB in
  three runs), up to 16 MB of it page descriptors for the gap between the binary and its randomized heap (7 and 11 MB
  in the two guests looked at: the kernel saw 434 and 696 MB of "physical" memory for `mem=64M`); since, it sees 64
  MB, has 53 MB free for itself instead of 42 to 47, and the median touched is 20 MB. A 128 MB Debian guest touched 61
  to 70 MB either way (page cache 29 MB, slab 13 MB, processes 7 MB: it fills what memory it has; 52 to 56 MB since
  the seed brings its host key and password hash). A smaller `mem=`
  caps it, but by little once the layout is fixed: `tiny` at 48 MB touched 20 to 22 MB, at 32 MB 16 to 17 MB (before
  the fixed layout, 48 MB touched 19 to 23 MB and 32 MB did not boot, probably because the page descriptors left it
  too little); Debian at 96 MB touched 57 to 64 MB (it needs that much to boot). Smaller dentry and inode hash tables
  (`dhash_entries=1024 ihash_entries=1024`) changed nothing measurable.
- **The UML kernel's text** is mapped from `/usr/bin/linux.uml` and shared by every guest (Shared_Clean: 5.4 of its
  5.8 MB resident text), so it counts once on the host. The "UML processes" row counts it, and the guest's memory, in
  each of the three host processes that share one address space (the kernel and its two helper threads): that sum is
  not memory spent.
- **slirp and slirp4netns** hold 0.2 to 0.3 MB of private memory each; the rest of their resident size is shared
  libraries.
- **The console supervisor and its namespace agent** (one pair per machine, docs/runtime.md "Memory") were 11.9 MB
  (Pss) before their imports were cut, 8.8 MB after (20 guests, this script); the supervisor's resident size went from
  13.7 MB to 10.9 MB. Python itself is 2.7 MB of private memory per process; one supervisor for many machines would
  remove most of the rest.

Measured with `--count 20` on the shared, busy machine (MemAvailable moves with the other work on the machine; the
per-process rows do not): host memory per guest 47 and 56 MB before the supervisor's cut, 34 and 40 MB after it, 37 and
33 MB with the fixed layout too. A 128 MB Debian machine was estimated at about 77 MB from its parts (a guest
touching 61 to 70 MB, the supervisor pair's 9 MB, UML's and slirp's own 2 MB); measured whole since, with the seed
bringing the SSH host key and the password hash (no `ssh-keygen` or `chpasswd` in the guest), its guest touches 52 to
56 MB and ten of them cost 56 MB each (bench/debian_lab.py, "The Debian lab against Netkit-JH"), under Netkit-JH's
62 MB.
"""


def proc_kb(path: str, field: str) -> int:
    """The ``field:`` line (in kB) of a /proc file, 0 when the process or the line is gone."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    return proc_kb(f"/proc/{pid}/status", "VmRSS")


def pss_kb(pid: int) -> int:
    """Proportional set size: pages shared with other processes count by their share."""
    return proc_kb(f"/proc/{pid}/smaps_rollup", "Pss")


def agents(supervisor: int) -> list[int]:
    """The supervisor's namespace agent: its child that runs the same program (a fork of it, no exec)."""
    try:
        exe = os.readlink(f"/proc/{supervisor}/exe")
        found = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    except OSError:
        return []
    kept = []
    for pid in map(int, found):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe") == exe:
                kept.append(pid)
    return kept


def guest_memory_kb(pid: int) -> int:
    """The allocated size of the deleted /dev/shm file UML keeps the guest's memory in (pages it has touched)."""
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith("/dev/shm/"):
                    return fd.stat().st_blocks // 2
    except OSError:
        pass
    return 0


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=150)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    bench = Bench()
    rows: list[Row] = []
    names = [f"d{i:03d}" for i in range(args.count)]
    try:
        bench.image("tiny")
        key = ensure_key(bench.settings.keys)
        for name in names:
            bench.machines.create(name, "tiny", memory_mb=64)
        crowd = start_at_once(bench, names, key)
        views, booted, answering, per_guest = crowd.views, crowd.ready, crowd.answering, crowd.mb_each
        parts: dict[str, list[int]] = {}
        proportional: dict[str, list[int]] = {}
        for view in views[:10]:
            status = bench.machines.status(view.name)[0]
            supervisor = status.supervisor_pid or 0
            split: dict[str, int] = {"supervisor": rss_kb(supervisor)}
            pair = pss_kb(supervisor) + sum(pss_kb(pid) for pid in agents(supervisor))
            proportional.setdefault("supervisor and its namespace agent (Pss)", []).append(pair)
            proportional.setdefault("guest memory UML has touched (its /dev/shm memory file)", []).append(
                guest_memory_kb(status.pid or 0))
            for pid in process_group_members(status.pid or 0):
                kind = "slirp" if "slirp" in command(pid) else "UML processes"
                split[kind] = split.get(kind, 0) + rss_kb(pid)
            for kind, value in split.items():
                parts.setdefault(kind, []).append(value)
        rows.append((f"{args.count} `tiny` guests (64 MB) started, 8 at a time, all answering SSH", ">= 150",
                     f"all ready after {booted:.1f} s, all answering SSH after {answering:.1f} s",
                     "met" if args.count >= 150 else "partial"))
        rows.append(("host memory per guest (MemAvailable drop / count)", "<= 40 MB", f"{per_guest:.0f} MB",
                     "met" if per_guest <= 40 else "missed"))
        for kind, values in parts.items():
            rows.append((f"resident memory of one machine's {kind} (VmRSS, median of 10; shared pages counted in "
                         "each process)", "", f"{statistics.median(values) / 1024:.1f} MB", ""))
        for what, values in proportional.items():
            rows.append((f"one machine's {what}, median of 10", "", f"{statistics.median(values) / 1024:.1f} MB", ""))
        rows.append(load_row("when measured"))
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda n: bench.machines.kill(n) if bench.machines.status(n)[0].state != "stopped"
                          else None, names))
        bench.close()
    show_rows(SECTION, "bench/density.py", rows, args.write, NOTES)


if __name__ == "__main__":
    sys.exit(main())
