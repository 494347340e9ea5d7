"""Guest handles on single machines: the console's way in, SSH with the console as fallback, or the disk of a stopped
machine read offline through its overlay kind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labkit.errors import StateError
from labkit.guest.keys import ensure_key
from labkit.runtime.base import Backend, MachineSpec, MachineStatus, State
from labkit.services.machine_records import ConsoleAccess, MachineRecords
from labkit.services.machine_states import ACCEPTS
from labkit.services.models import Machine

if TYPE_CHECKING:
    from labkit.guest import Guest
    from labkit.guest.offline import OfflineTransport


class MachineGuests(MachineRecords):
    """Looking inside machines from outside (part of `labkit.services.machines.Machines`)."""

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
