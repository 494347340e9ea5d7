"""Lab networks: one unprivileged ``vde_switch`` per network, and the links in a machine's run folder that plug its
NICs in (UML names them in ``ethN=vde,...`` kernel arguments, QEMU in ``-netdev vde``; one network may mix both).

A network is its folder (`NetworkSpec.folder`) plus one switch process. labkit starts the switch in the foreground in a
session of its own and records its PID and start time; it never daemonizes (``-d``), so the recorded PID is the switch
and ``stop`` ends exactly that process. A switch in the foreground reads commands from stdin and exits on EOF, so its
stdin is a pipe whose only writer is the switch itself: EOF never comes, and nothing else can type into it.

Two switches never exchange frames, so two students' networks never meet, even with the same addresses and MACs.
docs/runtime.md ("Lab networks (VDE)") tells the whole story.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from labkit.atomic import locked, write_atomic
from labkit.errors import BadNameError, ConfigError, ConflictError, RuntimeBackendError, StateError
from labkit.logtail import tail
from labkit.names import check_name
from labkit.runtime.base import MachineSpec, NetworkSpec, NetworkStatus, State
from labkit.runtime.capture import Tap, TapRecords
from labkit.runtime.network import check_mac, network_mac
from labkit.runtime.process import (
    ProcessRecord,
    end_processes,
    process_start_time,
    process_state,
    processes_running,
)

#: sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
#: room for the name of a port's data socket inside the switch folder ("/001.12", "/032.1023")
PORT_SOCKET_ROOM = 10
#: a machine's run folder holds one link per lab network: net-eth1 -> <network folder>/switch
LINK_PREFIX = "net-eth"


@dataclass(frozen=True)
class NetworkDir:
    """Names of the files in a lab network's folder."""

    path: Path

    @property
    def switch_dir(self) -> Path:
        """vde_switch's own folder (``--sock``): the ``ctl`` socket and one data socket per plugged-in port."""
        return self.path / "switch"

    @property
    def ctl(self) -> Path:
        return self.switch_dir / "ctl"

    @property
    def pid_file(self) -> Path:
        """``PID START_TIME`` of the running switch."""
        return self.path / "switch.pid"

    @property
    def argv_file(self) -> Path:
        """The switch's command line at the last start (it names a switch whose pid file was lost)."""
        return self.path / "switch.argv"

    @property
    def log(self) -> Path:
        """The switch's stdout and stderr, across starts."""
        return self.path / "switch.log"

    @property
    def taps(self) -> TapRecords:
        """The records of the capture plugs on this network (`labkit.runtime.capture`)."""
        return TapRecords(self.path / "taps")

    @property
    def lock(self) -> Path:
        """flock'ed while a start or stop runs, so two machines starting at once do not start two switches."""
        return self.path / "switch.lock"

    def argv(self) -> list[str] | None:
        try:
            words = self.argv_file.read_text().split("\0")
        except OSError:
            return None
        return words[:-1] if len(words) > 1 else None

    def ports(self) -> int:
        """How many endpoints are plugged in: vde_switch keeps one data socket per connected port beside ``ctl``."""
        try:
            entries = list(os.scandir(self.switch_dir))
        except OSError:
            return 0
        return sum(1 for entry in entries if entry.name != "ctl" and stat.S_ISSOCK(entry.stat(follow_symlinks=False)
                                                                                  .st_mode))

    def clean(self) -> None:
        """Remove what describes a live switch (pid file, sockets); the log and the recorded argv stay as history."""
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        if self.switch_dir.is_symlink():
            self.switch_dir.unlink()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.switch_dir)


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.lstat().st_mode)
    except OSError:
        return False


def log_tail(path: Path, lines: int = 10) -> str:
    data = tail(path, lines)
    if data is None:
        return f"(no log at {path})"
    return data.decode(errors="replace").rstrip("\n") or "(the log is empty)"


def _reap(record: ProcessRecord) -> None:
    """Collect the exit status of a switch that was our own child (a long-running web app would keep the zombie)."""
    if process_start_time(record.pid) == record.start_time and process_state(record.pid) == "Z":
        with contextlib.suppress(ChildProcessError):
            os.waitpid(record.pid, os.WNOHANG)


