"""Throwaway machines booted from frozen disks, so a submission can be graded with commands, not only file reads.

A submission's disks never change: each machine boots from a sparse copy of its frozen overlay (same base image)
and its frozen seed disk, in a private scratch folder, on lab networks of its own. Nothing of it is recorded as a
machine: when grading ends the processes are stopped by their PIDs and the copies are deleted.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from labkit.config import Settings
from labkit.errors import LabkitError
from labkit.overlays import sparse_copy
from labkit.runtime import get_backend
from labkit.runtime.base import Forward, MachineSpec, NetworkAttachment, NetworkSpec
from labkit.runtime.network import machine_mac
from labkit.services.submissions import frozen_backend, frozen_overlay

#: Seconds one scratch machine may take to boot.
BOOT_TIMEOUT = 120.0


@contextmanager
def scratch_guests(settings: Settings, disks: Mapping[str, Mapping[str, Any]], order: Sequence[str],
                   tag: str) -> Iterator[dict[str, Any]]:
    """Boot every machine of ``disks`` (lab machine -> frozen disk record, see `labkit.services.submissions`) in
    ``order`` and yield Guest handles by lab machine name; everything is stopped and deleted on exit.

    ``tag`` keeps names apart (it becomes part of each scratch machine's name, umid and socket folder).
    """
    from labkit.guest import Guest
    from labkit.guest.console import ConsoleTransport
    from labkit.guest.keys import ensure_key
    from labkit.guest.ssh import SshTransport

    unique = f"{tag}{secrets.token_hex(2)}"
    folder = settings.home / "scratch" / unique
    folder.mkdir(parents=True)
    key = ensure_key(settings.keys)
    backends = {machine: get_backend(frozen_backend(disk)) for machine, disk in disks.items()}
    networks: dict[str, NetworkSpec] = {}
    specs: list[MachineSpec] = []
    guests: dict[str, Any] = {}
    with ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, folder, True)
        booted = [m for m in order if m in disks]
        for net in sorted({str(n) for disk in disks.values() for n in disk.get("networks", [])}):
            # the switch is started by the backend of the first machine on it, as a live lab's first start does
            first = next(m for m in (*booted, *sorted(disks)) if net in map(str, disks[m].get("networks", [])))
            backend = backends[first]
            networks[net] = NetworkSpec(net, settings.run_dir / "net" / f"{unique}-{net}")
            # Callbacks run last-in first-out: the folder holds the switch's pid file, so it goes after the stop
            # (removed first, it left every switch running with nothing to find it by).
            cleanup.callback(shutil.rmtree, networks[net].folder, True)
            cleanup.callback(_quietly, backend.stop_network, networks[net])
            backend.start_network(networks[net])
        for machine in booted:
            disk, backend = disks[machine], backends[machine]
            name = f"{unique}-{machine}"[:32]
            kind = frozen_overlay(disk)
            overlay, seed = folder / kind.file_name(machine), folder / f"{machine}.seed"
            kind.snapshot(Path(disk["overlay"]), overlay)
            sparse_copy(Path(disk["seed"]), seed)
            spec = MachineSpec(
                name=name, image=Path(disk["image"]), overlay=overlay, run_dir=settings.run_dir / name,
                console_log=folder / f"{machine}.console.log", memory_mb=int(disk.get("memory_mb", 128)),
                mac=machine_mac(name), seed=seed,
                forwards=tuple(Forward(0, int(port)) for port in disk.get("ports", [22])),
                networks=tuple(NetworkAttachment(networks[str(n)]) for n in disk.get("networks", [])),
                # the machine's own host reach (older submissions did not record it: then no host port at all)
                host_ports=tuple(int(port) for port in disk.get("host_ports", [])),
                outbound=bool(disk.get("outbound", True)))
            specs.append(spec)
            cleanup.callback(shutil.rmtree, spec.run_dir, True)
            cleanup.callback(_quietly, backend.kill, spec)
            status = backend.start(spec, wait=True, timeout=BOOT_TIMEOUT)
            endpoint = backend.ssh_endpoint(spec)
            ssh = SshTransport(endpoint[0], endpoint[1], key) if endpoint else None
            guest = Guest(name, ssh, ConsoleTransport(backend.console_socket(spec), str(disk["password"])),
                          forwards={f.guest_port: f.host_port for f in status.forwards})
            cleanup.callback(guest.close)
            guests[machine] = guest
        yield guests


def _quietly(action: Any, spec: Any) -> None:
    """Clean-up must go on past one failure (a machine that never booted has nothing to kill)."""
    with suppress(LabkitError):
        action(spec)
