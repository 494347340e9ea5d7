"""A UML guest's network, behind a small interface; classic SLIRP (unprivileged user-space NAT) is the first transport.

UML starts a slirp helper itself when the guest brings eth0 up (``eth0=slirp,MAC,HELPER``). It splits that argument on
commas and spaces (and turns '_' into a space), so slirp's own options go into a per-machine wrapper script in the run
folder, named relative to it (``linux`` runs there).

slirp itself would let the guest reach every loopback service of the host (10.0.2.2 is the host's 127.0.0.1) and
its ``redir`` listens on 0.0.0.0. So slirp runs with ``linux`` in a private network namespace (`netns`): the plan that
`prepare` returns tells the supervisor which host ports to listen on (127.0.0.1 only), which host ports the guest may
reach, and whether it gets outbound traffic.

VDE or the vector transport (Linux >= 6.16 dropped the legacy ``slirp``/``vde`` transports) plug in as further
`UmlNetwork` classes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labkit.atomic import write_atomic
from labkit.errors import ConfigError, ConflictError, RuntimeBackendError
from labkit.runtime.base import Forward, MachineSpec
from labkit.runtime.netns import Isolation
from labkit.runtime.network import listening_ports, machine_mac, plan_reach

FORWARDS_FILE = "forwards.json"
#: classic slirp 1.0.17 exits at once when it has no redir at all; a machine without forwards gets this one (to the
#: guest's discard port), which nothing outside its namespace can reach
IDLE_GUEST_PORT = 9


@dataclass(frozen=True)
class NetworkPlan:
    """What `UmlNetwork.prepare` decided: the kernel's eth0 argument, the forwards with their host ports resolved, and
    what the supervisor's namespace lets through (None: no namespace, the guest shares the host's network)."""

    kernel_args: tuple[str, ...]
    forwards: tuple[Forward, ...]
    isolation: Isolation | None
    #: the forwards' listeners of the helper that runs with ``linux``, as the helper sees them (inside the namespace
    #: with isolation: the supervisor relays ``forwards[i].host_port`` to ``inner[i].host_port``)
    inner: tuple[Forward, ...] = ()


class UmlNetwork(ABC):
    """How one machine's eth0 reaches the host, and how its host port forwards are set up and confirmed."""

    @abstractmethod
    def requirements(self) -> dict[str, str]:
        """Host programs this transport runs: program -> Debian package that provides it."""

    @abstractmethod
    def prepare(self, spec: MachineSpec) -> NetworkPlan:
        """Check host resources, write helper files into the run folder; return the kernel arguments, the forwards
        with every host port resolved and the namespace's openings. Raises ConflictError for a busy port."""

    @abstractmethod
    def confirm(self, spec: MachineSpec, plan: NetworkPlan, machine_pids: Callable[[], list[int]],
                timeout: float) -> None:
        """Return once every forward is served by the machine's own processes (``machine_pids`` lists them now),
        else raise ConflictError."""

    @staticmethod
    def record_forwards(run_dir: Path, forwards: tuple[Forward, ...]) -> None:
        write_atomic(run_dir / FORWARDS_FILE,
                     json.dumps([{"host_port": f.host_port, "guest_port": f.guest_port} for f in forwards]) + "\n")

    @staticmethod
    def recorded_forwards(run_dir: Path) -> tuple[Forward, ...]:
        """The forwards written at the last start (empty when there is no record)."""
        try:
            rows = json.loads((run_dir / FORWARDS_FILE).read_text())
            return tuple(Forward(int(row["host_port"]), int(row["guest_port"])) for row in rows)
        except (OSError, ValueError, KeyError, TypeError):
            return ()


