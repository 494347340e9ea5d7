"""The records of single machines and the truth about them: what every part of the machine service stands on.

`MachineRecords` finds a machine's record, builds its `MachineSpec`, picks its backend and overlay kind, and
reconciles the record with what the backend reads from the processes (the database records intent, the process table
is reality). The machine service is this class extended by its guests (`machine_guests`), its disks
(`machine_disks`) and its lifecycle (`machines`), one module each.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from labkit.atomic import locked
from labkit.config import Settings
from labkit.errors import NotFoundError, OverlayError, StateError
from labkit.overlays import Overlay, get_overlay
from labkit.runtime import backend_class, get_backend
from labkit.runtime.base import Backend, Forward, MachineSpec, MachineStatus, NetworkAttachment, NetworkSpec, State
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.machine_states import AT_REST, LIVE, snapshot_kind
from labkit.services.models import Machine

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


@dataclass(frozen=True)
class SeedContent:
    """What a course puts on a machine's seed disk beyond the basics (labkit's key and the console password)."""

    hostname: str | None = None
    #: lab network interfaces, e.g. {"eth1": "192.168.50.1/24"} (eth0 is the backend's guest network, 10.0.2.15/24)
    interfaces: dict[str, str] = field(default_factory=dict)
    files_dir: Path | None = None
    startup_scripts: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class ConsoleAccess:
    """How to reach a machine's console: the supervisor's socket, the log of what it printed, root's password."""

    socket: Path
    log: Path
    password: str


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


