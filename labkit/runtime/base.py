"""The one Backend interface every machine runtime implements (style guide 1 and 2).

A backend knows nothing about courses or students: it boots a `MachineSpec` and answers with plain `MachineStatus`
values.
Its own truth lives in the machine's run folder and the process table, never in the database.
"""

from __future__ import annotations

import enum
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from labkit.errors import StateError
from labkit.images.guest_contract import SLIRP_GUEST_ADDRESS as GUEST_ADDRESS
from labkit.progress import Reporter, silent

TYPE_CHECKING = False
if TYPE_CHECKING:
    from labkit.runtime.capture import Tap


#: set once when the process is ending (Ctrl-C of a command): see `end_waits`
_WAITS_ENDED = threading.Event()


def end_waits() -> None:
    """Make every wait for a starting machine in this process give up at once. For a command interrupted by Ctrl-C:
    the threads that start machines side by side then end (each machine it was waiting for is stopped, as any start
    that fails is), instead of holding the process until their boots are done. For good: the process is ending."""
    _WAITS_ENDED.set()


def waits_ended() -> bool:
    return _WAITS_ENDED.is_set()


class State(enum.StrEnum):
    """Where a machine is in its life (qemu.qmp's Runstate is the model)."""

    DEFINED = "defined"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    ERROR = "error"


@dataclass(frozen=True)
class Forward:
    """A TCP port forward from the host to the guest. ``host_port`` 0 means: pick a free port at start."""

    host_port: int
    guest_port: int

    def __str__(self) -> str:
        return f"{self.host_port}:{self.guest_port}"


@dataclass(frozen=True)
class NetworkSpec:
    """A private lab network: one switch that some machines of one student join, and nothing else.

    ``folder`` holds everything the network has on the host (the switch's sockets, its pid file and log). It must be
    short: the switch's UNIX socket paths live inside it.
    """

    name: str
    folder: Path


@dataclass(frozen=True)
class NetworkAttachment:
    """One extra interface of a machine, plugged into a lab network. Attachments become eth1, eth2 ... in order.

    ``mac`` "" means: derive it from the machine and network names (`labkit.runtime.network.network_mac`), so the
    same machine always has the same MAC on the same network.
    """

    network: NetworkSpec
    mac: str = ""


@dataclass(frozen=True)
class NetworkStatus:
    """What is true about a lab network right now, read from its folder and the process table."""

    state: State
    pid: int | None = None
    started_at: float | None = None
    #: endpoints (machine interfaces) plugged into the switch now
    attached: int = 0
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordingPolicy:
    """Where the supervisor records the machine's console sessions (`labkit.runtime.recorder`) and how much it keeps:
    ``max_bytes`` per recording (0: no recording), ``keep_days`` and ``keep_bytes`` for the folder (0: no limit)."""

    folder: Path
    max_bytes: int
    keep_days: float = 0
    keep_bytes: int = 0

    def to_json(self, machine: str) -> dict[str, object]:
        """The supervisor spec's ``recording`` entry."""
        return {"folder": str(self.folder.absolute()), "machine": machine, "max_bytes": self.max_bytes,
                "keep_days": self.keep_days, "keep_bytes": self.keep_bytes}


@dataclass(frozen=True)
class MachineSpec:
    """Everything a backend needs to run one machine, and nothing about who owns it."""

    name: str
    image: Path
    overlay: Path
    run_dir: Path
    console_log: Path
    memory_mb: int = 128
    mac: str = ""
    seed: Path | None = None
    forwards: tuple[Forward, ...] = ()
    #: lab networks, joined as eth1, eth2 ... in this order (eth0 is the way out to the host)
    networks: tuple[NetworkAttachment, ...] = ()
    #: extra kernel command line words (already validated by the caller)
    kernel_args: tuple[str, ...] = ()
    #: ports of the host's loopback the guest may reach (as 10.0.2.2:PORT); every other port there is refused
    host_ports: tuple[int, ...] = ()
    #: whether the guest reaches addresses beyond the host (the internet, the lab host's network) through NAT
    outbound: bool = True
    #: console sessions are recorded under this policy (None: not recorded)
    recording: RecordingPolicy | None = None

    def recording_entry(self) -> dict[str, object] | None:
        """The supervisor spec's ``recording`` entry, or None."""
        return self.recording.to_json(self.name) if self.recording is not None else None