def _symlink_atomic(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


class VdeNetworks:
    """Starts, stops and reports lab networks as ``vde_switch`` processes, and plugs machines into them."""

    def __init__(self, binary: str = "vde_switch", hub: bool = True, plug: str = "vde_plug") -> None:
        self.binary = binary
        #: a hub repeats every frame to every port, so a capture plug sees the traffic between two machines (and a
        #: machine of the lab sees its neighbours' traffic with tcpdump); a switch sends unicast to one port only
        self.hub = hub
        #: the program a capture joins the switch with (`tap`)
        self.plug = plug

    def requirements(self) -> dict[str, str]:
        """Host programs lab networks run: program -> Debian package that provides it."""
        return {self.binary: "vde2", self.plug: "vdeplug"}

    def find_binary(self) -> str:
        found = shutil.which(self.binary)
        if found is None:
            raise ConfigError(f"the VDE switch {self.binary!r} is not installed or not on PATH (Debian package "
                              "'vde2'); lab networks need it")
        return found

    def command_line(self, spec: NetworkSpec, binary: str) -> list[str]:
        """``--rcfile /dev/null`` keeps a user's ~/.vderc or /etc/vde2/vde_switch.rc out of it."""
        argv = [binary, "--sock", str(NetworkDir(spec.folder.absolute()).switch_dir), "--rcfile", "/dev/null"]
        if self.hub:
            argv.append("--hub")
        return argv

    def check_spec(self, spec: NetworkSpec) -> None:
        check_name(spec.name, "network name")
        switch_dir = NetworkDir(spec.folder.absolute()).switch_dir
        length = len(os.fsencode(switch_dir)) + PORT_SOCKET_ROOM
        if length > MAX_SOCKET_PATH:
            raise ConfigError(f"the socket folder {switch_dir} of network {spec.name} is too long for UNIX sockets "
                              f"({length} of {MAX_SOCKET_PATH} bytes with a port's socket name); give the network a "
                              "shorter folder (e.g. under LABKIT_RUN=/tmp/lk)")

    @contextlib.contextmanager
    def _locked(self, spec: NetworkSpec) -> Iterator[NetworkDir]:
        net = NetworkDir(spec.folder)
        spec.folder.mkdir(parents=True, exist_ok=True)
        with locked(net.lock):
            yield net

    # ---- status

    def status(self, spec: NetworkSpec) -> NetworkStatus:
        net = NetworkDir(spec.folder)
        extra = {"switch_dir": str(net.switch_dir), "log": str(net.log)}
        record = ProcessRecord.read(net.pid_file)
        if record is not None and record.alive():
            started_at = None
            with contextlib.suppress(OSError):
                started_at = net.pid_file.stat().st_mtime
            if not is_socket(net.ctl):
                return NetworkStatus(State.ERROR, pid=record.pid, started_at=started_at, extra=extra,
                                     detail=f"vde_switch (pid {record.pid}) runs but its control socket {net.ctl} is "
                                            "gone, so no machine can join; stop the network and start it again")
            return NetworkStatus(State.RUNNING, pid=record.pid, started_at=started_at, attached=net.ports(),
                                 extra=extra)
        argv = net.argv()
        orphans = processes_running(argv) if argv else []
        if orphans:
            return NetworkStatus(State.ERROR, pid=orphans[0], extra=extra,
                                 detail=f"a vde_switch (pid {orphans[0]}) runs for network {spec.name} without a pid "
                                        "file; stop the network and start it again")
        if record is None and not net.switch_dir.exists():
            return NetworkStatus(State.STOPPED, extra=extra)
        if record is not None:
            _reap(record)
        net.clean()
        who = f" (pid {record.pid})" if record is not None else ""
        return NetworkStatus(State.STOPPED, extra=extra,
                             detail=f"the switch{who} was gone without a clean stop; cleaned up what it left")

    # ---- start, stop

    def start(self, spec: NetworkSpec, timeout: float = 10.0) -> NetworkStatus:
        self.check_spec(spec)
        binary = self.find_binary()
        with self._locked(spec) as net:
            current = self.status(spec)
            if current.state == State.RUNNING:
                return current
            if current.state != State.STOPPED:
                raise StateError(f"cannot start network {spec.name}: {current.detail}", current.state)
            argv = self.command_line(spec, binary)
            net.clean()
            write_atomic(net.argv_file, "".join(word + "\0" for word in argv))
            read_end, write_end = os.pipe()
            try:
                with open(net.log, "ab") as log:
                    log.write(f"== labkit: starting {' '.join(argv)} at {time.ctime()}\n".encode())
                    log.flush()
                    # stdin: a pipe whose only writer is the switch itself (pass_fds), so it never reads EOF and exits.
                    proc = subprocess.Popen(argv, stdin=read_end, stdout=log, stderr=log, pass_fds=(write_end,),
                                            start_new_session=True, cwd=spec.folder)
            except OSError as err:
                raise RuntimeBackendError(f"cannot start vde_switch for network {spec.name}: {err}") from err
            finally:
                os.close(read_end)
                os.close(write_end)
            try:
                record = ProcessRecord.of(proc.pid)
                record.write(net.pid_file)
                self._wait_ready(spec, proc, time.monotonic() + timeout)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
                net.clean()
                raise
            return self.status(spec)

    def _wait_ready(self, spec: NetworkSpec, proc: subprocess.Popen[bytes], deadline: float) -> None:
        net = NetworkDir(spec.folder)
        while not is_socket(net.ctl):
            code = proc.poll()
            if code is not None:
                raise RuntimeBackendError(f"vde_switch of network {spec.name} exited at start with code {code}; "
                                          f"last lines of {net.log}:\n{log_tail(net.log)}")
            if time.monotonic() > deadline:
                raise RuntimeBackendError(f"vde_switch of network {spec.name} made no control socket {net.ctl} in "
                                          f"time; last lines of {net.log}:\n{log_tail(net.log)}")
            time.sleep(0.01)

    def stop(self, spec: NetworkSpec, timeout: float = 5.0) -> NetworkStatus:
        """SIGTERM the recorded switch (it removes its sockets), SIGKILL it after ``timeout``, then clean up."""
        if not spec.folder.is_dir():
            return self.status(spec)
        with self._locked(spec) as net:
            record = ProcessRecord.read(net.pid_file)
            if record is not None and record.send(signal.SIGTERM) and not record.wait_gone(timeout):
                record.send(signal.SIGKILL)
                record.wait_gone(2.0)
            if record is not None:
                _reap(record)
            net.taps.end_all()
            left = end_processes(None, net.argv(), timeout=2.0)
            if left:
                raise RuntimeBackendError(f"cannot end the vde_switch of network {spec.name} (pids {left})")
            net.clean()
            return self.status(spec)

    # ---- capture

    def tap(self, spec: NetworkSpec, owner: str, seconds: float, max_taps: int = 2) -> Tap:
        """A capture plug on the running network, recorded with ``owner`` and a deadline ``seconds`` from now.

        Refuses a network that is not running, and a third capture at once (each holds a process and a reader)."""
        current = self.status(spec)
        if current.state != State.RUNNING:
            raise StateError(f"cannot capture network {spec.name}: it is {current.state.value} (its switch runs "
                             "while a machine on it runs; start the lab's machines first)", current.state)
        net = NetworkDir(spec.folder)
        running = net.taps.live()
        if len(running) >= max_taps:
            raise ConflictError(f"network {spec.name} already has {len(running)} captures running (by "
                                f"{', '.join(sorted({r.owner for r in running}))}); wait until one ends")
        plug = shutil.which(self.plug)
        if plug is None:
            raise ConfigError(f"the VDE plug {self.plug!r} is not installed or not on PATH (Debian package "
                              "'vdeplug'); packet capture needs it")
        tap = Tap(plug, net.switch_dir.absolute(), net.taps, owner, time.time() + seconds, net.path / "taps.log")
        tap.sees_all = self.sees_all(spec)
        try:
            tap.wait_joined()
        except BaseException:
            tap.close()
            raise
        return tap

    def sees_all(self, spec: NetworkSpec) -> bool:
        """Whether the running switch repeats every frame to every port (a switch started before lab networks were
        hubs sends a capture only broadcasts and its own frames)."""
        return "--hub" in (NetworkDir(spec.folder).argv() or [])

    # ---- machines

    def check_attachments(self, machine: MachineSpec) -> None:
        """Refuse bad network names, a network joined twice, a bad MAC, or the same MAC twice."""
        folders, macs = set(), set()
        for attachment in machine.networks:
            network = attachment.network
            self.check_spec(network)
            folder = network.folder.absolute()
            if folder in folders:
                raise ConfigError(f"machine {machine.name} joins network {network.name} ({folder}) twice")
            folders.add(folder)
            mac = attachment.mac or network_mac(machine.name, network.name)
            try:
                check_mac(mac)
            except BadNameError as err:
                raise ConfigError(f"machine {machine.name} on network {network.name}: {err}") from err
            if mac in macs:
                raise ConfigError(f"machine {machine.name} has MAC {mac} on two networks")
            macs.add(mac)

    def require_running(self, machine: MachineSpec) -> None:
        """Refuse to start a machine whose network has no running switch (it would boot with a dead interface)."""
        for index, attachment in enumerate(machine.networks, start=1):
            current = self.status(attachment.network)
            if current.state != State.RUNNING:
                switch_dir = NetworkDir(attachment.network.folder).switch_dir
                raise StateError(f"cannot start machine {machine.name}: its network {attachment.network.name} "
                                 f"(eth{index}) is {current.state}, no switch serves {switch_dir}; start the network "
                                 "first", current.state)

    def attach(self, machine: MachineSpec) -> list[NicLink]:
        """Point ``net-ethN`` links in the run folder at each network's switch folder; remove links of networks the
        machine left.

        The guest side names a switch by its link, relative to the run folder where the guest process runs: short,
        and free of whatever characters the real path holds (UML splits its argument on commas).
        """
        nics = nic_links(machine)
        for nic, attachment in zip(nics, machine.networks, strict=True):
            _symlink_atomic(machine.run_dir / nic.link, NetworkDir(attachment.network.folder.absolute()).switch_dir)
        wanted = {nic.link for nic in nics}
        for old in machine.run_dir.glob(f"{LINK_PREFIX}*"):
            if old.name not in wanted and old.is_symlink():
                old.unlink()
        return nics


@dataclass(frozen=True)
class NicLink:
    """A machine's NIC on a lab network: ``ethN`` in the guest, the run folder's link to the switch, its MAC."""

    index: int
    link: str
    mac: str


def nic_links(machine: MachineSpec) -> list[NicLink]:
    """The machine's lab-network NICs, eth1 onwards (eth0 is the backend's own way out)."""
    return [NicLink(index, f"{LINK_PREFIX}{index}",
                    attachment.mac or network_mac(machine.name, attachment.network.name))
            for index, attachment in enumerate(machine.networks, start=1)]
