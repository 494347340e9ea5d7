"""UmlBackend: runs a `MachineSpec` as an unprivileged User-Mode Linux guest (docs/runtime.md tells the whole story).

Nothing is held in memory between calls: every verb reads the run folder (pid files with start times, ready and pause
marks, recorded forwards) and the process table, so a restarted CLI or web app sees the same truth.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from labkit.errors import ConfigError, NotFoundError, RuntimeBackendError, StateError
from labkit.images.guest_contract import ERROR_MARKER, READY_MARKER, SEED_DEVICE, seed_kernel_arg
from labkit.names import check_name
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.runtime.base import Capabilities, Forward, MachineSpec, MachineStatus, State
from labkit.runtime.cpus import next_cpu, pinning_wanted
from labkit.runtime.process import ProcessRecord, end_processes, process_group_members
from labkit.runtime.rundir import RunDir
from labkit.runtime.supervised import SupervisedBackend
from labkit.runtime.supervisor import console_tail, spawn_supervisor
from labkit.runtime.uml.disk_check import ROOT_MOUNT_FAILED, KernelFaultAtBoot, kernel_fault_at_boot, root_disk_problems
from labkit.runtime.uml.mconsole import MconsoleClient, MconsoleError
from labkit.runtime.uml.slirp import SlirpNetwork, UmlNetwork
from labkit.runtime.vde import NicLink, VdeNetworks

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


#: Start ``linux`` without address-space randomization. UML's guest memory spans from the kernel binary to the end of
#: ``mem=``, and with the heap's start randomized (up to 1 GiB after the binary on x86_64) the kernel keeps a page
#: descriptor (64 bytes per 4 KiB page) for every page of that gap too: up to 16 MB of every guest's memory, which
#: the host pays for and the guest loses. The kernel binary is not position-independent (always at 0x60000000), so what
#: randomization is lost is the libraries', the stack's and the heap's; slirp, which parses the guest's packets, is
#: started with randomization back on (its wrapper runs it under ``setarch``). docs/runtime.md, "Memory".
FIXED_LAYOUT = True


def vde_arguments(nics: list[NicLink]) -> list[str]:
    """UML's kernel arguments that plug its NICs into lab networks: ``ethN=vde,LINK,MAC``."""
    return [f"eth{nic.index}=vde,{nic.link},{nic.mac}" for nic in nics]


class UmlBackend(SupervisedBackend):
    """Machines as ``linux`` processes, each under its own console supervisor, networked through `UmlNetwork` (eth0)
    and `VdeNetworks` (lab networks, eth1 ...)."""

    kind = "uml"
    process_name = "linux"
    overlay_kind = "umlcow"
    console_kind = "socket"
    #: disk-only snapshots (UML cannot save a running kernel's memory); mconsole stop/go pauses; VDE lab networks
    capabilities = Capabilities(ram_snapshots=False, pause=True, lab_networks=True)

    def __init__(self, linux_binary: str = "linux", network: UmlNetwork | None = None,
                 python: str = sys.executable, ready_marker: str = READY_MARKER,
                 boot_args: tuple[str, ...] = FAST_BOOT_ARGS, lab_networks: VdeNetworks | None = None,
                 pin_cpu: bool | None = None) -> None:
        self.linux_binary = linux_binary
        self.network = network or SlirpNetwork()
        self.lab_networks = lab_networks or VdeNetworks()
        self.python = python
        self.ready_marker = ready_marker
        self.boot_args = boot_args
        #: keep each machine on one host CPU (`labkit.runtime.cpus`); LABKIT_PIN_CPU=0 turns it off
        self.pin_cpu = pinning_wanted() if pin_cpu is None else pin_cpu

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
        missing += self.host_problems()
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

    def recorded_forwards(self, spec: MachineSpec) -> tuple[Forward, ...]:
        return self.network.recorded_forwards(spec.run_dir)

    def status_extra(self, spec: MachineSpec) -> dict[str, str]:
        return {"mconsole": str(self.mconsole_path(spec))}

    def clean_backend_files(self, spec: MachineSpec) -> None:
        """UML's stale ``<uml_dir>/<umid>/`` (left by a killed linux), unless a live UML of this umid owns it."""
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

    # ---- start

    def start(self, spec: MachineSpec, *, wait: bool = True, timeout: float = 60.0,
              progress: Reporter = silent) -> MachineStatus:
        """Boot the machine. A boot that failed in the guest kernel itself (`KernelFaultAtBoot`: the disk is fine) is
        started once more, from scratch, and the console log says so; every other failure is raised at once."""
        deadline = time.monotonic() + timeout
        try:
            return self._start_once(spec, wait, timeout, progress)
        except KernelFaultAtBoot:
            with open(spec.console_log, "ab") as log:
                log.write(b"\r\nlabkit: the guest kernel failed at boot, its disk is fine; starting it once more\r\n")
            progress(ProgressEvent("boot", message=f"starting {spec.name} again (the guest kernel failed at boot)"))
            return self._start_once(spec, wait, max(10.0, deadline - time.monotonic()), progress)

    def _start_once(self, spec: MachineSpec, wait: bool, timeout: float, progress: Reporter) -> MachineStatus:
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
        net_args = [*plan.kernel_args, *vde_arguments(self.lab_networks.attach(spec))]
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
            "cpu": next_cpu(spec.run_dir.parent) if self.pin_cpu else None,
            "fixed_layout": FIXED_LAYOUT,
            "recording": spec.recording_entry(),
        })
        progress(ProgressEvent("boot", message=f"starting {spec.name}"))
        deadline = time.monotonic() + timeout
        supervisor = None
        try:
            self._spawn_supervisor(spec)
            supervisor = ProcessRecord.read(run.supervisor_pid)
            record = self._wait_for_machine(spec, deadline)
            if not wait:
                return self.status(spec)
            self._wait_until_ready(spec, deadline)
            progress(ProgressEvent("network", message=f"checking the forwards of {spec.name}"))
            self.network.confirm(spec, plan, lambda: process_group_members(record.pid),
                                 timeout=min(10.0, max(2.0, deadline - time.monotonic())))
        except BaseException:
            self._teardown(spec)
            if supervisor is not None:  # it cleans the run folder on its way out: never under a next start
                supervisor.wait_gone(10.0)
            raise
        progress(ProgressEvent("ready", message=f"{spec.name} is ready"))
        return self.status(spec)

    def _spawn_supervisor(self, spec: MachineSpec) -> None:
        spawn_supervisor(spec.run_dir, spec.name, self.python)

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

    # ---- stop, pause, sync

    def power_off(self, spec: MachineSpec, current: MachineStatus, machine: ProcessRecord, timeout: float) -> None:
        """Ctrl-alt-del through the mconsole (the guest's init shuts down), then ``halt``, then the process group."""
        run = RunDir(spec.run_dir)
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
            if not (asked and machine.wait_gone(timeout)):
                with contextlib.suppress(MconsoleError):
                    console.halt()
                if not machine.wait_gone(5.0):
                    end_processes(machine.pid, run.machine_argv())

    def freeze(self, spec: MachineSpec) -> None:
        with self.mconsole(spec) as console:
            console.stop()

    def thaw(self, spec: MachineSpec) -> None:
        with self.mconsole(spec) as console:
            console.go()

    def sync(self, spec: MachineSpec) -> None:
        self._require(spec, (State.RUNNING,), "sync")
        with self.mconsole(spec) as console:
            console.sysrq("s")
