"""The truth about one machine from its record's facts and its processes: the spec, the view ``vm status`` shows,
and whether the record is out of date.

Plain functions over a record's facts (a `Machine`, or a plain row with the same names), with no database import: the
machine service (`machine_records`) and the read-only status views read straight from SQLite (`sqlite_status`) build
the same views through them, so the two cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from labkit.config import Settings
from labkit.errors import OverlayError
from labkit.overlays import get_overlay
from labkit.runtime import backend_class
from labkit.runtime.base import (
    Forward,
    MachineSpec,
    MachineStatus,
    NetworkAttachment,
    NetworkSpec,
    RecordingPolicy,
    State,
)
from labkit.services.machine_states import LIVE, snapshot_kind

SSH_PORT = 22


@dataclass(frozen=True)
class MachineView:
    """What ``vm status`` shows about one machine."""

    name: str
    image: str
    backend: str
    state: str
    pid: int | None
    supervisor_pid: int | None
    forwards: list[str]
    ssh: str | None
    uptime: float | None
    overlay_bytes: int
    snapshots: list[str]
    memory_mb: int
    mac: str
    console_log: str
    #: the kind a snapshot taken now would be: "running state" (its backend keeps it, and it runs) or "disk"
    snapshot_kind: str = "disk"


class MachineFacts(Protocol):
    """What a machine's status needs of its record: a `Machine`, or a plain row with these names (the student
    dashboard reads plain rows: building ORM objects for it costs more than its whole statement)."""

    name: str
    backend: str
    overlay_path: str
    seed_path: str
    memory_mb: int
    mac: str
    forwards: list[list[int]]
    networks: list[list[str]]
    host_ports: list[int]
    outbound: bool
    state: str
    pid: int | None
    supervisor_pid: int | None
    bound_forwards: list[list[int]]
    started_at: dt.datetime | None

    @property
    def image_path(self) -> str: ...


def machine_spec(settings: Settings, machine: MachineFacts) -> MachineSpec:
    """The backend's spec of ``machine``."""
    return MachineSpec(
        name=machine.name,
        image=Path(machine.image_path),
        overlay=Path(machine.overlay_path),
        run_dir=settings.run_dir / machine.name,
        console_log=settings.logs / f"{machine.name}.console.log",
        memory_mb=machine.memory_mb,
        mac=machine.mac,
        seed=Path(machine.seed_path),
        forwards=tuple(Forward(host, guest) for host, guest in machine.forwards),
        networks=tuple(NetworkAttachment(NetworkSpec(net, Path(folder))) for net, folder in machine.networks),
        host_ports=tuple(machine.host_ports or ()),
        outbound=bool(machine.outbound),
        recording=RecordingPolicy(settings.recordings / machine.name, settings.recording_max_bytes,
                                  settings.recordings_keep_days, settings.recordings_keep_bytes)
        if settings.recording_max_bytes > 0 else None,
    )


def machine_view(settings: Settings, machine: MachineFacts, overlay_kind: str, image_label: str,
                 snapshots: list[str], status: MachineStatus) -> MachineView:
    """What ``vm status`` shows of ``machine`` whose processes said ``status``."""
    overlay = Path(machine.overlay_path)
    try:
        allocated = get_overlay(overlay_kind).info(overlay).allocated_bytes if overlay.exists() else 0
    except OverlayError:  # a damaged overlay must not hide every other machine's status; start says what is wrong
        allocated = 0
    ssh = next((f.host_port for f in status.forwards if f.guest_port == SSH_PORT), None)
    return MachineView(
        name=machine.name, image=image_label, backend=machine.backend, state=status.state.value,
        pid=status.pid, supervisor_pid=status.supervisor_pid, forwards=shown_forwards(machine, status),
        ssh=f"ssh -p {ssh} -i {settings.keys / 'labkit_ed25519'} root@127.0.0.1" if ssh else None,
        uptime=uptime(status), overlay_bytes=allocated, snapshots=snapshots,
        memory_mb=machine.memory_mb, mac=machine.mac, console_log=str(machine_spec(settings, machine).console_log),
        snapshot_kind=snapshot_kind(backend_class(machine.backend).capabilities.ram_snapshots, status.state),
    )


def uptime(status: MachineStatus) -> float | None:
    """Seconds since a live machine's linux started; None when it is not live."""
    if status.started_at is None or status.state not in LIVE:
        return None
    return max(0.0, dt.datetime.now(dt.UTC).timestamp() - status.started_at)


def shown_forwards(machine: MachineFacts, status: MachineStatus) -> list[str]:
    """``host:guest`` pairs: the ports bound now, else the configured ones (host port 0 until a start picks one)."""
    return [str(f) for f in (status.forwards or tuple(Forward(h, g) for h, g in machine.forwards))]


def facts(status: MachineStatus, machine: MachineFacts) -> dict[str, object]:
    """What a machine's record should say, given its processes' ``status``."""
    if status.started_at is not None:
        started_at: dt.datetime | None = dt.datetime.fromtimestamp(status.started_at, dt.UTC)
    else:
        started_at = None if status.state == State.STOPPED else machine.started_at
    return {"state": status.state.value, "pid": status.pid, "supervisor_pid": status.supervisor_pid,
            "bound_forwards": [[f.host_port, f.guest_port] for f in status.forwards], "started_at": started_at}


def recorded(machine: MachineFacts) -> dict[str, object]:
    """What a machine's record says now (compared with `facts`: when they differ, the record is out of date)."""
    return {"state": machine.state, "pid": machine.pid, "supervisor_pid": machine.supervisor_pid,
            "bound_forwards": [list(pair) for pair in machine.bound_forwards or []],
            "started_at": machine.started_at}