class MachineRecords:
    """Records, specs and the reconciled truth of single machines (the base of `labkit.services.machines.Machines`)."""

    def __init__(self, settings: Settings, db: Database, actor: str | None = None) -> None:
        # no settings.ensure() here: opening ``db`` made the folders, and the web app makes a Machines per page view
        self.settings = settings
        self.db = db
        self.actor = actor or current_actor()

    # ---- paths -------------------------------------------------------------------------------------------------
    def _overlay_path(self, name: str, overlay: Overlay) -> Path:
        return self.settings.overlays / overlay.file_name(name)

    def _seed_path(self, name: str) -> Path:
        return self.settings.seeds / f"{name}.img"

    def _snapshot_dir(self, name: str) -> Path:
        return self.settings.snapshots / name

    def spec(self, machine: MachineFacts) -> MachineSpec:
        return MachineSpec(
            name=machine.name,
            image=Path(machine.image_path),
            overlay=Path(machine.overlay_path),
            run_dir=self.settings.run_dir / machine.name,
            console_log=self.settings.logs / f"{machine.name}.console.log",
            memory_mb=machine.memory_mb,
            mac=machine.mac,
            seed=Path(machine.seed_path),
            forwards=tuple(Forward(host, guest) for host, guest in machine.forwards),
            networks=tuple(NetworkAttachment(NetworkSpec(net, Path(folder))) for net, folder in machine.networks),
            host_ports=tuple(machine.host_ports or ()),
            outbound=bool(machine.outbound),
        )

    def _backend(self, machine: MachineFacts) -> Backend:
        return get_backend(machine.backend)

    @staticmethod
    def _overlay(machine: Machine) -> Overlay:
        """The overlay kind of the machine's disk (its backend's, recorded when it was made)."""
        return get_overlay(machine.overlay_kind)

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        """One state-changing action per machine at a time, across processes (a double-clicked start is a no-op)."""
        with locked(self.settings.run_dir / f".{name}.lock"):
            yield

    def _get(self, session: Session, name: str) -> Machine:
        machine = session.scalar(select(Machine).where(Machine.name == name))
        if machine is None:
            known = session.scalars(select(Machine.name).order_by(Machine.name)).all()
            hint = f"; known machines: {', '.join(known)}" if known else "; there are no machines yet"
            raise NotFoundError(f"no machine named {name!r}{hint}")
        return machine

    # ---- reading -----------------------------------------------------------------------------------------------
    def status(self, name: str | None = None, names: list[str] | None = None) -> list[MachineView]:
        """Reconcile the database with the processes and return the truth for one machine, ``names``, or all.

        The processes are read in a reading transaction; only machines whose record is out of date are written.
        """
        with self.db.read() as session:
            if name is not None:
                machines = [self._get(session, name)]
            else:
                query = select(Machine).order_by(Machine.name).options(selectinload(Machine.image),
                                                                       selectinload(Machine.snapshots))
                machines = list(session.scalars(query if names is None else query.where(Machine.name.in_(names))))
            views, stale = self.look(machines)
        self.write_back(stale)
        return views

    def look(self, machines: list[Machine]) -> tuple[list[MachineView], list[str]]:
        """The truth about ``machines`` (loaded in the caller's session), and the names of those whose record is out
        of date: pass them to `write_back` once the caller's reading transaction is over."""
        statuses, stale = self.observe(machines)
        return [self._view(machine, status) for machine, status in zip(machines, statuses, strict=True)], stale

    def observe(self, machines: Sequence[MachineFacts]) -> tuple[list[MachineStatus], list[str]]:
        """What the processes of ``machines`` say, without the view's disk and snapshot details (`look` adds them):
        the student dashboard shows only state, uptime and forwards, and a whole class reloads it at once."""
        statuses = [self._backend(machine).status(self.spec(machine)) for machine in machines]
        stale = [machine.name for machine, status in zip(machines, statuses, strict=True)
                 if _recorded(machine) != _facts(status, machine)]
        return statuses, stale

    def write_back(self, stale: list[str]) -> None:
        """Bring the records of ``stale`` machines in line with their processes."""
        if stale:
            with self.db.transaction() as session:
                for machine in session.scalars(select(Machine).where(Machine.name.in_(stale))):
                    self._reconcile(session, machine)

    def _reconcile(self, session: Session, machine: Machine) -> MachineStatus:
        status = self._backend(machine).status(self.spec(machine))
        if status.state == State.STOPPED and machine.state in {s.value for s in LIVE}:
            record(session, "labkit", "found-stopped", machine.name,
                   f"recorded as {machine.state}, but its processes are gone")
        for key, value in _facts(status, machine).items():
            setattr(machine, key, value)
        return status

    def _view(self, machine: Machine, status: MachineStatus) -> MachineView:
        overlay = Path(machine.overlay_path)
        try:
            allocated = self._overlay(machine).info(overlay).allocated_bytes if overlay.exists() else 0
        except OverlayError:  # a damaged overlay must not hide every other machine's status; start says what is wrong
            allocated = 0
        ssh = next((f.host_port for f in status.forwards if f.guest_port == SSH_PORT), None)
        return MachineView(
            name=machine.name, image=machine.image.label, backend=machine.backend, state=status.state.value,
            pid=status.pid, supervisor_pid=status.supervisor_pid, forwards=shown_forwards(machine, status),
            ssh=f"ssh -p {ssh} -i {self.settings.keys / 'labkit_ed25519'} root@127.0.0.1" if ssh else None,
            uptime=uptime(status), overlay_bytes=allocated, snapshots=[s.name for s in machine.snapshots],
            memory_mb=machine.memory_mb, mac=machine.mac, console_log=str(self.spec(machine).console_log),
            snapshot_kind=snapshot_kind(backend_class(machine.backend).capabilities.ram_snapshots, status.state),
        )

    def _settle(self, name: str, status: MachineStatus, action: str, detail: str = "") -> MachineView:
        """Record what a backend verb left the machine in."""
        with self.db.transaction() as session:
            machine = self._get(session, name)
            self._apply(machine, status)
            record(session, self.actor, action, name, detail)
            return self._view(machine, status)

    def _apply(self, machine: Machine, status: MachineStatus) -> None:
        machine.state = status.state.value
        machine.pid = status.pid
        machine.supervisor_pid = status.supervisor_pid
        machine.bound_forwards = [[f.host_port, f.guest_port] for f in status.forwards]
        machine.started_at = dt.datetime.fromtimestamp(status.started_at, dt.UTC) if status.started_at else None


    @contextmanager
    def _stopped(self, name: str, action: str) -> Iterator[tuple[Session, Machine]]:
        with self._locked(name), self.db.transaction() as session:
            machine = self._get(session, name)
            status = self._reconcile(session, machine)
            if status.state not in AT_REST:
                raise StateError(f"cannot {action} machine {name} while it is {status.state.value}; stop it first",
                                 status.state)
            yield session, machine


def uptime(status: MachineStatus) -> float | None:
    """Seconds since a live machine's linux started; None when it is not live."""
    if status.started_at is None or status.state not in LIVE:
        return None
    return max(0.0, dt.datetime.now(dt.UTC).timestamp() - status.started_at)


def shown_forwards(machine: MachineFacts, status: MachineStatus) -> list[str]:
    """``host:guest`` pairs: the ports bound now, else the configured ones (host port 0 until a start picks one)."""
    return [str(f) for f in (status.forwards or tuple(Forward(h, g) for h, g in machine.forwards))]


def _facts(status: MachineStatus, machine: MachineFacts) -> dict[str, object]:
    """What a machine's record should say, given its processes' ``status``."""
    if status.started_at is not None:
        started_at: dt.datetime | None = dt.datetime.fromtimestamp(status.started_at, dt.UTC)
    else:
        started_at = None if status.state == State.STOPPED else machine.started_at
    return {"state": status.state.value, "pid": status.pid, "supervisor_pid": status.supervisor_pid,
            "bound_forwards": [[f.host_port, f.guest_port] for f in status.forwards], "started_at": started_at}


def _recorded(machine: MachineFacts) -> dict[str, object]:
    return {"state": machine.state, "pid": machine.pid, "supervisor_pid": machine.supervisor_pid,
            "bound_forwards": [list(pair) for pair in machine.bound_forwards or []],
            "started_at": machine.started_at}

