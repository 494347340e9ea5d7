"""QemuBackend: runs a `MachineSpec` as an unprivileged QEMU guest on a qcow2 overlay (docs/backends.md, "QEMU").

The same model as UML: one console supervisor per machine (`labkit.runtime.supervisor`) owns the
``qemu-system-x86_64`` process, whose serial port is the supervisor's pty; the run folder and the process table are
the only truth between calls. QEMU is controlled through QMP on a UNIX socket in the run folder (`Qmp`): status,
pause/resume, clean stop and snapshots with the machine's running state.

Networking is the SLIRP contract of UML (guest 10.0.2.15/24, host 10.0.2.2, DNS 10.0.2.3) through QEMU's built-in
user networking, run like UML's slirp inside the machine's private network namespace (`labkit.runtime.netns`): the
supervisor relays forwards from the host's 127.0.0.1 and only the host ports the lab allows, and outbound traffic
goes through ``slirp4netns --disable-host-loopback``. Lab networks join the same per-student VDE switches as UML
machines (``-netdev vde``), so one network may mix both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from labkit.atomic import locked
from labkit.errors import ConfigError, ConflictError, NotFoundError, RuntimeBackendError, StateError
from labkit.images.guest_contract import ERROR_MARKER, READY_MARKER, WARM_KERNEL_ARG, WARM_MARKER
from labkit.names import check_name
from labkit.overlays import get_overlay, sparse_copy
from labkit.progress import ProgressEvent, Reporter, silent
from labkit.runtime.base import (
    Capabilities,
    Forward,
    MachineSpec,
    MachineStatus,
    State,
    WarmState,
)
from labkit.runtime.netns import Isolation
from labkit.runtime.network import listening_ports, machine_mac, plan_reach
from labkit.runtime.process import ProcessRecord, end_processes
from labkit.runtime.qemu.qmp import Qmp, QmpError
from labkit.runtime.rundir import RunDir
from labkit.runtime.supervised import SupervisedBackend
from labkit.runtime.supervisor import spawn_supervisor
from labkit.runtime.vde import VdeNetworks, nic_links

#: sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
#: Debian packages providing the programs this backend runs.
PACKAGES = {"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "slirp4netns": "slirp4netns"}
#: the guest's disks: root is the first virtio disk, the seed the second
ROOT_DEVICE = "/dev/vda"
SEED_DEVICE = "/dev/vdb"
FORWARDS_FILE = "forwards.json"
QMP_SOCKET = "qmp.sock"
#: where a KVM probe's answer is kept (KVM hangs on some hosts although /dev/kvm answers: docs/backends.md)
ACCEL_CACHE = "qemu-accel.json"
#: below this the Debian cloud kernel with its initrd does not come up (it prints nothing at all with 64 MiB)
MIN_MEMORY_MB = 128
#: how fast a running state is written (bytes/s): as fast as the disk takes it
STATE_BANDWIDTH = 1 << 40
#: how long writing a running state may take, in seconds
STATE_TIMEOUT = 120.0
#: where an image's warm states live, in its store folder; bump the format when the warm boot's devices change
WARM_DIR = "warm"
WARM_FORMAT = "1"
WARM_DISK = "disk.qcow2"
WARM_STATE = "state"


@dataclass(frozen=True)
class BootSet:
    """The kernel, initrd and kernel arguments a QEMU guest boots with (`labkit.runtime.qemu.boot`); the seed's
    ``labkit.seed=`` is added per machine, for machines that have one."""

    kernel: Path
    initrd: Path
    args: tuple[str, ...]


def default_boot() -> BootSet:
    """Labkit's own kernel and initrd for QEMU guests, built or picked once and cached (labkit.runtime.qemu.boot)."""
    from labkit.config import Settings
    from labkit.runtime.qemu import boot

    files = boot.boot_files(Settings.from_env().cache)
    return BootSet(files.kernel, files.initrd, tuple(boot.kernel_args(None)))