class SlirpNetwork(UmlNetwork):
    """Classic slirp 1.0.17 on eth0: guest 10.0.2.15/24, host seen as 10.0.2.2, DNS 10.0.2.3."""

    WRAPPER = "slirp.sh"
    #: slirp's messages, in the machine's run folder (the helper runs there)
    LOG = "slirp.log"

    def __init__(self, slirp_binary: str = "slirp", host_addr: str = "10.0.2.2",
                 slirp4netns_binary: str = "slirp4netns") -> None:
        self.slirp_binary = slirp_binary
        self.host_addr = host_addr
        self.slirp4netns_binary = slirp4netns_binary

    def requirements(self) -> dict[str, str]:
        # setarch: the wrapper gives slirp back the address-space randomization `linux` runs without
        return {self.slirp_binary: "slirp", self.slirp4netns_binary: "slirp4netns", "setarch": "util-linux"}

    def binary(self) -> str:
        found = shutil.which(self.slirp_binary)
        if found is None:
            raise ConfigError(f"the slirp program {self.slirp_binary!r} is not installed (Debian package 'slirp')")
        return found

    def wrapper_text(self, binary: str, forwards: tuple[Forward, ...]) -> str:
        """The helper script UML runs: slirp with ``host addr`` (so forwarded connections do not arrive from loopback,
        which the guest drops) and one ``redir PORT GUEST`` per forward (PORT inside the namespace). Only integers go
        in, so nothing needs quoting beyond the binary's path."""
        words = [f'"host addr {self.host_addr}"'] + [f'"redir {f.host_port} {f.guest_port}"' for f in forwards]
        quoted_binary = "'" + binary.replace("'", "'\\''") + "'"
        # slirp's banner and messages go to its own log, not to the guest's console that students read. `setarch`
        # with no flag gives slirp back the address-space randomization that `linux` runs without (FIXED_LAYOUT).
        return ("#!/bin/sh\n# Written by labkit: the slirp helper UML starts for eth0 of this machine.\n"
                f"exec setarch \"$(uname -m)\" {quoted_binary} {' '.join(words)} 2>>{self.LOG}\n")

    def prepare(self, spec: MachineSpec) -> NetworkPlan:
        binary = self.binary()
        reach = plan_reach(spec, self.slirp4netns_binary)
        forwards, host_ports, slirp4netns = reach.forwards, reach.host_ports, reach.slirp4netns
        free = reach.inner_ports()
        inner = tuple(Forward(next(free), f.guest_port) for f in forwards) or (Forward(next(free), IDLE_GUEST_PORT),)
        wrapper = spec.run_dir / self.WRAPPER
        write_atomic(wrapper, self.wrapper_text(binary, inner))
        os.chmod(wrapper, 0o755)
        self.record_forwards(spec.run_dir, forwards)
        mac = spec.mac or machine_mac(spec.name)
        # UML's slirp transport splits the helper on commas and turns every '_' into a space before it execs it, so an
        # absolute path like /tmp/lk_x/... breaks. linux runs in the run folder, so a relative path is both short and
        # free of those characters.
        isolation = Isolation(forwards=tuple((f.host_port, i.host_port) for f, i in zip(forwards, inner, strict=False)),
                              host_ports=host_ports, outbound=spec.outbound, slirp4netns=slirp4netns)
        return NetworkPlan((f"eth0=slirp,{mac},./{self.WRAPPER}",), forwards, isolation, inner[:len(forwards)])

    def confirm(self, spec: MachineSpec, plan: NetworkPlan, machine_pids: Callable[[], list[int]],
                timeout: float) -> None:
        """slirp's own listeners (in the namespace) are up; the supervisor bound the host's before linux started."""
        if not plan.forwards:
            return
        inner_to_host = {i.host_port: f for i, f in zip(plan.inner, plan.forwards, strict=True)}
        wanted = set(inner_to_host)
        deadline = time.monotonic() + timeout
        while True:
            pids = machine_pids()
            missing = wanted - listening_ports(pids)
            if not missing:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        forward = inner_to_host[min(missing)]
        if not pids:
            raise RuntimeBackendError(f"machine {spec.name} ended before its forward {forward} was listening")
        raise ConflictError(f"forward {forward} of machine {spec.name} is not served by its slirp after {timeout:g} s: "
                            "the guest never brought eth0 up")