@dataclass(frozen=True)
class MachineStatus:
    """What is true about a machine right now, read from its run folder and the process table."""

    state: State
    pid: int | None = None
    supervisor_pid: int | None = None
    forwards: tuple[Forward, ...] = ()
    started_at: float | None = None
    ready: bool = False
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond the verbs every backend has, so code above the line asks the backend, never
    "is this UML?" (the UI and docs show these)."""

    #: a snapshot of a running machine keeps its running state (memory, processes), not only its disk
    ram_snapshots: bool = False
    #: a running machine can be frozen and continued (`Backend.pause`, `Backend.resume`)
    pause: bool = True
    #: machines join lab networks (`Backend.start_network`, `MachineSpec.networks`)
    lab_networks: bool = True
    #: a fresh machine can start from an image's saved warm boot instead of booting (`Backend.start_warm`)
    warm_start: bool = False


@dataclass(frozen=True)
class WarmState:
    """One image's saved warm boot, shared by every machine started from it: the disk that boot wrote (an overlay of
    the image, copied as each machine's own) and its running state, waiting for a seed."""

    disk: Path
    state: Path


class Backend(ABC):
    """Runs machines. Every verb is abstract, so a backend that forgets one cannot be instantiated.

    The class attributes say what the backend needs and can do; code above `labkit.runtime` reads them instead of
    naming a backend.
    """

    #: registry key, e.g. "uml"
    kind: str = ""
    #: the `labkit.overlays` kind of its machines' disks (`get_overlay(backend.overlay_kind)`)
    overlay_kind: str = ""
    #: how console clients attach: "socket" is a supervisor's UNIX stream socket carrying the raw console bytes
    #: (`console_socket`, `labkit.runtime.console`)
    console_kind: str = "socket"
    #: eth0's address inside every guest (with its prefix): the backend's guest network, the way out to the host
    guest_address: str = GUEST_ADDRESS
    capabilities: Capabilities = Capabilities()
    #: the least memory (MiB) its guests boot with; the services refuse a machine with less
    min_memory_mb: int = 32

    @abstractmethod
    def check(self) -> list[str]:
        """Return what is missing on this host to run machines (empty when all is well)."""

    @abstractmethod
    def start(self, spec: MachineSpec, *, wait: bool = True, timeout: float = 60.0,
              progress: Reporter = silent) -> MachineStatus:
        """Boot the machine; with ``wait`` return once the guest reports ready, else raise with the console tail."""

    @abstractmethod
    def stop(self, spec: MachineSpec, *, timeout: float = 30.0) -> MachineStatus:
        """Ask the guest to shut down cleanly, and halt it after ``timeout``."""

    @abstractmethod
    def kill(self, spec: MachineSpec) -> MachineStatus:
        """End the machine at once (no clean shutdown)."""

    @abstractmethod
    def pause(self, spec: MachineSpec) -> MachineStatus:
        """Freeze a running machine."""

    @abstractmethod
    def resume(self, spec: MachineSpec) -> MachineStatus:
        """Continue a paused machine."""

    @abstractmethod
    def status(self, spec: MachineSpec) -> MachineStatus:
        """Tell the truth about the machine, cleaning up what a crash left behind."""

    @abstractmethod
    def console_socket(self, spec: MachineSpec) -> Path:
        """The UNIX stream socket where console clients attach (several at once)."""

    @abstractmethod
    def ssh_endpoint(self, spec: MachineSpec) -> tuple[str, int] | None:
        """Host and port where the guest's SSH server is reached, or None when it is not forwarded."""

    @abstractmethod
    def sync(self, spec: MachineSpec) -> None:
        """Ask a running guest to write its dirty buffers to disk (before a live snapshot)."""

    # ---- lab networks

    @abstractmethod
    def start_network(self, spec: NetworkSpec, *, timeout: float = 10.0) -> NetworkStatus:
        """Start the network's switch; a running network is left alone and its status returned."""

    @abstractmethod
    def stop_network(self, spec: NetworkSpec, *, timeout: float = 5.0) -> NetworkStatus:
        """End the network's switch by its recorded PID and remove its sockets; a stopped network is left alone.

        Machines still plugged in lose that link until they are restarted on a running network."""

    @abstractmethod
    def network_status(self, spec: NetworkSpec) -> NetworkStatus:
        """Tell the truth about the network, cleaning up what a dead switch left."""

    # ---- packet capture (optional: backends whose lab networks have a place to listen)

    def open_tap(self, spec: NetworkSpec, *, owner: str, seconds: float) -> Tap:
        """A plug on the running lab network that sees every frame on it, recorded with ``owner``, ended by its PID
        when closed and no later than ``seconds`` from now (`labkit.runtime.capture`)."""
        raise StateError(f"{self.kind} lab networks cannot be captured")

    # ---- running state (optional: only backends with ``capabilities.ram_snapshots`` have it)

    def save_state(self, spec: MachineSpec, state_file: Path) -> None:
        """Write the running or paused machine's memory and devices to ``state_file`` and leave it paused with its
        disks flushed, so that a copy of its disks taken now belongs to the state; `resume` goes on."""
        raise StateError(f"{self.kind} machine {spec.name} cannot keep a running state; its snapshots are disk-only")

    def load_state(self, spec: MachineSpec, state_file: Path, *, timeout: float = 60.0) -> MachineStatus:
        """Start the stopped machine from ``state_file`` instead of booting; its disk must be the copy taken with
        the state."""
        raise StateError(f"{self.kind} machine {spec.name} cannot keep a running state; its snapshots are disk-only")

    # ---- warm starts (optional: only backends with ``capabilities.warm_start`` have them)

    def warm_refusal(self, spec: MachineSpec) -> str:
        """Why ``spec`` cannot start from a warm state ("" when it can)."""
        return f"{self.kind} machines cannot start from a warm state"

    def warm_state(self, image: Path, memory_mb: int) -> WarmState | None:
        """The saved warm boot of ``image`` for machines of ``memory_mb``, if there is one."""
        return None

    def make_warm(self, image: Path, memory_mb: int, run_dir: Path, *, timeout: float = 300.0,
                  progress: Reporter = silent) -> WarmState:
        """Boot ``image`` once (in ``run_dir``) to where it waits for a seed, and save that beside the image."""
        raise StateError(f"{self.kind} machines cannot start from a warm state")

    def start_warm(self, spec: MachineSpec, warm: WarmState, *, timeout: float = 60.0,
                   progress: Reporter = silent) -> MachineStatus:
        """Start the stopped, fresh machine from ``warm``: its overlay becomes a copy of the warm disk, the state is
        loaded, then its seed is given to it and it takes its name, addresses, keys and clock from it."""
        raise StateError(f"{self.kind} machine {spec.name} cannot start from a warm state")


# ---- the activity mark, for every backend: its supervisor touches it (labkit.runtime.supervisor)

def last_activity(spec: MachineSpec) -> float | None:
    """When the machine last showed a user (console input, an open SSH or other forwarded connection, its start), as
    a UNIX time; None without a mark. Read from its run folder, without talking to its supervisor."""
    from labkit.runtime.rundir import RunDir

    try:
        return RunDir(spec.run_dir).activity.stat().st_mtime
    except FileNotFoundError:
        return None


def mark_activity(spec: MachineSpec) -> None:
    """Count now as use of the machine (a resume: its idle time runs again from here)."""
    from labkit.runtime.rundir import RunDir

    RunDir(spec.run_dir).mark_activity()
