"""The disks of single machines: seed disks, overlays and their snapshots, copies for submissions, reset, restore
and removal. Every path, suffix and size comes from the machine's overlay kind; a running machine is synced and paused
for a copy."""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import time
from pathlib import Path

from sqlalchemy.orm import Session

from labkit.errors import ConflictError, LabkitError, NotFoundError, StateError
from labkit.guest.keys import new_host_key, public_key
from labkit.images.guest_contract import SEED_SSH_HOST_KEY
from labkit.images.seed import SeedSpec, build_seed, seed_member
from labkit.images.store import ImageStore
from labkit.names import check_name
from labkit.overlays import get_overlay
from labkit.progress import ProgressEvent, Reporter
from labkit.runtime import DEFAULT_BACKEND, backend_class
from labkit.runtime.base import Backend, MachineSpec, MachineStatus, State
from labkit.runtime.network import check_host_port
from labkit.services import images as image_service
from labkit.services.audit import record
from labkit.services.machine_guests import MachineGuests
from labkit.services.machine_records import MachineView, SeedContent
from labkit.services.machine_states import ACCEPTS, DISK, LIVE, RUNNING_STATE, snapshot_kind
from labkit.services.models import Machine, Snapshot
from labkit.services.timing import refuse_when_closed

#: Seconds a guest's own ``sync`` may take before a copy of its disk; then the kernel's emergency sync is used,
#: which only starts writing, so the copy waits this long for it.
FLUSH_TIMEOUT = 20.0
EMERGENCY_SYNC_WAIT = 1.0



def state_file(disk: Path) -> Path:
    """Where the running state that belongs to ``disk`` (a snapshot's file, or a machine's overlay) is kept: a file
    beside it. A machine's own one is the state its next start goes on from (left by restoring a snapshot)."""
    return disk.with_name(disk.name + ".state")


def link_or_copy(source: Path, dest: Path) -> None:
    """``dest`` becomes ``source``'s content: a hard link (instant, and the content stays while either name does),
    or a copy across file systems; written under a temporary name, then renamed."""
    partial = dest.with_name(f".{dest.name}.partial")
    partial.unlink(missing_ok=True)
    try:
        partial.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, partial)
    partial.rename(dest)


