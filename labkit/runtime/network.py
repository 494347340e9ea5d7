"""Host-side networking facts every backend needs: stable MACs, forward parsing, free and listening ports.

Nothing here talks to a guest; it only looks at names and at the host's own sockets (bind tests, /proc/net/tcp).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import BadNameError, ConfigError, ConflictError
from labkit.runtime.base import Forward, MachineSpec

_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def _derived_mac(text: str) -> str:
    digest = bytearray(hashlib.sha256(text.encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFC) | 0x02  # clear multicast bit, set locally administered bit
    return ":".join(f"{b:02x}" for b in digest)


def machine_mac(name: str) -> str:
    """A MAC address derived from ``name``: the same name always gets the same MAC (so DHCP leases and forwards to a
    fixed guest address keep working across boots), locally administered and unicast so it never clashes with a
    vendor's address."""
    return _derived_mac(f"labkit-mac:{name}")


def network_mac(machine: str, network: str) -> str:
    """The MAC of ``machine``'s interface on lab network ``network``: fixed per (machine, network), different from the
    machine's eth0 MAC and from its other networks' MACs, locally administered and unicast like `machine_mac`."""
    return _derived_mac(f"labkit-net-mac:{machine}/{network}")


def check_mac(mac: str) -> str:
    """Return ``mac`` if it is six lower-case hex pairs with ':' and unicast, else raise `BadNameError`."""
    if not _MAC.fullmatch(mac):
        raise BadNameError(f"MAC address {mac!r} is not six lower-case hex pairs like 02:00:00:00:00:01")
    if int(mac[:2], 16) & 0x01:
        raise BadNameError(f"MAC address {mac} is a multicast address; an interface needs a unicast one")
    return mac


def parse_forward(text: str) -> Forward:
    """Parse ``HOST:GUEST`` (``0:22`` = any free host port to guest 22) into a Forward."""
    host, sep, guest = text.strip().partition(":")
    if not sep or not host.isdigit() or not guest.isdigit():
        raise BadNameError(f"port forward {text!r} must look like HOST:GUEST with two port numbers (HOST 0 = any free)")
    forward = Forward(int(host), int(guest))
    check_forward(forward)
    return forward


def check_forward(forward: Forward) -> None:
    """Refuse port numbers outside 0..65535 (host) and 1..65535 (guest)."""
    if not 0 <= forward.host_port <= 65535:
        raise BadNameError(f"host port {forward.host_port} of forward {forward} is not between 0 and 65535")
    if not 1 <= forward.guest_port <= 65535:
        raise BadNameError(f"guest port {forward.guest_port} of forward {forward} is not between 1 and 65535")


def check_host_port(port: int) -> int:
    """Refuse a host port a guest may reach that is not between 1 and 65535."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadNameError(f"host port {port!r} that a guest may reach is not between 1 and 65535")
    return port


def port_is_free(port: int, address: str = "0.0.0.0") -> bool:
    """True when a TCP listener could bind ``address:port`` now (SO_REUSEADDR, like the listeners we start, so a
    connection in TIME_WAIT does not count as busy; a listener on any address does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as err:
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def pick_free_port(avoid: set[int] | frozenset[int] = frozenset(), address: str = "0.0.0.0") -> int:
    """A TCP port free on ``address`` now and not in ``avoid`` (the kernel's choice from the ephemeral range)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((address, 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise ConflictError(f"found no free TCP port on {address} after 100 tries")


def resolve_forwards(forwards: tuple[Forward, ...], address: str = "0.0.0.0") -> tuple[Forward, ...]:
    """Give every ``host_port`` 0 a free port and check that every fixed host port is free and used once.

    Raises ConflictError naming the port and its forward. A port can still be taken between this check and the
    listener starting; backends confirm afterwards with `listening_ports`.
    """
    taken: set[int] = set()
    for forward in forwards:
        check_forward(forward)
        if forward.host_port:
            if forward.host_port in taken:
                raise ConflictError(f"host port {forward.host_port} appears in two forwards ({forward} and another)")
            taken.add(forward.host_port)
    resolved = []
    for forward in forwards:
        if forward.host_port == 0:
            port = pick_free_port(taken, address)
            taken.add(port)
            resolved.append(Forward(port, forward.guest_port))
            continue
        if not port_is_free(forward.host_port, address):
            raise ConflictError(f"host port {forward.host_port} of forward {forward} is already in use on {address}")
        resolved.append(forward)
    return tuple(resolved)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def listening_ports(pids: list[int]) -> set[int]:
    """TCP ports on which one of ``pids`` holds a listening socket (from /proc/PID/net/tcp and tcp6: each process's
    own network namespace, since a machine's slirp listens inside a private one).

    Used to confirm that a forward is served by the machine's own helper, not by some other program that took the port.
    """
    inodes: set[int] = set()
    namespaces: dict[str, int] = {}
    for pid in pids:
        inodes |= _socket_inodes(pid)
        with contextlib.suppress(OSError):
            namespaces.setdefault(os.readlink(f"/proc/{pid}/ns/net"), pid)
    ports: set[int] = set()
    for pid in namespaces.values():
        for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    fields = line.split()
                    # fields: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    if len(fields) > 9 and fields[3] == "0A" and int(fields[9]) in inodes:
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


#: the first port of the listeners a backend opens inside a machine's namespace (the supervisor relays to them)
INNER_BASE = 20000


@dataclass(frozen=True)
class ReachPlan:
    """What every backend behind the per-machine namespace decides first: the forwards with their host ports picked,
    the host ports the guest may reach, and the slirp4netns to run for outbound traffic."""

    forwards: tuple[Forward, ...]
    host_ports: tuple[int, ...]
    slirp4netns: str

    def inner_ports(self) -> Iterator[int]:
        """Free port numbers inside the namespace for the backend's own listeners: never a relayed host port."""
        return (port for port in range(INNER_BASE, 65536) if port not in self.host_ports)


def plan_reach(spec: MachineSpec, slirp4netns: str) -> ReachPlan:
    """Resolve ``spec``'s forwards, check its host ports, and find ``slirp4netns`` when the machine goes outbound."""
    forwards = resolve_forwards(spec.forwards)
    for port in spec.host_ports:
        check_host_port(port)
    if spec.outbound:
        found = shutil.which(slirp4netns)
        if found is None:
            raise ConfigError(f"the program {slirp4netns!r} is not installed (Debian package 'slirp4netns'); a "
                              f"machine with outbound traffic ({spec.name}) needs it")
        slirp4netns = found
    return ReachPlan(forwards, tuple(sorted(set(spec.host_ports))), slirp4netns)