class QemuBackend(SupervisedBackend):
    """Machines as ``qemu-system-x86_64`` processes (TCG unless KVM is proven to work), each under its own console
    supervisor, with QMP for control."""

    kind = "qemu"
    process_name = "qemu"
    #: the guest kernel runs with panic=-1 and QEMU with -no-reboot, but a panic is best caught at once
    watch_for_panic = True
    overlay_kind = "qcow2"
    min_memory_mb = MIN_MEMORY_MB
    console_kind = "socket"
    capabilities = Capabilities(ram_snapshots=True, pause=True, lab_networks=True, warm_start=True)

    def __init__(self, qemu_binary: str = "qemu-system-x86_64", python: str = sys.executable,
                 ready_marker: str = READY_MARKER, accel: str | None = None,
                 boot: Callable[[], BootSet] = default_boot, lab_networks: VdeNetworks | None = None,
                 slirp4netns_binary: str = "slirp4netns", cache: Path | None = None, warm: bool | None = None) -> None:
        self.qemu_binary = qemu_binary
        self.python = python
        self.ready_marker = ready_marker
        #: "tcg", "kvm", or None: probe once whether KVM boots here, else TCG (LABKIT_QEMU_ACCEL overrides)
        self.accel = accel or os.environ.get("LABKIT_QEMU_ACCEL") or None
        self.boot = boot
        self.lab_networks = lab_networks or VdeNetworks()
        self.slirp4netns_binary = slirp4netns_binary
        self.cache = cache
        #: whether fresh machines start from their image's warm state (LABKIT_QEMU_WARM=0 turns it off)
        self.warm = warm if warm is not None else os.environ.get("LABKIT_QEMU_WARM", "1") != "0"

    # ---- paths

    @staticmethod
    def qmp_path(spec: MachineSpec) -> Path:
        return spec.run_dir / QMP_SOCKET

    def qmp(self, spec: MachineSpec, timeout: float = 5.0) -> Qmp:
        return Qmp(self.qmp_path(spec), timeout)

    # ---- checks

    def _find(self, binary: str) -> str:
        found = shutil.which(binary)
        if found is None:
            raise ConfigError(f"{binary!r} is not installed or not on PATH (Debian package "
                              f"'{PACKAGES.get(Path(binary).name, 'qemu-system-x86')}')")
        return found

    def check(self) -> list[str]:
        missing = []
        for binary, package in ((self.qemu_binary, PACKAGES["qemu-system-x86_64"]),
                                ("qemu-img", PACKAGES["qemu-img"]),
                                (self.slirp4netns_binary, PACKAGES["slirp4netns"])):
            if shutil.which(binary) is None:
                missing.append(f"{binary} (Debian package {package}) is not installed or not on PATH")
        missing += self.host_problems()
        return missing

    def _check_spec(self, spec: MachineSpec) -> None:
        check_name(spec.name, "machine name")
        run = RunDir(spec.run_dir)
        for label, path in (("console socket", run.console_sock), ("QMP socket", self.qmp_path(spec))):
            if len(os.fsencode(path.absolute())) > MAX_SOCKET_PATH:
                raise ConfigError(f"the {label} path {path} is {len(os.fsencode(path))} bytes, over the UNIX socket "
                                  f"limit of {MAX_SOCKET_PATH}; set LABKIT_RUN to a shorter folder (e.g. /tmp/lk)")
        if not spec.image.is_file():
            raise NotFoundError(f"base image {spec.image} of machine {spec.name} does not exist")
        if not spec.overlay.is_file():
            raise NotFoundError(f"qcow2 overlay {spec.overlay} of machine {spec.name} does not exist; create it "
                                "first (labkit.overlays qcow2)")
        if spec.seed is not None and not spec.seed.is_file():
            raise NotFoundError(f"seed disk {spec.seed} of machine {spec.name} does not exist")
        self.lab_networks.check_attachments(spec)

    # ---- accelerator

    def accelerator(self) -> str:
        """"tcg" unless KVM is usable and a short boot probe showed a guest kernel printing on it (cached per QEMU
        binary and kernel: KVM can answer and still hang every guest)."""
        if self.accel in ("tcg", "kvm"):
            return self.accel
        if not os.access("/dev/kvm", os.R_OK | os.W_OK):
            return "tcg"
        cache = self.cache or _default_cache()
        boot = self.boot()
        key = f"{self._find(self.qemu_binary)}:{os.stat(self._find(self.qemu_binary)).st_mtime_ns}:{boot.kernel}"
        path = cache / ACCEL_CACHE
        with contextlib.suppress(OSError, ValueError):
            known = json.loads(path.read_text())
            if known.get("key") == key and known.get("accel") in ("tcg", "kvm"):
                return str(known["accel"])
        accel = "kvm" if kvm_boots(self._find(self.qemu_binary), boot.kernel) else "tcg"
        with contextlib.suppress(OSError):
            cache.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"key": key, "accel": accel}) + "\n")
        return accel

    # ---- the command line

    def command_line(self, spec: MachineSpec, qemu: str, boot: BootSet, accel: str,
                     inner: tuple[Forward, ...], state_file: Path | None = None) -> list[str]:
        """The ``qemu-system-x86_64`` argv. In ``key=value,...`` options a comma in a path is written twice (`_opt`);
        the UNIX sockets and VDE links are named relative to the run folder, where QEMU runs."""
        mac = spec.mac or machine_mac(spec.name)
        seed_arg = (f"labkit.seed={SEED_DEVICE}",) if spec.seed is not None else ()
        append = " ".join((*boot.args, *seed_arg, *spec.kernel_args))
        argv = [qemu, "-name", f"labkit-{spec.name}", "-nodefaults", "-no-user-config", "-display", "none",
                "-accel", accel, "-m", str(max(spec.memory_mb, MIN_MEMORY_MB)), "-smp", "1",
                "-kernel", str(boot.kernel), "-initrd", str(boot.initrd), "-append", append,
                "-chardev", "stdio,id=con0,signal=off", "-serial", "chardev:con0",
                "-qmp", f"unix:{QMP_SOCKET},server=on,wait=off",
                "-drive", f"file={_opt(spec.overlay.absolute())},if=none,id=root,format=qcow2,discard=unmap",
                "-device", "virtio-blk-pci,drive=root",
                # the host's randomness for the guest's pool from the start (else the first SSH connection waits)
                "-device", "virtio-rng-pci"]
        if spec.seed is not None:
            argv += ["-drive", f"file={_opt(spec.seed.absolute())},if=none,id=seed,format=raw,readonly=on",
                     "-device", "virtio-blk-pci,drive=seed"]
        hostfwd = "".join(f",hostfwd=tcp:127.0.0.1:{f.host_port}-:{f.guest_port}" for f in inner)
        argv += ["-netdev", f"user,id=n0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3{hostfwd}",
                 "-device", f"virtio-net-pci,netdev=n0,mac={mac}"]
        for nic in nic_links(spec):
            argv += ["-netdev", f"vde,id=n{nic.index},sock={nic.link}",
                     "-device", f"virtio-net-pci,netdev=n{nic.index},mac={nic.mac}"]
        if state_file is not None:  # a path from labkit's own folders, quoted for the shell QEMU runs it with
            argv += ["-incoming", f"exec:cat {shlex.quote(str(state_file))}"]
        return argv

    # ---- status

    def recorded_forwards(self, spec: MachineSpec) -> tuple[Forward, ...]:
        return recorded_forwards(spec.run_dir)

    def status_extra(self, spec: MachineSpec) -> dict[str, str]:
        return {"qmp": str(self.qmp_path(spec))}

    def live_state(self, spec: MachineSpec, run: RunDir, ready: bool) -> tuple[State, str]:
        """QEMU's own run state when QMP answers at once; the paused mark when it does not."""
        runstate = self._runstate(spec)
        # postmigrate: paused after writing its running state (`save_state`); `cont` goes on
        if runstate in ("paused", "suspended", "postmigrate") or (runstate is None and run.paused.exists()):
            return State.PAUSED, ""
        if runstate in (None, "running", "prelaunch", "inmigrate", "restore-vm", "save-vm", "finish-migrate"):
            detail = "" if runstate in (None, "running") else f"QEMU is in state {runstate}"
            return (State.RUNNING if ready else State.STARTING), detail
        return State.ERROR, f"QEMU is in state {runstate}; stop or kill it"

    def _runstate(self, spec: MachineSpec) -> str | None:
        """QEMU's own run state, or None when QMP does not answer at once (another verb holds it, or it is starting)."""
        if not self.qmp_path(spec).exists():
            return None
        try:
            with self.qmp(spec, timeout=2.0) as qmp:
                return str(qmp.cmd("query-status").get("status"))
        except QmpError:
            return None

    def clean_backend_files(self, spec: MachineSpec) -> None:
        with contextlib.suppress(OSError):
            self.qmp_path(spec).unlink()

    # ---- start

    def start(self, spec: MachineSpec, *, wait: bool = True, timeout: float = 60.0,
              progress: Reporter = silent) -> MachineStatus:
        return self._start(spec, wait=wait, timeout=timeout, progress=progress)

    def _start(self, spec: MachineSpec, *, wait: bool, timeout: float, progress: Reporter,
               state_file: Path | None = None, seed_after: Path | None = None,
               ready_marker: str | None = None) -> MachineStatus:
        """Boot, or go on from ``state_file``: a machine's own running state is ready once it runs; a warm state is
        given ``seed_after`` (plugged in once it runs) and is ready when the guest says so, as after a boot."""
        ready_marker = ready_marker or self.ready_marker
        ready_when_running = state_file is not None and seed_after is None
        self._check_spec(spec)
        current = self.status(spec)
        if current.state != State.STOPPED:
            raise StateError(f"cannot start machine {spec.name}: it is already {current.state}", current.state)
        self.lab_networks.require_running(spec)
        qemu = self._find(self.qemu_binary)
        progress(ProgressEvent("boot", message=f"preparing the boot files of {spec.name}"))
        boot = self.boot()
        accel = self.accelerator()
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        run = RunDir(spec.run_dir)
        end_processes(None, run.machine_argv())
        spec.console_log.parent.mkdir(parents=True, exist_ok=True)
        progress(ProgressEvent("network", message=f"preparing the network of {spec.name}"))
        forwards, inner, isolation = self._plan_network(spec)
        self.lab_networks.attach(spec)  # the net-ethN links in the run folder that -netdev vde names
        with contextlib.suppress(FileNotFoundError):
            run.exit_record.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.qmp_path(spec).unlink()
        run.write_json(run.supervisor_spec, {
            "argv": self.command_line(spec, qemu, boot, accel, inner, state_file),
            "console_log": str(spec.console_log.absolute()),
            # a restored machine is up already: it prints no marker, and is ready once QEMU runs it
            "ready_marker": None if ready_when_running else ready_marker,
            "error_marker": None if ready_when_running else ERROR_MARKER,
            "remove_after": [str(self.qmp_path(spec))],
            "isolation": isolation.to_json(),
            "recording": spec.recording_entry(),
        })
        progress(ProgressEvent("boot", message=f"starting {spec.name} ({accel})"))
        deadline = time.monotonic() + timeout
        try:
            spawn_supervisor(spec.run_dir, spec.name, self.python)
            record = self._wait_for_machine(spec, deadline)
            self._confirm_forwards(spec, forwards, inner, record, deadline)
            if state_file is not None:
                self._wait_restored(spec, deadline, mark_ready=ready_when_running)
            if seed_after is not None:
                self._plug_seed(spec, seed_after)
            if not wait:
                return self.status(spec)
            self._wait_until_ready(spec, deadline)
        except BaseException:
            self._teardown(spec)
            raise
        progress(ProgressEvent("ready", message=f"{spec.name} is ready"))
        return self.status(spec)

    def _plan_network(self, spec: MachineSpec) -> tuple[tuple[Forward, ...], tuple[Forward, ...], Isolation]:
        """Resolve the forwards' host ports, number QEMU's listeners inside the namespace, record the forwards and
        say what the namespace lets through."""
        reach = plan_reach(spec, self.slirp4netns_binary)
        forwards, host_ports, slirp4netns = reach.forwards, reach.host_ports, reach.slirp4netns
        free = reach.inner_ports()
        inner = tuple(Forward(next(free), f.guest_port) for f in forwards)
        record_forwards(spec.run_dir, forwards)
        isolation = Isolation(forwards=tuple((f.host_port, i.host_port) for f, i in zip(forwards, inner, strict=True)),
                              host_ports=host_ports, outbound=spec.outbound, slirp4netns=slirp4netns)
        return forwards, inner, isolation

    def _confirm_forwards(self, spec: MachineSpec, forwards: tuple[Forward, ...], inner: tuple[Forward, ...],
                          record: ProcessRecord, deadline: float) -> None:
        """QEMU opens its hostfwd listeners (inside the namespace) before the guest runs; wait until they are up."""
        wanted = {i.host_port: f for i, f in zip(inner, forwards, strict=True)}
        while wanted:
            missing = set(wanted) - listening_ports([record.pid])
            if not missing:
                return
            ended = self._ended(spec)
            if ended is not None:
                raise ended
            if time.monotonic() > deadline:
                raise ConflictError(f"forward {wanted[min(missing)]} of machine {spec.name} is not served by QEMU in "
                                    "time")
            time.sleep(0.01)  # QEMU opens them within a tenth of a second: a coarse poll would be most of the wait

    def _wait_restored(self, spec: MachineSpec, deadline: float, mark_ready: bool = True) -> None:
        """A machine started from a saved state is ready once QEMU has loaded it and runs it. A state is written
        from a paused machine (`save_state`), and QEMU keeps the loaded one paused too: it is told to go on."""
        while (runstate := self._runstate(spec)) != "running":
            if runstate == "paused":
                with contextlib.suppress(QmpError), self.qmp(spec) as qmp:
                    qmp.cmd("cont")
                continue
            ended = self._ended(spec)
            if ended is not None:
                raise ended
            if time.monotonic() > deadline:
                raise self._failure(spec, "did not run its restored state in time")
            time.sleep(0.01)  # a restore is a fraction of a second (docs/benchmarks.md); poll finely
        if mark_ready:
            RunDir(spec.run_dir).ready.write_text(f"{time.time()}\n")

    # ---- warm starts: one saved boot of an image, shared by its fresh machines

    def warm_refusal(self, spec: MachineSpec) -> str:
        if not self.warm:
            return "warm starts are turned off (LABKIT_QEMU_WARM=0)"
        if spec.seed is None:
            return "it has no seed disk to take its name and keys from"
        if spec.kernel_args:
            return "it has kernel arguments of its own, which only a boot reads"
        if nic_links(spec):
            return "it is on lab networks, whose cards the saved state does not have"
        if spec.overlay.is_file() and get_overlay(self.overlay_kind).info(spec.overlay).allocated_bytes:
            return "its disk has been written: only a fresh machine starts from the image's warm state"
        return ""

    def _warm_folder(self, image: Path, memory_mb: int) -> Path:
        """``<image's folder>/warm/<key>``: the key names everything the saved state depends on (QEMU, accelerator,
        kernel and initrd, memory, the warm boot's devices); the image's version is the folder it is in."""
        qemu = self._find(self.qemu_binary)
        boot = self.boot()
        parts = [WARM_FORMAT, qemu, str(os.stat(qemu).st_mtime_ns), self.accelerator(), str(image.absolute()),
                 str(max(memory_mb, MIN_MEMORY_MB)), " ".join(boot.args)]
        for path in (boot.kernel, boot.initrd):
            parts += [str(path), str(path.stat().st_mtime_ns), str(path.stat().st_size)]
        key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
        return image.parent / WARM_DIR / f"{max(memory_mb, MIN_MEMORY_MB)}m-{key}"

    def warm_state(self, image: Path, memory_mb: int) -> WarmState | None:
        folder = self._warm_folder(image, memory_mb)
        found = WarmState(folder / WARM_DISK, folder / WARM_STATE)
        return found if found.disk.is_file() and found.state.is_file() else None

    def make_warm(self, image: Path, memory_mb: int, run_dir: Path, *, timeout: float = 300.0,
                  progress: Reporter = silent) -> WarmState:
        """Boot ``image`` with ``labkit.warm=`` and no seed until the guest prints the warm marker (booted, idle,
        waiting for its seed disk), save its running state and disk, and publish both in one rename. Starts that
        want the same state meanwhile wait for it (a lock), so a class start boots the image once."""
        folder = self._warm_folder(image, memory_mb)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with locked(folder.parent / ".lock"):
            found = self.warm_state(image, memory_mb)
            if found is not None:
                return found
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
            name = f"warm-{secrets.token_hex(4)}"
            spec = MachineSpec(name=name, image=image, overlay=work / WARM_DISK, run_dir=run_dir / name,
                               console_log=work / "console.log", memory_mb=memory_mb,
                               kernel_args=(f"{WARM_KERNEL_ARG}={SEED_DEVICE}",), outbound=False)
            try:
                get_overlay(self.overlay_kind).create(image, spec.overlay)
                progress(ProgressEvent("warm", message=f"booting {image.parent.parent.name} once to save it warm"))
                self._start(spec, wait=True, timeout=timeout, progress=progress, ready_marker=WARM_MARKER)
                self.save_state(spec, work / WARM_STATE)
                self._teardown(spec)
                (work / "console.log").unlink(missing_ok=True)
                work.rename(folder)
            finally:
                if self.status(spec).state != State.STOPPED:
                    self._teardown(spec)
                shutil.rmtree(spec.run_dir, ignore_errors=True)
                shutil.rmtree(work, ignore_errors=True)
        progress(ProgressEvent("warm", message="warm state saved"))
        return WarmState(folder / WARM_DISK, folder / WARM_STATE)

    def start_warm(self, spec: MachineSpec, warm: WarmState, *, timeout: float = 60.0,
                   progress: Reporter = silent) -> MachineStatus:
        reason = self.warm_refusal(spec)
        if reason:
            raise StateError(f"machine {spec.name} cannot start from a warm state: {reason}")
        current = self.status(spec)
        if current.state != State.STOPPED:
            raise StateError(f"cannot start machine {spec.name}: it is already {current.state}", current.state)
        assert spec.seed is not None  # warm_refusal
        if not spec.seed.is_file():
            raise NotFoundError(f"seed disk {spec.seed} of machine {spec.name} does not exist")
        sparse_copy(warm.disk, spec.overlay, overwrite=True)  # a fresh overlay of the same image, as the state's
        progress(ProgressEvent("boot", message=f"starting {spec.name} from its image's warm state"))
        return self._start(replace(spec, seed=None), wait=True, timeout=timeout, progress=progress,
                           state_file=warm.state, seed_after=spec.seed)

    def _plug_seed(self, spec: MachineSpec, seed: Path) -> None:
        """Plug the seed disk into the running guest (PCI hotplug), with the time as its serial number: the guest
        waiting in its warm state sets its clock from it, then applies the seed."""
        try:
            with self.qmp(spec, timeout=10.0) as qmp:
                qmp.cmd("blockdev-add", **{"driver": "raw", "node-name": "seed", "read-only": True,
                                           "file": {"driver": "file", "filename": str(seed.absolute())}})
                qmp.cmd("device_add", driver="virtio-blk-pci", drive="seed", id="seed-disk",
                        serial=f"{time.time():.3f}")
        except QmpError as err:
            raise self._failure(spec, f"could not be given its seed disk: {err}") from err

    # ---- stop, kill

    def power_off(self, spec: MachineSpec, current: MachineStatus, machine: ProcessRecord, timeout: float) -> None:
        """Ask the guest to power off: the ACPI power button (systemd's logind acts on it) and ctrl-alt-del (BusyBox
        init powers off; systemd reboots, which QEMU is first told to turn into an exit). A guest that has not gone
        after ``timeout`` gets its buffers synced (SysRq s) and QEMU is told to ``quit``; then its group is killed."""
        run = RunDir(spec.run_dir)
        asked = False
        with contextlib.suppress(QmpError), self.qmp(spec) as qmp:
            if current.state == State.PAUSED:
                qmp.cmd("cont")
            qmp.cmd("set-action", reboot="shutdown")
            qmp.cmd("system_powerdown")
            qmp.cmd("send-key", keys=[{"type": "qcode", "data": key} for key in ("ctrl", "alt", "delete")])
            asked = True
        with contextlib.suppress(FileNotFoundError):
            run.paused.unlink()
        if not (asked and machine.wait_gone(timeout)):
            with contextlib.suppress(QmpError), self.qmp(spec) as qmp:
                _sysrq(qmp, "s")
                time.sleep(0.5)
                qmp.cmd("quit")
            if not machine.wait_gone(5.0):
                end_processes(machine.pid, run.machine_argv())

    # ---- pause, resume, sync

    def _control(self, spec: MachineSpec, *commands: str, timeout: float = 5.0) -> None:
        try:
            with self.qmp(spec, timeout) as qmp:
                for command in commands:
                    qmp.cmd(command)
        except QmpError as err:
            raise RuntimeBackendError(f"machine {spec.name}: {err}") from err

    def freeze(self, spec: MachineSpec) -> None:
        self._control(spec, "stop")

    def thaw(self, spec: MachineSpec) -> None:
        self._control(spec, "cont")

    def sync(self, spec: MachineSpec) -> None:
        """SysRq s (emergency sync) through the guest's keyboard; the kernel writes its dirty buffers."""
        self._require(spec, (State.RUNNING,), "sync")
        try:
            with self.qmp(spec) as qmp:
                _sysrq(qmp, "s")
        except QmpError as err:
            raise RuntimeBackendError(f"machine {spec.name}: {err}") from err

    # ---- running state (RAM snapshots: a migration stream in a file of its own, beside a copy of the disk)

    def save_state(self, spec: MachineSpec, state_file: Path) -> None:
        """Write the running or paused machine's memory and devices to ``state_file`` (QEMU's migration stream,
        through ``exec:cat``). The machine is left paused with its disks flushed, so a copy of them taken now belongs
        to the state; `resume` goes on. The file is written under a temporary name and renamed when complete."""
        self._require(spec, (State.RUNNING, State.PAUSED), "save the state of")
        state_file = state_file.absolute()
        state_file.parent.mkdir(parents=True, exist_ok=True)
        partial = state_file.with_name(f".{state_file.name}.partial")
        try:
            with self.qmp(spec, timeout=10.0) as qmp:
                qmp.cmd("stop")
                RunDir(spec.run_dir).paused.write_text(f"{time.time()}\n")
                # a paused guest goes in one pass; QEMU's default cap of 128 MiB/s would be most of the time
                qmp.cmd("migrate-set-parameters", **{"max-bandwidth": STATE_BANDWIDTH})
                qmp.cmd("migrate", uri=f"exec:cat > {shlex.quote(str(partial))}")
                deadline = time.monotonic() + STATE_TIMEOUT
                while (info := qmp.cmd("query-migrate")).get("status") not in ("completed", "failed", "cancelled"):
                    if time.monotonic() > deadline:
                        qmp.cmd("migrate_cancel")
                        raise StateError(f"machine {spec.name}: writing its running state took over "
                                         f"{STATE_TIMEOUT:.0f} s")
                    time.sleep(0.01)
        except QmpError as err:
            partial.unlink(missing_ok=True)
            raise RuntimeBackendError(f"machine {spec.name}: {err}") from err
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if info.get("status") != "completed":
            partial.unlink(missing_ok=True)
            raise StateError(f"machine {spec.name}: writing its running state {info.get('status')}: "
                             f"{info.get('error-desc', 'QEMU gave no reason')}")
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        partial.rename(state_file)

    def load_state(self, spec: MachineSpec, state_file: Path, *, timeout: float = 60.0) -> MachineStatus:
        """Start the stopped machine from a state written by `save_state` (``-incoming``): the guest goes on where it
        was instead of booting. Its disk must be the copy taken with the state."""
        if not state_file.is_file():
            raise NotFoundError(f"machine {spec.name} has no running state at {state_file}")
        return self._start(spec, wait=True, timeout=timeout, progress=silent, state_file=state_file.absolute())

