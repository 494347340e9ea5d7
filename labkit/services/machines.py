"""Machines: the one place that turns CLI and web requests into overlay, seed and backend calls, and records them.

Each public method takes a machine name, checks the machine's real state first (the database records intent, the process
table is reality), refuses illegal transitions with a `StateError` that names the state, and records an audit event.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from labkit.atomic import locked
from labkit.config import Settings
from labkit.errors import BadNameError, ConflictError, LabkitError, NotFoundError, OverlayError, StateError
from labkit.guest.keys import ensure_key, public_key
from labkit.images.seed import SeedSpec, build_seed
from labkit.names import check_name
from labkit.overlays import Overlay, get_overlay
from labkit.progress import Reporter, silent
from labkit.runtime import DEFAULT_BACKEND, backend_class, get_backend
from labkit.runtime.base import (
    Backend,
    Forward,
    MachineSpec,
    MachineStatus,
    NetworkAttachment,
    NetworkSpec,
    State,
)
from labkit.runtime.network import check_host_port, machine_mac
from labkit.services import images as image_service
from labkit.services.audit import current_actor, record
from labkit.services.db import Database
from labkit.services.machine_states import ACCEPTS, AT_REST, LIVE
from labkit.services.models import Machine, Snapshot

if TYPE_CHECKING:
    from labkit.guest import Guest
    from labkit.guest.offline import OfflineTransport

SSH_PORT = 22
#: Seconds a guest's own ``sync`` may take before a copy of its disk; then the kernel's emergency sync is used,
#: which only starts writing, so the copy waits this long for it.
FLUSH_TIMEOUT = 20.0
EMERGENCY_SYNC_WAIT = 1.0


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


class Machines:
    """Create, run and look after single machines (``labkit vm ...``)."""

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

    # ---- creating ----------------------------------------------------------------------------------------------
    def create(self, name: str, image: str, memory_mb: int = 128, forwards: list[Forward] | None = None,
               content: SeedContent | None = None, networks: list[list[str]] | None = None,
               host_ports: list[int] | None = None, outbound: bool = True,
               backend: str = DEFAULT_BACKEND) -> MachineView:
        """``host_ports`` are the ports of this host's loopback the guest may reach (as 10.0.2.2:PORT; by default
        none), ``outbound`` whether it reaches other addresses (docs/runtime.md, "Host reach"). ``backend`` is a
        registered backend kind (`labkit.runtime.backend_kinds`); the overlay kind follows from it."""
        check_name(name, "machine name")
        overlay_kind = backend_class(backend).overlay_kind
        overlay = get_overlay(overlay_kind)
        reach = sorted({check_host_port(port) for port in host_ports or ()})
        if not 32 <= memory_mb <= 16384:
            raise BadNameError(f"memory {memory_mb} MB is outside 32-16384 MB")
        wanted = list(forwards or [])
        hosts = [f.host_port for f in wanted if f.host_port]
        if len(hosts) != len(set(hosts)):
            raise ConflictError(f"the same host port is forwarded twice in {', '.join(map(str, wanted))}")
        if not any(f.guest_port == SSH_PORT for f in wanted):
            wanted.append(Forward(0, SSH_PORT))
        overlay_path, seed_path = self._overlay_path(name, overlay), self._seed_path(name)
        with self.db.transaction() as session:
            if session.scalar(select(Machine).where(Machine.name == name)) is not None:
                raise ConflictError(f"a machine named {name!r} already exists")
            image_row = image_service.resolve(session, self.settings, image)
            image_service.require_intact(session, self.settings, image_row)
            for leftover in (overlay_path, seed_path):
                if leftover.exists():
                    raise ConflictError(
                        f"{leftover} already exists (left from an earlier machine {name!r}?); labkit never overwrites "
                        "it: move it away or choose another name")
            image_id, base, label = image_row.id, Path(image_row.path), image_row.label
        machine = Machine(
            name=name, image_id=image_id, backend=backend, overlay_kind=overlay_kind,
            overlay_path=str(overlay_path), seed_path=str(seed_path),
            memory_mb=memory_mb, mac=machine_mac(name), forwards=[[f.host_port, f.guest_port] for f in wanted],
            console_password=secrets.token_urlsafe(12), hostname=content.hostname if content else None,
            networks=networks or [], host_ports=reach, outbound=outbound,
        )
        # The files are written outside any transaction (a class provisions in parallel); the record comes last.
        made: list[Path] = []
        try:
            overlay.create(base, overlay_path)
            made.append(overlay_path)
            self._write_seed(machine, content)
            made.append(seed_path)
            with self.db.transaction() as session:
                session.add(machine)
                record(session, self.actor, "create", name, f"image {label}, {memory_mb} MB")
                session.flush()
                return self._view(machine, self._backend(machine).status(self.spec(machine)))
        except IntegrityError as err:
            for path in made:
                path.unlink(missing_ok=True)
            raise ConflictError(f"a machine named {name!r} already exists") from err
        except BaseException:
            for path in made:  # only what this call made: a concurrent create's files are not ours to remove
                path.unlink(missing_ok=True)
            raise

    def clear_leftovers(self, name: str, backend: str = DEFAULT_BACKEND) -> None:
        """Before creating machine ``name`` again: remove what an interrupted create left without a record (an empty
        overlay never booted, so it holds no work; its seed; temporary files a killed run never renamed). An overlay
        that holds anything is left for `create` to refuse."""
        overlay = get_overlay(backend_class(backend).overlay_kind)
        overlay_path, seed_path = self._overlay_path(name, overlay), self._seed_path(name)
        if overlay_path.exists() and overlay.info(overlay_path).allocated_bytes == 0:
            overlay_path.unlink()
            seed_path.unlink(missing_ok=True)
        for folder in (self.settings.overlays, self.settings.seeds):
            for partial in folder.glob(f".{name}.*"):
                if partial.is_dir():
                    shutil.rmtree(partial, ignore_errors=True)
                else:
                    partial.unlink(missing_ok=True)

    def _write_seed(self, machine: Machine, content: SeedContent | None = None) -> None:
        """Build the seed disk; its id follows its content, so the guest copies changed files on the next boot."""
        content = content or SeedContent()
        spec = SeedSpec(
            hostname=machine.hostname or machine.name,
            interfaces={"eth0": self._backend(machine).guest_address, **content.interfaces},
            authorized_keys=[public_key(self.settings.keys)],
            root_password=machine.console_password,
            files_dir=content.files_dir,
            startup_scripts=list(content.startup_scripts),
        )
        build_seed(spec, Path(machine.seed_path))

    def rewrite_seed(self, name: str, content: SeedContent,
                     reach: tuple[list[int], bool] | None = None, backend: str | None = None) -> None:
        """Give a stopped machine a new seed disk (a lab upgrade), and with ``reach`` new host ports and outbound
        setting; its overlay, the student's work, is untouched. ``backend``, the one the lab names now, must be the
        machine's: its disk is an overlay of its backend's kind, so a machine never changes backend."""
        with self._stopped(name, "rewrite the seed of") as (session, machine):
            if backend is not None and backend != machine.backend:
                raise ConflictError(
                    f"machine {name} runs on backend {machine.backend} but its lab now names {backend}; a machine "
                    f"keeps the backend it was made with (its disk is a {machine.overlay_kind} overlay): rename the "
                    "machine in the lab to make a new one, or remove this one first")
            self._write_seed(machine, content)
            if reach is not None:
                machine.host_ports = sorted({check_host_port(port) for port in reach[0]})
                machine.outbound = reach[1]
            record(session, self.actor, "seed", name, "seed disk rewritten")

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
        )

    # ---- running -----------------------------------------------------------------------------------------------
    def start(self, name: str, wait: bool = True, timeout: float = 60.0, progress: Reporter = silent) -> MachineView:
        # The boot runs outside any database transaction, so other machines' actions are not held up behind it.
        with self._locked(name):
            with self.db.transaction() as session:
                machine = self._get(session, name)
                status = self._reconcile(session, machine)
                if status.state not in ACCEPTS["start"]:
                    raise StateError(f"machine {name} is already {status.state.value}", status.state)
                image_service.require_intact(session, self.settings, machine.image)
                if not Path(machine.seed_path).exists():
                    if machine.hostname is not None:  # a course machine: its seed holds the lab's files
                        raise NotFoundError(f"the seed disk of {name} ({machine.seed_path}) is missing; run "
                                            "'labkit course provision --upgrade' to render it again")
                    self._write_seed(machine)
                backend, spec = self._backend(machine), self.spec(machine)
            ensure_key(self.settings.keys)
            for attachment in spec.networks:  # a student's lab networks come up with the first machine on them
                backend.start_network(attachment.network)
            try:
                try:
                    status = backend.start(spec, wait=wait, timeout=timeout, progress=progress)
                except ConflictError:
                    if all(f.host_port for f in spec.forwards):
                        raise
                    # A port picked for a "0" forward can be taken by a machine starting beside this one before
                    # the backend binds it: it stopped everything, so one more start picks new ports.
                    status = backend.start(spec, wait=wait, timeout=timeout, progress=progress)
            except LabkitError as err:
                with self.db.transaction() as session:
                    record(session, self.actor, "start-failed", name, str(err)[:2000])
                raise
            return self._settle(name, status, "start", ", ".join(map(str, status.forwards)))

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

    def _act(self, name: str, action: str, detail: str = "") -> MachineView:
        """Run one backend verb on a machine whose real state the table accepts for ``action``."""
        with self._locked(name):
            with self.db.transaction() as session:
                machine = self._get(session, name)
                status = self._reconcile(session, machine)
                if status.state not in ACCEPTS[action]:
                    raise StateError(f"cannot {action} machine {name}: it is {status.state.value}", status.state)
                backend, spec = self._backend(machine), self.spec(machine)
            verbs = {"stop": backend.stop, "kill": backend.kill, "pause": backend.pause, "resume": backend.resume}
            view = self._settle(name, verbs[action](spec), action, detail)
            if action in ("stop", "kill"):
                self._release_networks(backend, spec)
            return view

    def _release_networks(self, backend: Backend, spec: MachineSpec) -> None:
        """Stop the lab networks no live machine uses any more (the last machine out turns off the switch)."""
        if not spec.networks:
            return
        with self.db.transaction() as session:
            live = {s.value for s in LIVE}
            in_use = {folder for m in session.scalars(select(Machine).where(Machine.state.in_(live)))
                      for _, folder in m.networks}
        for attachment in spec.networks:
            if str(attachment.network.folder) not in in_use:
                backend.stop_network(attachment.network)

    def stop(self, name: str) -> MachineView:
        return self._act(name, "stop")

    def kill(self, name: str) -> MachineView:
        return self._act(name, "kill")

    def pause(self, name: str) -> MachineView:
        return self._act(name, "pause")

    def resume(self, name: str) -> MachineView:
        return self._act(name, "resume")

    # ---- the overlay -------------------------------------------------------------------------------------------
    @contextmanager
    def _stopped(self, name: str, action: str) -> Iterator[tuple[Session, Machine]]:
        with self._locked(name), self.db.transaction() as session:
            machine = self._get(session, name)
            status = self._reconcile(session, machine)
            if status.state not in AT_REST:
                raise StateError(f"cannot {action} machine {name} while it is {status.state.value}; stop it first",
                                 status.state)
            yield session, machine

    def reset(self, name: str, discard: bool = False) -> MachineView:
        """Give the machine an empty overlay (explicit, recorded). The old overlay is kept as a snapshot named
        ``before-reset-<time>`` unless ``discard`` or it holds nothing: a reset never loses work without a record."""
        with self._stopped(name, "reset") as (session, machine):
            image_service.require_intact(session, self.settings, machine.image)
            kept = "" if discard else self._keep_before(session, machine, "reset")
            self._overlay(machine).reset(Path(machine.overlay_path), Path(machine.image.path))
            record(session, self.actor, "reset", name, "overlay replaced by an empty one"
                   + (kept or ("; the old one was discarded" if discard else "")))
            return self._view(machine, self._backend(machine).status(self.spec(machine)))

    def _keep_before(self, session: Session, machine: Machine, action: str) -> str:
        """Keep the overlay as snapshot ``before-<action>-<time>`` before ``action`` drops it (nothing when it holds
        nothing); returns what to add to the action's audit detail."""
        path = Path(machine.overlay_path)
        if not path.exists() or not self._overlay(machine).info(path).allocated_bytes:
            return ""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dt%H%M%S")
        taken = {s.name for s in machine.snapshots}
        names = [f"before-{action}-{stamp}{suffix}" for suffix in ("", *(f"-{i}" for i in range(2, 10)))]
        keep = next((name for name in names if name not in taken), f"before-{action}-{secrets.token_hex(4)}")
        dest = self._snapshot_dir(machine.name) / self._overlay(machine).file_name(keep)
        size, _how = self._copy_overlay(session, machine, dest, action)
        machine.snapshots.append(Snapshot(name=keep, path=str(dest), size=size))
        record(session, self.actor, "snapshot", machine.name, f"{keep} (kept before a {action})")
        return f"; the old one is kept as snapshot {keep}"

    def snapshot(self, name: str, snapshot: str) -> MachineView:
        """Keep a named copy of the overlay. A running machine is synced and paused for the copy, then resumed."""
        check_name(snapshot, "snapshot name")
        with self._locked(name), self.db.transaction() as session:
            machine = self._get(session, name)
            if any(s.name == snapshot for s in machine.snapshots):
                raise ConflictError(f"machine {name} already has a snapshot named {snapshot!r}")
            dest = self._snapshot_dir(name) / self._overlay(machine).file_name(snapshot)
            size, how = self._copy_overlay(session, machine, dest, "snapshot")
            machine.snapshots.append(Snapshot(name=snapshot, path=str(dest), size=size))
            record(session, self.actor, "snapshot", name, f"{snapshot} ({how})")
            return self._view(machine, self._backend(machine).status(self.spec(machine)))

    def freeze(self, name: str, dest: Path) -> int:
        """Copy the overlay to ``dest`` the way a snapshot does, but outside the machine's own snapshots (a student
        cannot delete or restore it): how submissions are kept. Returns the bytes the copy holds."""
        with self._locked(name), self.db.transaction() as session:
            machine = self._get(session, name)
            size, how = self._copy_overlay(session, machine, dest, "submit")
            record(session, self.actor, "freeze", name, f"overlay copied to {dest.name} ({how})")
            return size

    def _flush(self, machine: Machine, backend: Backend, spec: MachineSpec, status: MachineStatus) -> None:
        """Get the guest's cached writes onto its disk before a copy: ``sync`` inside the guest (it returns when
        the data is written), or, when the guest cannot be reached, the kernel's emergency sync (which only starts
        the writing) and a moment for it."""
        try:
            with self._live_guest(machine, backend, spec, status) as guest:
                if guest.run("sync", timeout=FLUSH_TIMEOUT).ok:
                    return
        except LabkitError:
            pass
        backend.sync(spec)
        time.sleep(EMERGENCY_SYNC_WAIT)

    def _copy_overlay(self, session: Session, machine: Machine, dest: Path, action: str) -> tuple[int, str]:
        """A sparse copy of the overlay; a running machine is synced and paused for it. Returns (bytes, how)."""
        status = self._reconcile(session, machine)
        if status.state not in ACCEPTS["snapshot"]:
            raise StateError(f"cannot {action} machine {machine.name} while it is {status.state.value}", status.state)
        dest.parent.mkdir(parents=True, exist_ok=True)
        backend, spec = self._backend(machine), self.spec(machine)
        live = status.state == State.RUNNING
        if live:
            self._flush(machine, backend, spec, status)
            backend.pause(spec)
        try:
            info = self._overlay(machine).snapshot(Path(machine.overlay_path), dest)
        finally:
            if live:
                backend.resume(spec)
        return info.allocated_bytes, "live" if live else status.state.value

    def restore(self, name: str, snapshot: str, discard: bool = False) -> MachineView:
        """Bring a snapshot back as the overlay (explicit, recorded). The overlay it replaces is kept as snapshot
        ``before-restore-<time>`` unless ``discard``."""
        with self._stopped(name, "restore") as (session, machine):
            chosen = self._snapshot(machine, snapshot)
            kept = "" if discard else self._keep_before(session, machine, "restore")
            self._overlay(machine).restore(Path(chosen.path), Path(machine.overlay_path))
            record(session, self.actor, "restore", name, snapshot + kept)
            return self._view(machine, self._backend(machine).status(self.spec(machine)))

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        with self._locked(name), self.db.transaction() as session:
            machine = self._get(session, name)
            chosen = self._snapshot(machine, snapshot)
            Path(chosen.path).unlink(missing_ok=True)
            machine.snapshots.remove(chosen)
            record(session, self.actor, "snapshot-delete", name, snapshot)

    def _snapshot(self, machine: Machine, snapshot: str) -> Snapshot:
        for candidate in machine.snapshots:
            if candidate.name == snapshot:
                return candidate
        have = ", ".join(s.name for s in machine.snapshots) or "none"
        raise NotFoundError(f"machine {machine.name} has no snapshot {snapshot!r} (it has: {have})")

    def remove(self, name: str) -> None:
        """Delete the machine with its overlay, seed and snapshots (the explicit purge; recorded)."""
        with self._stopped(name, "remove") as (session, machine):
            overlay = self._overlay(machine)
            if Path(machine.overlay_path).exists():
                overlay.delete(Path(machine.overlay_path))
            Path(machine.seed_path).unlink(missing_ok=True)
            shutil.rmtree(self._snapshot_dir(name), ignore_errors=True)
            shutil.rmtree(self.settings.run_dir / name, ignore_errors=True)
            record(session, self.actor, "remove", name, f"{len(machine.snapshots)} snapshots removed")
            session.delete(machine)

    def snapshots(self, name: str) -> list[dict[str, object]]:
        with self.db.transaction() as session:
            machine = self._get(session, name)
            return [{"name": s.name, "created_at": s.created_at.isoformat(), "size": s.size, "path": s.path}
                    for s in machine.snapshots]

    # ---- inside the guest --------------------------------------------------------------------------------------
    def console(self, name: str) -> ConsoleAccess:
        """Where console clients attach, for a machine that is up, and the root password its console asks for."""
        with self.db.transaction() as session:
            machine = self._get(session, name)
            status = self._reconcile(session, machine)
            if status.state not in ACCEPTS["console"]:
                raise StateError(f"machine {name} is {status.state.value}; start it to use its console", status.state)
            spec = self.spec(machine)
            return ConsoleAccess(self._backend(machine).console_socket(spec), spec.console_log,
                                 machine.console_password)

    def open_guest(self, name: str) -> Guest:
        """A Guest handle: a running machine over SSH through its forward with the console as fallback; a stopped
        one offline, read from its disk without booting it. Other states (paused, starting ...) are refused."""
        from labkit.guest import Guest  # paramiko and pexpect load only for commands that talk to a guest

        with self.db.transaction() as session:
            machine = self._get(session, name)
            status = self._reconcile(session, machine)
            backend, spec = self._backend(machine), self.spec(machine)
            if status.state == State.STOPPED:
                return Guest(name, None, None, offline=self._offline_transport(machine, spec))
            if status.state != State.RUNNING:
                raise StateError(f"machine {name} is {status.state.value}; labkit looks inside running or stopped "
                                 "machines only", status.state)
            return self._live_guest(machine, backend, spec, status)

    def _live_guest(self, machine: Machine, backend: Backend, spec: MachineSpec, status: MachineStatus) -> Guest:
        """A Guest handle on a running machine (``status``, just read): SSH through its forward, the console as
        fallback."""
        from labkit.guest import Guest
        from labkit.guest.console import ConsoleTransport
        from labkit.guest.ssh import SshTransport

        endpoint = backend.ssh_endpoint(spec)
        ssh = SshTransport(endpoint[0], endpoint[1], ensure_key(self.settings.keys)) if endpoint else None
        console = ConsoleTransport(backend.console_socket(spec), machine.console_password)
        return Guest(machine.name, ssh, console, forwards={f.guest_port: f.host_port for f in status.forwards})

    def _offline_transport(self, machine: Machine, spec: MachineSpec) -> OfflineTransport:
        """Reads a stopped machine's disk (base image + overlay, flattened by its overlay kind) without booting it
        or changing the overlay."""
        from labkit.guest.offline import OfflineTransport

        return OfflineTransport(machine.name, spec.overlay, self._overlay(machine))


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