class MachineDisks(MachineGuests):
    """Seeds, overlays and snapshots of machines (part of `labkit.services.machines.Machines`)."""

    # ---- seed disks --------------------------------------------------------------------------------------------
    def clear_leftovers(self, name: str, backend: str = DEFAULT_BACKEND) -> None:
        """Before creating machine ``name`` again: remove what an interrupted create left without a record (an empty
        overlay never booted, so it holds no work; its seed; temporary files a killed run never renamed). An overlay
        that holds anything is left for `create` to refuse."""
        overlay = get_overlay(backend_class(backend).overlay_kind)
        overlay_path, seed_path = self._overlay_path(name, overlay), self._seed_path(name)
        if overlay_path.exists() and overlay.info(overlay_path).allocated_bytes == 0:
            overlay_path.unlink()
            seed_path.unlink(missing_ok=True)
        if not overlay_path.exists():
            state_file(overlay_path).unlink(missing_ok=True)
        for folder in (self.settings.overlays, self.settings.seeds):
            for partial in folder.glob(f".{name}.*"):
                if partial.is_dir():
                    shutil.rmtree(partial, ignore_errors=True)
                else:
                    partial.unlink(missing_ok=True)

    def _write_seed(self, machine: Machine, content: SeedContent | None = None) -> None:
        """Build the seed disk; its id follows its content, so the guest copies changed files on the next boot."""
        content = content or SeedContent()
        # the machine keeps its SSH host key when its seed is written again (a lab upgrade): students' known_hosts
        # stay right
        kept = [seed_member(Path(machine.seed_path), SEED_SSH_HOST_KEY + suffix) for suffix in ("", ".pub")]
        host_key = (kept[0].decode(), kept[1].decode()) if kept[0] and kept[1] else new_host_key()
        spec = SeedSpec(
            hostname=machine.hostname or machine.name,
            interfaces={"eth0": self._backend(machine).guest_address, **content.interfaces},
            authorized_keys=[public_key(self.settings.keys)],
            root_password=machine.console_password,
            ssh_host_key=host_key,
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
                    f"machine {name} runs on backend {machine.backend} but its lab now puts it on {backend} (named "
                    "in lab.toml, or by its image's recipe when lab.toml names none); a machine keeps the backend it "
                    f"was made with (its disk is a {machine.overlay_kind} overlay): name backend = "
                    f"\"{machine.backend}\" or pin the image version in the lab, rename the machine in the lab to "
                    "make a new one, or remove this one first")
            self._write_seed(machine, content)
            if reach is not None:
                machine.host_ports = sorted({check_host_port(port) for port in reach[0]})
                machine.outbound = reach[1]
            record(session, self.actor, "seed", name, "seed disk rewritten")

    def reset(self, name: str, discard: bool = False) -> MachineView:
        """Give the machine an empty overlay (explicit, recorded). The old overlay is kept as a snapshot named
        ``before-reset-<time>`` unless ``discard`` or it holds nothing: a reset never loses work without a record."""
        with self._stopped(name, "reset") as (session, machine):
            image_service.require_intact(session, self.settings, machine.image)
            kept = "" if discard else self._keep_before(session, machine, "reset")
            self._overlay(machine).reset(Path(machine.overlay_path), Path(machine.image.path))
            state_file(Path(machine.overlay_path)).unlink(missing_ok=True)  # it belonged to the old disk
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
        kind, state_size = self._keep_pending_state(machine, dest)
        machine.snapshots.append(Snapshot(name=keep, path=str(dest), size=size + state_size, kind=kind))
        record(session, self.actor, "snapshot", machine.name, f"{keep} (kept before a {action})")
        return f"; the old one is kept as snapshot {keep}"

    def snapshot(self, name: str, snapshot: str) -> MachineView:
        """Keep a named copy of the overlay. On a backend with running-state snapshots, a running or paused
        machine's memory and devices are kept with it (kind "running state"); otherwise a running machine is synced
        and paused for the copy, then resumed (kind "disk")."""
        check_name(snapshot, "snapshot name")
        with self._locked(name), self.db.transaction() as session:
            machine = self._get(session, name)
            refuse_when_closed(session, machine.id, self.actor, "snapshot")
            if any(s.name == snapshot for s in machine.snapshots):
                raise ConflictError(f"machine {name} already has a snapshot named {snapshot!r}")
            dest = self._snapshot_dir(name) / self._overlay(machine).file_name(snapshot)
            status = self._reconcile(session, machine)
            kind = snapshot_kind(self._backend(machine).capabilities.ram_snapshots, status.state)
            if kind == RUNNING_STATE:
                size, how = self._save_running_state(machine, status, dest), RUNNING_STATE
            else:
                size, how = self._copy_overlay(session, machine, dest, "snapshot")
                if status.state not in LIVE:
                    kind, state_size = self._keep_pending_state(machine, dest)
                    size += state_size
            machine.snapshots.append(Snapshot(name=snapshot, path=str(dest), size=size, kind=kind))
            record(session, self.actor, "snapshot", name, f"{snapshot} ({how})")
            return self._view(machine, self._backend(machine).status(self.spec(machine)))

    def _keep_pending_state(self, machine: Machine, dest: Path) -> tuple[str, int]:
        """With a copy of a stopped machine's overlay at ``dest``: keep the running state its next start would go on
        from (a restored snapshot's) beside the copy too. Returns the copy's kind and the state's bytes."""
        pending = state_file(Path(machine.overlay_path))
        if not pending.is_file():
            return DISK, 0
        link_or_copy(pending, state_file(dest))
        return RUNNING_STATE, pending.stat().st_size

    def _save_running_state(self, machine: Machine, status: MachineStatus, dest: Path) -> int:
        """Write the machine's running state beside ``dest`` and copy the overlay to ``dest`` while the backend holds
        the machine paused (so the disk belongs to the state), then let a running machine go on."""
        backend, spec = self._backend(machine), self.spec(machine)
        state = state_file(dest)
        backend.save_state(spec, state)
        try:
            info = self._overlay(machine).snapshot(Path(machine.overlay_path), dest)
        except BaseException:
            state.unlink(missing_ok=True)
            raise
        finally:
            if status.state == State.RUNNING:
                backend.resume(spec)
        return info.allocated_bytes + state.stat().st_size

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
        if live and not backend.capabilities.pause:
            raise StateError(f"cannot {action} machine {machine.name} while it runs: its backend {backend.kind} "
                             "cannot pause it for the copy; stop it first", status.state)
        if live:
            self._flush(machine, backend, spec, status)
            backend.pause(spec)
        try:
            info = self._overlay(machine).snapshot(Path(machine.overlay_path), dest)
        finally:
            if live:
                backend.resume(spec)
        return info.allocated_bytes, "live" if live else status.state.value

    def restore(self, name: str, snapshot: str, discard: bool = False, start: bool = False) -> MachineView:
        """Bring a snapshot back as the stopped machine's overlay (explicit, recorded). The overlay it replaces is kept
        as snapshot ``before-restore-<time>`` unless ``discard``. A "running state" snapshot brings its state back
        with the disk: the machine's next start goes on where it was (its processes, addresses and routes) instead of
        booting; with ``start`` the restore starts it at once (the web starts it through its course instead, so the
        course's memory budget applies). Without, the machine stays stopped, as after any restore."""
        with self._stopped(name, "restore") as (session, machine):
            chosen = self._snapshot(machine, snapshot)
            kept = "" if discard else self._keep_before(session, machine, "restore")
            overlay_path = Path(machine.overlay_path)
            self._overlay(machine).restore(Path(chosen.path), overlay_path)
            state_file(overlay_path).unlink(missing_ok=True)  # it belonged to the disk just replaced
            resumes = chosen.kind == RUNNING_STATE and state_file(Path(chosen.path)).is_file()
            if resumes:  # the next start goes on from the snapshot's state (a link: no copy of the memory)
                link_or_copy(state_file(Path(chosen.path)), state_file(overlay_path))
            elif chosen.kind == RUNNING_STATE:
                kept += "; its running state is missing, so the machine boots from the disk"
            record(session, self.actor, "restore", name, snapshot + kept)
            view = self._view(machine, self._backend(machine).status(self.spec(machine)))
        if resumes and start:
            return self.start(name)  # type: ignore[attr-defined,no-any-return]  # Machines.start
        return view

    def _image_warm(self, machine: Machine) -> bool:
        """Whether the machine's image says its guests can start from a warm state (its recipe's ``warm``)."""
        try:
            return ImageStore(self.settings).get(machine.image.name, machine.image.version).warm
        except LabkitError:
            return False

    def _boot(self, backend: Backend, spec: MachineSpec, wait: bool, timeout: float,
              progress: Reporter, warm: bool = False) -> MachineStatus:
        """Start the machine: from the running state a restored snapshot left beside its overlay (it goes on where
        it was; the state is then dropped, as the disk moves on from it; the snapshot keeps its own), else, when
        ``warm`` (its image allows it) and the machine is fresh, from the image's warm state (made by the first
        such start), else by booting. A state that does not load is dropped too, so the next start boots the disk."""
        pending = state_file(spec.overlay)
        if backend.capabilities.ram_snapshots and pending.is_file():
            progress(ProgressEvent("boot", message=f"bringing back the running state of {spec.name}"))
            try:
                backend.load_state(spec, pending, timeout=max(timeout, 60.0))
            except LabkitError as err:
                pending.unlink(missing_ok=True)
                raise StateError(f"{err}; the running state of machine {spec.name} did not load, so it was dropped: "
                                 "start the machine again to boot it from its disk (the snapshot still holds the "
                                 "state)") from err
            pending.unlink(missing_ok=True)
            return backend.status(spec)
        if warm and not backend.warm_refusal(spec):
            try:
                saved = backend.warm_state(spec.image, spec.memory_mb) or backend.make_warm(
                    spec.image, spec.memory_mb, self.settings.run_dir, timeout=max(timeout, 300.0), progress=progress)
            except LabkitError as err:  # the image's warm boot failed: this machine boots as it would without
                progress(ProgressEvent("boot", message=f"no warm state ({err}); booting {spec.name}"))
            else:
                return backend.start_warm(spec, saved, timeout=timeout, progress=progress)
        return backend.start(spec, wait=wait, timeout=timeout, progress=progress)

    def delete_snapshot(self, name: str, snapshot: str) -> None:
        with self._locked(name), self.db.transaction() as session:
            machine = self._get(session, name)
            chosen = self._snapshot(machine, snapshot)
            Path(chosen.path).unlink(missing_ok=True)
            state_file(Path(chosen.path)).unlink(missing_ok=True)
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
            state_file(Path(machine.overlay_path)).unlink(missing_ok=True)
            Path(machine.seed_path).unlink(missing_ok=True)
            shutil.rmtree(self._snapshot_dir(name), ignore_errors=True)
            shutil.rmtree(self.settings.run_dir / name, ignore_errors=True)
            record(session, self.actor, "remove", name, f"{len(machine.snapshots)} snapshots removed")
            session.delete(machine)

    def snapshots(self, name: str) -> list[dict[str, object]]:
        with self.db.transaction() as session:
            machine = self._get(session, name)
            return [{"name": s.name, "created_at": s.created_at.isoformat(), "size": s.size, "kind": s.kind,
                     "path": s.path} for s in machine.snapshots]
