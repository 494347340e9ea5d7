"""UmlBackend: runs a `MachineSpec` as an unprivileged User-Mode Linux guest (docs/runtime.md tells the whole story).

Nothing is held in memory between calls: every verb reads the run folder (pid files with start times, ready and pause
marks, recorded forwards) and the process table, so a restarted CLI or web app sees the same truth.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from labkit.errors import ConfigError, ConflictError, NotFoundError, RuntimeBackendError, StateError
from labkit.images.guest_contract import ERROR_MARKER, READY_MARKER, SEED_DEVICE, seed_kernel_arg
from labkit.names import check_name
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.runtime.base import Backend, Capabilities, MachineSpec, MachineStatus, NetworkSpec, NetworkStatus, State
from labkit.runtime.netns import isolation_problems
from labkit.runtime.process import ProcessRecord, end_processes, process_group_members
from labkit.runtime.rundir import RunDir
from labkit.runtime.supervisor import console_tail, spawn_supervisor
from labkit.runtime.uml.disk_check import ROOT_MOUNT_FAILED, KernelFaultAtBoot, kernel_fault_at_boot, root_disk_problems
from labkit.runtime.uml.mconsole import MconsoleClient, MconsoleError
from labkit.runtime.uml.slirp import SlirpNetwork, UmlNetwork
from labkit.runtime.uml.vde import VdeNetworks

#: sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
#: Debian packages providing the programs this backend runs.
PACKAGES = {"linux": "user-mode-linux"}


#: Debian's UML kernel benchmarks its RAID6 algorithms at every boot: 0.85 s of a 1.5 s boot on this machine kind.
#: Skipping that initcall leaves RAID6 unusable inside the guest (md raid456, btrfs raid5/6); a lab that teaches those
#: builds its backend without it. ``quiet`` keeps the console to errors, so a guest that cannot boot says why (UML's
#: ubd driver reports a locked or changed disk at KERN_ERR). The two errors every boot printed are switched off at their
#: source: mmapper_init (no iomem region is ever configured) and SELinux's CHECKREQPROT notice (SELinux is left out of
#: the LSM list; lab images do not use it). So a healthy console starts with the ready marker and the shell or login.
FAST_BOOT_ARGS = ("quiet", "lsm=landlock,lockdown,yama,integrity,apparmor,bpf",
                  "initcall_blacklist=raid6_select_algo,mmapper_init")


class UmlBackend(Backend):
    """Machines as ``linux`` processes, each under its own console supervisor, networked through `UmlNetwork` (eth0)
    and `VdeNetworks` (lab networks, eth1 ...)."""

    kind = "uml"
    overlay_kind = "umlcow"
    console_kind = "socket"
    #: disk-only snapshots (UML cannot save a running kernel's memory); mconsole stop/go pauses; VDE lab networks
    capabilities = Capabilities(ram_snapshots=False, pause=True, lab_networks=True)

    def __init__(self, linux_binary: str = "linux", network: UmlNetwork | None = None,
                 python: str = sys.executable, ready_marker: str = READY_MARKER,
                 boot_args: tuple[str, ...] = FAST_BOOT_ARGS, lab_networks: VdeNetworks | None = None) -> None:
        self.linux_binary = linux_binary
        self.network = network or SlirpNetwork()
        self.lab_networks = lab_networks or VdeNetworks()
        self.python = python
        self.ready_marker = ready_marker
        self.boot_args = boot_args

    # ---- paths

    @staticmethod
    def uml_dir(spec: MachineSpec) -> Path:
        """UML's own folder (``uml_dir=``), shared by the machines of one run root and short, for the mconsole path.

        Not the run root itself: UML owns ``<uml_dir>/<umid>/`` and empties it at start and exit, so with the run root
        it would wipe the run folder ``<root>/<name>``. A leading dot keeps it apart from every valid machine name.
        """
        return spec.run_dir.parent / ".uml"

    def instance_dir(self, spec: MachineSpec) -> Path:
        return self.uml_dir(spec) / spec.name

    def mconsole_path(self, spec: MachineSpec) -> Path:
        return self.instance_dir(spec) / "mconsole"

    def mconsole(self, spec: MachineSpec, timeout: float = 5.0) -> MconsoleClient:
        return MconsoleClient(self.mconsole_path(spec), timeout)

    # ---- checks

    def _find_linux(self) -> str:
        found = shutil.which(self.linux_binary)
        if found is None:
            raise ConfigError(f"the UML kernel {self.linux_binary!r} is not installed or not on PATH "
                              "(Debian package 'user-mode-linux')")
        return found

    def check(self) -> list[str]:
        missing = []
        if shutil.which(self.linux_binary) is None:
            missing.append(f"{self.linux_binary} (Debian package {PACKAGES['linux']}) is not installed or not on PATH")
        for binary, package in self.network.requirements().items():
            if shutil.which(binary) is None:
                missing.append(f"{binary} (Debian package {package}) is not installed or not on PATH")
        for binary, package in self.lab_networks.requirements().items():
            if shutil.which(binary) is None:
                missing.append(f"{binary} (Debian package {package}) is not installed or not on PATH; lab networks "
                               "cannot start")
        missing += isolation_problems()
        tmp = os.environ.get("TMPDIR") or "/tmp"
        if not os.access(tmp, os.W_OK) and not os.access("/dev/shm", os.W_OK):
            missing.append(f"neither {tmp} nor /dev/shm is writable: UML keeps guest memory in a file there")
        return missing

    def _check_spec(self, spec: MachineSpec) -> None:
        check_name(spec.name, "machine name")
        for label, path in (("mconsole socket", self.mconsole_path(spec)),
                            ("console socket", RunDir(spec.run_dir).console_sock)):
            if len(os.fsencode(path)) > MAX_SOCKET_PATH:
                raise ConfigError(f"the {label} path {path} is {len(os.fsencode(path))} bytes, over the UNIX socket "
                                  f"limit of {MAX_SOCKET_PATH}; set LABKIT_RUN to a shorter folder (e.g. /tmp/lk)")
        if not spec.image.is_file():
            raise NotFoundError(f"base image {spec.image} of machine {spec.name} does not exist")
        if spec.seed is not None and not spec.seed.is_file():
            raise NotFoundError(f"seed disk {spec.seed} of machine {spec.name} does not exist")
        for path in (spec.image, spec.overlay, *((spec.seed,) if spec.seed else ())):
            if "," in str(path) or any(c.isspace() for c in str(path)):
                raise ConfigError(f"{path} holds a comma or white space, which UML's ubd option cannot carry")
        self.lab_networks.check_attachments(spec)

    def command_line(self, spec: MachineSpec, linux: str, net_args: list[str]) -> list[str]:
        """The ``linux`` argv. ``ubd0=COW,BACKING`` opens an existing COW overlay (UML checks that its recorded
        backing file, size and mtime match) or creates it; the seed is attached read-only as the second disk."""
        argv = [linux, f"mem={spec.memory_mb}M", f"umid={spec.name}", f"uml_dir={self.uml_dir(spec)}",
                f"ubd0={spec.overlay.absolute()},{spec.image.absolute()}"]
        if spec.seed is not None:
            argv.append(f"ubd1r={spec.seed.absolute()}")
        seed_arg = [seed_kernel_arg(SEED_DEVICE)] if spec.seed is not None else []  # before the lab's args: it wins
        argv += ["root=/dev/ubda", "rw", *net_args, "con=null", "ssl=null", "con0=fd:0,fd:1", *self.boot_args,
                 *seed_arg, *spec.kernel_args]
        return argv

    # ---- status

    def status(self, spec: MachineSpec) -> MachineStatus:
        run = RunDir(spec.run_dir)
        sup = ProcessRecord.read(run.supervisor_pid)
        linux = ProcessRecord.read(run.machine_pid)
        sup_alive = bool(sup and sup.alive())
        linux_alive = bool(linux and linux.alive())
        forwards = self.network.recorded_forwards(spec.run_dir)
        extra = {"console_socket": str(run.console_sock), "mconsole": str(self.mconsole_path(spec)),
                 "console_log": str(spec.console_log)}
        started_at = None
        with contextlib.suppress(OSError):
            started_at = run.machine_pid.stat().st_mtime

        if not sup_alive and not linux_alive:
            detail = self._last_exit(run)
            if any(path.exists() for path in run.runtime_files()):
                # A supervisor that died cannot clean up after itself: do it now, including UML's helpers.
                end_processes(linux.pid if linux else None, run.machine_argv())
                self._clean_after_crash(spec)
                detail = "the machine's processes were gone without a clean exit; cleaned up what they left"
            return MachineStatus(State.STOPPED, forwards=forwards, detail=detail, extra=extra)
        linux_pid = linux.pid if linux and linux_alive else None
        sup_pid = sup.pid if sup and sup_alive else None

        def report(state: State, detail: str = "", ready: bool = False) -> MachineStatus:
            return MachineStatus(state, pid=linux_pid, supervisor_pid=sup_pid, forwards=forwards,
                                 started_at=started_at if linux_pid else None, ready=ready, detail=detail, extra=extra)

        if not linux_alive:
            if linux is None:
                return report(State.STARTING, "the supervisor is starting linux")
            return report(State.STOPPING, "linux ended; the supervisor is cleaning up")
        if not sup_alive:
            return report(State.ERROR, f"linux (pid {linux_pid}) runs without its console supervisor; stop or kill it")
        ready = run.ready.exists()
        if run.paused.exists():
            return report(State.PAUSED, ready=ready)
        return report(State.RUNNING if ready else State.STARTING, ready=ready)

    @staticmethod
    def _last_exit(run: RunDir) -> str:
        record = run.read_json(run.exit_record)
        if not isinstance(record, dict):
            return ""
        return f"last run {record.get('reason', 'ended')} with code {record.get('returncode')}"

    def _clean_after_crash(self, spec: MachineSpec) -> None:
        """End the supervisor's helpers that outlived it (they die with it; this is the belt to those braces), remove
        the run folder's live-run files and UML's stale ``<uml_dir>/<umid>/`` (left by a killed linux)."""
        run = RunDir(spec.run_dir)
        for pid_file in run.helper_pid_files():
            helper = ProcessRecord.read(pid_file)
            if helper is not None:
                helper.send(signal.SIGKILL)
        run.clean_runtime_files()
        instance = self.instance_dir(spec)
        try:
            owner = int((instance / "pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            owner = None
        if owner is not None:
            try:
                cmdline = Path(f"/proc/{owner}/cmdline").read_bytes().split(b"\0")
            except OSError:
                cmdline = []
            if f"umid={spec.name}".encode() in cmdline:
                return  # a live UML with this umid owns it (not one of ours: ours is gone)
        for name in ("mconsole", "pid"):
            with contextlib.suppress(OSError):
                (instance / name).unlink()
        with contextlib.suppress(OSError):
            instance.rmdir()

    def _require(self, spec: MachineSpec, allowed: tuple[State, ...], verb: str) -> MachineStatus:
        current = self.status(spec)
        if current.state not in allowed:
            raise StateError(f"cannot {verb} machine {spec.name}: it is {current.state}", current.state)
        return current

    # ---- start

    def start(self, spec: MachineSpec, *, wait: bool = True, timeout: float = 60.0,
              progress: Reporter = silent) -> MachineStatus:
        self._check_spec(spec)
        current = self.status(spec)
        if current.state != State.STOPPED:
            raise StateError(f"cannot start machine {spec.name}: it is already {current.state}", current.state)
        # Before anything is written or started: a machine never boots with a dead lab network interface.
        self.lab_networks.require_running(spec)
        linux = self._find_linux()
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        # Leftovers of an earlier run that escaped every clean-up would hold the disks' locks.
        end_processes(None, RunDir(spec.run_dir).machine_argv())
        self.uml_dir(spec).mkdir(exist_ok=True)
        spec.console_log.parent.mkdir(parents=True, exist_ok=True)
        spec.overlay.parent.mkdir(parents=True, exist_ok=True)
        run = RunDir(spec.run_dir)
        progress(ProgressEvent("network", message=f"preparing the network of {spec.name}"))
        plan = self.network.prepare(spec)
        net_args = [*plan.kernel_args, *self.lab_networks.attach(spec)]
        with contextlib.suppress(FileNotFoundError):
            run.exit_record.unlink()
        run.write_json(run.supervisor_spec, {
            "argv": self.command_line(spec, linux, net_args),
            "console_log": str(spec.console_log.absolute()),
            "ready_marker": self.ready_marker,
            "error_marker": ERROR_MARKER,
            # UML removes <uml_dir>/<umid>/ on a clean exit; after a kill the stale mconsole socket and pid stay.
            "remove_after": [str(self.instance_dir(spec) / name) for name in ("mconsole", "pid")]
                            + [str(self.instance_dir(spec))],
            "isolation": plan.isolation.to_json() if plan.isolation is not None else None,
        })
        progress(ProgressEvent("boot", message=f"starting {spec.name}"))
        deadline = time.monotonic() + timeout
        try:
            record = self._boot(spec, deadline, wait, progress)
            if not wait:
                return self.status(spec)
            progress(ProgressEvent("network", message=f"checking the forwards of {spec.name}"))
            self.network.confirm(spec, plan, lambda: process_group_members(record.pid),
                                 timeout=min(10.0, max(2.0, deadline - time.monotonic())))
        except BaseException:
            self._teardown(spec)
            raise
        progress(ProgressEvent("ready", message=f"{spec.name} is ready"))
        return self.status(spec)

    def _spawn_supervisor(self, spec: MachineSpec) -> None:
        spawn_supervisor(spec.run_dir, spec.name, self.python)

    def _boot(self, spec: MachineSpec, deadline: float, wait: bool, progress: Reporter) -> ProcessRecord:
        """Start the supervisor and wait for linux (and, with ``wait``, for the ready marker). A boot that failed in
        the guest kernel itself (`KernelFaultAtBoot`: the disk is fine) is tried once more, and the console log says
        so; every other failure is raised at once."""
        run = RunDir(spec.run_dir)
        tries = 2
        while True:
            tries -= 1
            self._spawn_supervisor(spec)
            supervisor = ProcessRecord.read(run.supervisor_pid)
            try:
                record = self._wait_for_machine(spec, deadline)
                if wait:
                    self._wait_until_ready(spec, deadline)
                return record
            except KernelFaultAtBoot:
                if not tries:
                    raise
            if supervisor is not None:  # it cleans the run folder on its way out: never under a new start
                supervisor.wait_gone(10.0)
            run.exit_record.unlink(missing_ok=True)
            with open(spec.console_log, "ab") as log:
                log.write(b"\r\nlabkit: the guest kernel failed at boot, its disk is fine; starting it once more\r\n")
            progress(ProgressEvent("boot", message=f"starting {spec.name} again (the guest kernel failed at boot)"))

    def _failure(self, spec: MachineSpec, what: str) -> RuntimeBackendError:
        said = console_tail(spec.console_log)
        disk, kernel_fault = "", False
        if ROOT_MOUNT_FAILED in said:
            problems = root_disk_problems(spec.overlay, spec.image)
            kernel_fault = kernel_fault_at_boot(said, problems)
            disk = "\nits root disk: " + ("; ".join(problems) if problems else "no problem found with "
                                           f"{spec.overlay} or {spec.image} after the fact")
        kind = KernelFaultAtBoot if kernel_fault else RuntimeBackendError
        return kind(f"machine {spec.name} {what}; last console lines of {spec.console_log}:\n{said}{disk}")

    def _ended(self, spec: MachineSpec) -> RuntimeBackendError | ConflictError | None:
        run = RunDir(spec.run_dir)
        if run.exit_record.exists():
            record = run.read_json(run.exit_record)
            if isinstance(record, dict) and record.get("conflict"):
                return ConflictError(f"machine {spec.name} cannot start: {record.get('reason')}")
            return self._failure(spec, self._last_exit(run).replace("last run", "ended while starting:"))
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
            time.sleep(0.02)

    def _wait_until_ready(self, spec: MachineSpec, deadline: float) -> None:
        run = RunDir(spec.run_dir)
        while not run.ready.exists():
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
            time.sleep(0.05)

    # ---- stop, kill

    def _teardown(self, spec: MachineSpec, grace: float = 5.0) -> None:
        """End everything of this machine that runs, by recorded PIDs, process group and command line, and clean its
        run folder."""
        run = RunDir(spec.run_dir)
        linux = ProcessRecord.read(run.machine_pid)
        sup = ProcessRecord.read(run.supervisor_pid)
        end_processes(linux.pid if linux else None, run.machine_argv())
        # The supervisor notices, records the exit and removes its files; if it does not, it goes too.
        if sup is not None and not sup.wait_gone(grace):
            sup.send(signal.SIGKILL)
            sup.wait_gone(2.0)
        end_processes(linux.pid if linux else None, run.machine_argv())
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
        current = self._require(spec, (State.STARTING, State.RUNNING, State.PAUSED, State.ERROR, State.STOPPING),
                                "stop")
        run = RunDir(spec.run_dir)
        sup = self._supervisor(spec, current)
        linux = ProcessRecord.read(run.machine_pid)
        if linux is not None and current.state != State.STOPPING:
            with self.mconsole(spec) as console:
                if current.state == State.PAUSED:
                    with contextlib.suppress(MconsoleError):
                        console.go()
                    with contextlib.suppress(FileNotFoundError):
                        run.paused.unlink()
                asked = False
                with contextlib.suppress(MconsoleError):
                    console.cad()
                    asked = True
                if not (asked and linux.wait_gone(timeout)):
                    with contextlib.suppress(MconsoleError):
                        console.halt()
                    if not linux.wait_gone(5.0):
                        end_processes(linux.pid, run.machine_argv())
        self._wait_supervisor(spec, sup, 10.0)
        return self.status(spec)

    def kill(self, spec: MachineSpec) -> MachineStatus:
        current = self._require(spec, (State.STARTING, State.RUNNING, State.PAUSED, State.ERROR, State.STOPPING),
                                "kill")
        run = RunDir(spec.run_dir)
        sup = self._supervisor(spec, current)
        linux = ProcessRecord.read(run.machine_pid)
        end_processes(linux.pid if linux else None, run.machine_argv())
        self._wait_supervisor(spec, sup, 10.0)
        return self.status(spec)

    # ---- pause, resume, sync

    def pause(self, spec: MachineSpec) -> MachineStatus:
        self._require(spec, (State.RUNNING,), "pause")
        with self.mconsole(spec) as console:
            console.stop()
        RunDir(spec.run_dir).paused.write_text(f"{time.time()}\n")
        return self.status(spec)

    def resume(self, spec: MachineSpec) -> MachineStatus:
        self._require(spec, (State.PAUSED,), "resume")
        with self.mconsole(spec) as console:
            console.go()
        with contextlib.suppress(FileNotFoundError):
            RunDir(spec.run_dir).paused.unlink()
        return self.status(spec)

    def sync(self, spec: MachineSpec) -> None:
        self._require(spec, (State.RUNNING,), "sync")
        with self.mconsole(spec) as console:
            console.sysrq("s")

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

    # ---- lab networks

    def start_network(self, spec: NetworkSpec, *, timeout: float = 10.0) -> NetworkStatus:
        return self.lab_networks.start(spec, timeout)

    def stop_network(self, spec: NetworkSpec, *, timeout: float = 5.0) -> NetworkStatus:
        return self.lab_networks.stop(spec, timeout)

    def network_status(self, spec: NetworkSpec) -> NetworkStatus:
        return self.lab_networks.status(spec)
