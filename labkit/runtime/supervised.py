"""What every backend whose machine process runs under the console supervisor shares (UML and QEMU so far).

A `SupervisedBackend` keeps its whole truth in the machine's run folder and the process table (`RunDir`, pid files
with start times): status, waiting for a start, tearing down, kill, stop and pause as templates, the console socket
and SSH endpoint, and the lab networks on the shared VDE switches. A subclass says how to build its command line and
start, how to ask its guest to power off, how to freeze and thaw it, and what it leaves on disk after a crash.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from abc import abstractmethod
from pathlib import Path

from labkit.errors import ConflictError, RuntimeBackendError, StateError
from labkit.images.guest_contract import ERROR_MARKER
from labkit.runtime.base import (
    Backend,
    Forward,
    MachineSpec,
    MachineStatus,
    NetworkSpec,
    NetworkStatus,
    State,
    waits_ended,
)
from labkit.runtime.capture import Tap
from labkit.runtime.netns import isolation_problems
from labkit.runtime.process import ProcessRecord, end_processes
from labkit.runtime.rundir import RunDir
from labkit.runtime.supervisor import console_tail
from labkit.runtime.vde import VdeNetworks

#: states in which a machine has processes that stop and kill end
LIVE = (State.STARTING, State.RUNNING, State.PAUSED, State.ERROR, State.STOPPING)
#: how the console says a kernel gave up
KERNEL_PANIC = "Kernel panic - not syncing"


def last_exit(run: RunDir) -> str:
    """The supervisor's record of how the machine's last run ended, in words ("" when there is none)."""
    record = run.read_json(run.exit_record)
    if not isinstance(record, dict):
        return ""
    return f"last run {record.get('reason', 'ended')} with code {record.get('returncode')}"


class SupervisedBackend(Backend):
    """The shared half of a backend whose machine runs under `labkit.runtime.supervisor`."""

    #: the machine process in messages ("linux", "qemu")
    process_name: str = "machine"
    #: fail a start as soon as the console shows a kernel panic (a guest that reboots or hangs after one)
    watch_for_panic: bool = False
    ready_marker: str
    lab_networks: VdeNetworks

    # ---- what each backend says

    @abstractmethod
    def recorded_forwards(self, spec: MachineSpec) -> tuple[Forward, ...]:
        """The forwards the running machine got at start (read from its run folder)."""

    def status_extra(self, spec: MachineSpec) -> dict[str, str]:
        """Backend-specific entries for `MachineStatus.extra` (control sockets)."""
        return {}

    def live_state(self, spec: MachineSpec, run: RunDir, ready: bool) -> tuple[State, str]:
        """The state of a machine whose process and supervisor both run: paused by its mark, else running once
        ready. A backend that can ask its machine overrides this."""
        if run.paused.exists():
            return State.PAUSED, ""
        return (State.RUNNING if ready else State.STARTING), ""

    def clean_backend_files(self, spec: MachineSpec) -> None:
        """Remove what the backend itself leaves outside the run folder's live files after a crash."""

    @abstractmethod
    def power_off(self, spec: MachineSpec, current: MachineStatus, machine: ProcessRecord, timeout: float) -> None:
        """Ask the guest to shut down and wait up to ``timeout``; end the machine process when it does not go."""

    @abstractmethod
    def freeze(self, spec: MachineSpec) -> None:
        """Stop the guest's CPUs (the machine keeps its memory)."""

    @abstractmethod
    def thaw(self, spec: MachineSpec) -> None:
        """Let a frozen guest run on."""

    def host_problems(self) -> list[str]:
        """What every supervised backend needs of the host besides its own programs: the lab networks' switch and
        the per-machine namespaces."""
        missing = []
        for binary, package in self.lab_networks.requirements().items():
            if shutil.which(binary) is None:
                missing.append(f"{binary} (Debian package {package}) is not installed or not on PATH; lab networks "
                               "cannot start")
        return missing + isolation_problems()

    # ---- status

    def status(self, spec: MachineSpec) -> MachineStatus:
        run = RunDir(spec.run_dir)
        sup = ProcessRecord.read(run.supervisor_pid)
        machine = ProcessRecord.read(run.machine_pid)
        sup_alive = bool(sup and sup.alive())
        machine_alive = bool(machine and machine.alive())
        forwards = self.recorded_forwards(spec)
        extra = {"console_socket": str(run.console_sock), **self.status_extra(spec),
                 "console_log": str(spec.console_log)}
        started_at = None
        with contextlib.suppress(OSError):
            started_at = run.machine_pid.stat().st_mtime

        if not sup_alive and not machine_alive:
            detail = last_exit(run)
            if any(path.exists() for path in run.runtime_files()):
                # A supervisor that died cannot clean up after itself: do it now, including the machine's helpers.
                end_processes(machine.pid if machine else None, run.machine_argv())
                self._clean_after_crash(spec)
                detail = "the machine's processes were gone without a clean exit; cleaned up what they left"
            return MachineStatus(State.STOPPED, forwards=forwards, detail=detail, extra=extra)
        machine_pid = machine.pid if machine and machine_alive else None
        sup_pid = sup.pid if sup and sup_alive else None

        def report(state: State, detail: str = "", ready: bool = False) -> MachineStatus:
            return MachineStatus(state, pid=machine_pid, supervisor_pid=sup_pid, forwards=forwards,
                                 started_at=started_at if machine_pid else None, ready=ready, detail=detail,
                                 extra=extra)

        name = self.process_name
        if not machine_alive:
            if machine is None:
                return report(State.STARTING, f"the supervisor is starting {name}")
            return report(State.STOPPING, f"{name} ended; the supervisor is cleaning up")
        if not sup_alive:
            return report(State.ERROR, f"{name} (pid {machine_pid}) runs without its console supervisor; stop or "
                                       "kill it")
        ready = run.ready.exists()
        state, detail = self.live_state(spec, run, ready)
        return report(state, detail, ready=ready)

    def _clean_after_crash(self, spec: MachineSpec) -> None:
        """End the supervisor's helpers that outlived it (they die with it; this is the belt to those braces) and
        remove the run folder's live-run files and what the backend left."""
        run = RunDir(spec.run_dir)
        for pid_file in run.helper_pid_files():
            helper = ProcessRecord.read(pid_file)
            if helper is not None:
                helper.send(signal.SIGKILL)
        run.clean_runtime_files()
        self.clean_backend_files(spec)

    def _require(self, spec: MachineSpec, allowed: tuple[State, ...], verb: str) -> MachineStatus:
        current = self.status(spec)
        if current.state not in allowed:
            raise StateError(f"cannot {verb} machine {spec.name}: it is {current.state}", current.state)
        return current

    # ---- waiting for a start

    def _failure(self, spec: MachineSpec, what: str) -> RuntimeBackendError:
        return RuntimeBackendError(f"machine {spec.name} {what}; last console lines of {spec.console_log}:\n"
                                   f"{console_tail(spec.console_log)}")

    def _ended(self, spec: MachineSpec) -> RuntimeBackendError | ConflictError | None:
        run = RunDir(spec.run_dir)
        if run.exit_record.exists():
            record = run.read_json(run.exit_record)
            if isinstance(record, dict) and record.get("conflict"):
                return ConflictError(f"machine {spec.name} cannot start: {record.get('reason')}")
            return self._failure(spec, last_exit(run).replace("last run", "ended while starting:"))
        sup = ProcessRecord.read(run.supervisor_pid)
        if sup is not None and not sup.alive():
            return self._failure(spec, f"lost its console supervisor while starting (see {run.supervisor_log})")
        return None

    def _wait_for_machine(self, spec: MachineSpec, deadline: float) -> ProcessRecord:
        run = RunDir(spec.run_dir)
        while True:
            record = ProcessRecord.read(run.machine_pid)
            if record is not None:
                return record
            ended = self._ended(spec)
            if ended is not None:
                raise ended
            if time.monotonic() > deadline:
                raise self._failure(spec, "was not started by its supervisor in time")
            if waits_ended():
                raise RuntimeBackendError(f"machine {spec.name}: its start was interrupted")
            time.sleep(0.02)

    def _wait_until_ready(self, spec: MachineSpec, deadline: float) -> None:
        run = RunDir(spec.run_dir)
        looked = time.monotonic()
        while not run.ready.exists():
            if self.watch_for_panic and time.monotonic() - looked > 0.5:
                looked = time.monotonic()
                if KERNEL_PANIC in console_tail(spec.console_log, 60):
                    time.sleep(0.3)
                    raise self._failure(spec, "could not boot: its kernel panicked")
            if run.guest_error.exists():
                time.sleep(0.3)  # let the rest of the error line reach the log
                lines = [line for line in console_tail(spec.console_log, 200).splitlines() if ERROR_MARKER in line]
                reason = lines[-1].split(ERROR_MARKER, 1)[1].strip() if lines else "(see the console log)"
                raise self._failure(spec, f"reported that it cannot become ready: {reason}")
            ended = self._ended(spec)
            if ended is not None:
                raise ended
            if time.monotonic() > deadline:
                raise self._failure(spec, f"did not print {self.ready_marker!r} in time")
            if waits_ended():
                raise RuntimeBackendError(f"machine {spec.name}: its start was interrupted")
            time.sleep(0.01)  # a stat; a warm start is ready within a second or two, so poll finely

    # ---- stop, kill

    def _teardown(self, spec: MachineSpec, grace: float = 5.0) -> None:
        """End everything of this machine that runs, by recorded PIDs, process group and command line, and clean its
        run folder."""
        run = RunDir(spec.run_dir)
        machine = ProcessRecord.read(run.machine_pid)
        sup = ProcessRecord.read(run.supervisor_pid)
        end_processes(machine.pid if machine else None, run.machine_argv())
        # The supervisor notices, records the exit and removes its files; if it does not, it goes too.
        if sup is not None and not sup.wait_gone(grace):
            sup.send(signal.SIGKILL)
            sup.wait_gone(2.0)
        end_processes(machine.pid if machine else None, run.machine_argv())
        self._clean_after_crash(spec)

    def _wait_supervisor(self, spec: MachineSpec, sup: ProcessRecord | None, timeout: float) -> None:
        """Wait until ``sup``, the supervisor read when the stop or kill began, has exited; end it if it does not.

        Its pid file is no guide by now: the supervisor removes it while cleaning up, before it exits, so a machine
        would be reported stopped while its supervisor still ran (and could clean up after a new start's files).
        """
        if sup is not None and not sup.wait_gone(timeout):
            self._teardown(spec)
            sup.send(signal.SIGKILL)
            sup.wait_gone(2.0)

    @staticmethod
    def _supervisor(spec: MachineSpec, current: MachineStatus) -> ProcessRecord | None:
        sup = ProcessRecord.read(RunDir(spec.run_dir).supervisor_pid)
        return sup if sup is not None and sup.pid == current.supervisor_pid else None

    def stop(self, spec: MachineSpec, *, timeout: float = 30.0) -> MachineStatus:
        current = self._require(spec, LIVE, "stop")
        run = RunDir(spec.run_dir)
        sup = self._supervisor(spec, current)
        machine = ProcessRecord.read(run.machine_pid)
        if machine is not None and current.state != State.STOPPING:
            self.power_off(spec, current, machine, timeout)
        self._wait_supervisor(spec, sup, 10.0)
        return self.status(spec)

    def kill(self, spec: MachineSpec) -> MachineStatus:
        current = self._require(spec, LIVE, "kill")
        run = RunDir(spec.run_dir)
        sup = self._supervisor(spec, current)
        machine = ProcessRecord.read(run.machine_pid)
        end_processes(machine.pid if machine else None, run.machine_argv())
        self._wait_supervisor(spec, sup, 10.0)
        return self.status(spec)

    # ---- pause, resume

    def pause(self, spec: MachineSpec) -> MachineStatus:
        self._require(spec, (State.RUNNING,), "pause")
        self.freeze(spec)
        RunDir(spec.run_dir).paused.write_text(f"{time.time()}\n")
        return self.status(spec)

    def resume(self, spec: MachineSpec) -> MachineStatus:
        self._require(spec, (State.PAUSED,), "resume")
        self.thaw(spec)
        with contextlib.suppress(FileNotFoundError):
            RunDir(spec.run_dir).paused.unlink()
        return self.status(spec)

    # ---- endpoints

    def console_socket(self, spec: MachineSpec) -> Path:
        return RunDir(spec.run_dir).console_sock

    def ssh_endpoint(self, spec: MachineSpec) -> tuple[str, int] | None:
        current = self.status(spec)
        if current.state == State.STOPPED:
            return None
        for forward in current.forwards:
            if forward.guest_port == 22:
                return ("127.0.0.1", forward.host_port)
        return None

    # ---- lab networks (VDE switches, shared by every backend's machines)

    def start_network(self, spec: NetworkSpec, *, timeout: float = 10.0) -> NetworkStatus:
        return self.lab_networks.start(spec, timeout)

    def stop_network(self, spec: NetworkSpec, *, timeout: float = 5.0) -> NetworkStatus:
        return self.lab_networks.stop(spec, timeout)

    def network_status(self, spec: NetworkSpec) -> NetworkStatus:
        return self.lab_networks.status(spec)

    def open_tap(self, spec: NetworkSpec, *, owner: str, seconds: float) -> Tap:
        return self.lab_networks.tap(spec, owner, seconds)
