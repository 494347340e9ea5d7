"""Machines: the one place that turns CLI and web requests into overlay, seed and backend calls, and records them.

Each public method takes a machine name, checks the machine's real state first (the database records intent, the process
table is reality), refuses illegal transitions with a `StateError` that names the state (`machine_states` holds the
table), and records an audit event. This module holds the lifecycle (create, start, stop, kill, pause, resume); the
records and reconciling are in `machine_records`, Guest handles in `machine_guests`, seeds, overlays and snapshots in
`machine_disks`.
"""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from labkit.errors import BadNameError, ConflictError, LabkitError, NotFoundError, StateError
from labkit.guest.keys import ensure_key
from labkit.images.store import ImageStore
from labkit.names import check_name
from labkit.overlays import get_overlay
from labkit.progress import Reporter, silent
from labkit.runtime import backend_class
from labkit.runtime.base import Backend, Forward, MachineSpec, mark_activity
from labkit.runtime.network import check_host_port, machine_mac
from labkit.services import images as image_service
from labkit.services.audit import record
from labkit.services.machine_disks import MachineDisks
from labkit.services.machine_records import (
    SSH_PORT,
    ConsoleAccess,
    MachineFacts,
    MachineView,
    SeedContent,
    shown_forwards,
    uptime,
)
from labkit.services.machine_states import ACCEPTS, LIVE
from labkit.services.models import Machine
from labkit.services.timing import refuse_when_closed


class Machines(MachineDisks):
    """Create, run and look after single machines (``labkit vm ...``)."""

    # ---- creating ----------------------------------------------------------------------------------------------
    def create(self, name: str, image: str, memory_mb: int = 128, forwards: list[Forward] | None = None,
               content: SeedContent | None = None, networks: list[list[str]] | None = None,
               host_ports: list[int] | None = None, outbound: bool = True,
               backend: str | None = None) -> MachineView:
        """``host_ports`` are the ports of this host's loopback the guest may reach (as 10.0.2.2:PORT; by default
        none), ``outbound`` whether it reaches other addresses (docs/runtime.md, "Host reach"). ``backend`` is a
        registered backend kind (`labkit.runtime.backend_kinds`), None for the one the image's recipe names; the
        overlay kind follows from it."""
        check_name(name, "machine name")
        image_record = ImageStore(self.settings).get(*image_service.parse_ref(image))
        backend = image_record.backend if backend is None else backend
        kind = backend_class(backend)
        overlay_kind = kind.overlay_kind
        overlay = get_overlay(overlay_kind)
        reach = sorted({check_host_port(port) for port in host_ports or ()})
        if not 32 <= memory_mb <= 16384:
            raise BadNameError(f"memory {memory_mb} MB is outside 32-16384 MB")
        if memory_mb < kind.min_memory_mb:
            raise BadNameError(f"memory {memory_mb} MB is too little for backend {backend}: its machines need at least "
                               f"{kind.min_memory_mb} MB")
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
            image_row = image_service.mirror(session, image_record)
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

    # ---- running -----------------------------------------------------------------------------------------------
    def start(self, name: str, wait: bool = True, timeout: float = 60.0, progress: Reporter = silent) -> MachineView:
        # The boot runs outside any database transaction, so other machines' actions are not held up behind it.
        with self._locked(name):
            with self.db.transaction() as session:
                machine = self._get(session, name)
                refuse_when_closed(session, machine.id, self.actor, "start")
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
                warm = backend.capabilities.warm_start and self._image_warm(machine)
            ensure_key(self.settings.keys)
            for attachment in spec.networks:  # a student's lab networks come up with the first machine on them
                backend.start_network(attachment.network)
            try:
                try:
                    status = self._boot(backend, spec, wait, timeout, progress, warm)
                except ConflictError:
                    if all(f.host_port for f in spec.forwards):
                        raise
                    # A port picked for a "0" forward can be taken by a machine starting beside this one before
                    # the backend binds it: it stopped everything, so one more start picks new ports.
                    status = self._boot(backend, spec, wait, timeout, progress)
            except LabkitError as err:
                with self.db.transaction() as session:
                    record(session, self.actor, "start-failed", name, str(err)[:2000])
                raise
            return self._settle(name, status, "start", ", ".join(map(str, status.forwards)))

    def _act(self, name: str, action: str, detail: str = "") -> MachineView:
        """Run one backend verb on a machine whose real state the table accepts for ``action``."""
        with self._locked(name):
            with self.db.transaction() as session:
                machine = self._get(session, name)
                backend, spec = self._backend(machine), self.spec(machine)
                if action in ("pause", "resume") and not backend.capabilities.pause:
                    raise StateError(f"cannot {action} machine {name}: its backend {backend.kind} cannot pause "
                                     "machines")
                status = self._reconcile(session, machine)
                if status.state not in ACCEPTS[action]:
                    raise StateError(f"cannot {action} machine {name}: it is {status.state.value}", status.state)
            verbs = {"stop": backend.stop, "kill": backend.kill, "pause": backend.pause, "resume": backend.resume}
            view = self._settle(name, verbs[action](spec), action, detail)
            if action == "resume":  # back from a pause: the idle time runs again from now (labkit.services.sweeper)
                with contextlib.suppress(OSError):
                    mark_activity(spec)
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


__all__ = ["LIVE", "SSH_PORT", "ConsoleAccess", "MachineFacts", "MachineView", "Machines", "SeedContent",
           "shown_forwards", "uptime"]
