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

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from labkit.atomic import locked
from labkit.config import Settings
from labkit.errors import NotFoundError, StateError
from labkit.overlays import Overlay, get_overlay
from labkit.runtime import get_backend
from labkit.runtime.base import Backend, MachineSpec, MachineStatus, State
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.machine_states import AT_REST, LIVE
from labkit.services.machine_truth import (
    SSH_PORT,
    MachineFacts,
    MachineView,
    facts,
    machine_spec,
    machine_view,
    recorded,
    shown_forwards,
    uptime,
)
from labkit.services.models import Machine
from labkit.services.timing import refuse_when_closed

__all__ = ["SSH_PORT", "ConsoleAccess", "MachineFacts", "MachineRecords", "MachineView", "SeedContent",
           "shown_forwards", "uptime"]


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
        return machine_spec(self.settings, machine)

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
                 if recorded(machine) != facts(status, machine)]
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
        for key, value in facts(status, machine).items():
            setattr(machine, key, value)
        return status

    def _view(self, machine: Machine, status: MachineStatus) -> MachineView:
        return machine_view(self.settings, machine, machine.overlay_kind, machine.image.label,
                            [s.name for s in machine.snapshots], status)

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
            if action in ("reset", "restore"):  # a student whose time ended no longer changes their machines
                refuse_when_closed(session, machine.id, self.actor, action)
            status = self._reconcile(session, machine)
            if status.state not in AT_REST:
                raise StateError(f"cannot {action} machine {name} while it is {status.state.value}; stop it first",
                                 status.state)
            yield session, machine