# ---- helpers

def _opt(path: Path) -> str:
    """A path as a QEMU option value: a comma is written twice."""
    return str(path).replace(",", ",,")


def _default_cache() -> Path:
    from labkit.config import Settings

    return Settings.from_env().cache


def record_forwards(run_dir: Path, forwards: tuple[Forward, ...]) -> None:
    from labkit.atomic import write_atomic

    write_atomic(run_dir / FORWARDS_FILE,
                 json.dumps([{"host_port": f.host_port, "guest_port": f.guest_port} for f in forwards]) + "\n")


def recorded_forwards(run_dir: Path) -> tuple[Forward, ...]:
    try:
        rows = json.loads((run_dir / FORWARDS_FILE).read_text())
        return tuple(Forward(int(row["host_port"]), int(row["guest_port"])) for row in rows)
    except (OSError, ValueError, KeyError, TypeError):
        return ()


def _sysrq(qmp: Qmp, key: str) -> None:
    """Alt+SysRq+``key`` on the guest's PS/2 keyboard (the kernel acts on it when kernel.sysrq allows)."""
    qmp.cmd("send-key", keys=[{"type": "qcode", "data": "alt"}, {"type": "qcode", "data": "sysrq"},
                              {"type": "qcode", "data": key}])


def kvm_boots(qemu: str, kernel: Path, timeout: float = 8.0) -> bool:
    """Boot ``kernel`` under KVM with no disk and look for its first console line: on some hosts KVM answers but the
    guest hangs right after the BIOS (docs/backends.md). The probe process is ours and ended by its PID."""
    argv = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-accel", "kvm", "-m", "128",
            "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1", "-no-reboot", "-serial", "stdio"]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError:
        return False
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(BlockingIOError, TypeError):
                seen += proc.stdout.read() or b""
            if b"Linux version" in seen:
                return True
            time.sleep(0.1)
        return False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
