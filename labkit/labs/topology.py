"""One student's lab networks: subnets and machine addresses with their templates rendered, and checked for conflicts.

Subnets and addresses may be per-student (``subnet = "{{ lan }}"``), so conflicts can only be judged once rendered: the
validator plans the topology for sample students, provisioning plans it for each real one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from labkit.errors import LabFormatError
from labkit.labs.model import Lab, subnet_problems
from labkit.labs.render import try_render
from labkit.runtime import backend_class, backend_kinds


def guest_networks(lab: Lab) -> list[ipaddress.IPv4Network]:
    """The networks of the lab's machines' eth0 (their backends' guest networks, the way out to the host): a lab
    network there would break that way out."""
    kinds = sorted({m.backend for m in lab.machines.values() if m.backend in backend_kinds()})
    found = {ipaddress.IPv4Interface(backend_class(kind).guest_address).network for kind in kinds}
    return sorted(found)


@dataclass(frozen=True)
class Topology:
    """``subnets[network]`` and ``addresses[machine][network]`` (with the subnet's prefix) for one student."""

    subnets: dict[str, ipaddress.IPv4Network] = field(default_factory=dict)
    addresses: dict[str, dict[str, ipaddress.IPv4Interface]] = field(default_factory=dict)


def _render(value: str, context: Mapping[str, object], key: str, problems: list[tuple[str, str]]) -> str | None:
    text, problem = try_render(value, context, key)
    if problem is not None:
        problems.append((key, problem[1]))
        return None
    return (text or "").strip()


def topology_problems(lab: Lab, context: Mapping[str, object]) -> tuple[Topology, list[tuple[str, str]]]:
    """Plan the topology with ``context`` (parameters, lab, course, student) and list every conflict as (key path,
    message): bad or overlapping subnets, a subnet on the guests' own network, addresses outside their subnet or used
    twice."""
    problems: list[tuple[str, str]] = []
    own = guest_networks(lab) if lab.networks else []
    topology = Topology()
    for name, network in lab.networks.items():
        key = f"networks.{name}.subnet"
        text = _render(network.subnet, context, key, problems)
        if text is None:
            continue
        if found := subnet_problems(text):
            problems += [(key, message) for message in found]
            continue
        subnet = ipaddress.IPv4Network(text)
        for taken in own:
            if subnet.overlaps(taken):
                problems.append((key, f"subnet {subnet} overlaps {taken}, which guests use to reach the host"))
        for other, taken in topology.subnets.items():
            if subnet.overlaps(taken):
                problems.append((key, f"subnet {subnet} of network {name} overlaps {taken} of network {other}"))
        topology.subnets[name] = subnet
    used: dict[tuple[str, ipaddress.IPv4Address], str] = {}
    for machine in lab.machines.values():
        for net, value in machine.networks.items():
            key = f"machines.{machine.name}.networks.{net}"
            subnet = topology.subnets.get(net)
            if subnet is None:
                continue  # the network itself is wrong or missing, and reported already
            address = _address(subnet, value, context, key, problems)
            if address is None:
                continue
            if (net, address) in used:
                problems.append((key, f"address {address} on network {net} is also used by machine "
                                      f"{used[(net, address)]}"))
                continue
            used[(net, address)] = machine.name
            topology.addresses.setdefault(machine.name, {})[net] = ipaddress.IPv4Interface(
                f"{address}/{subnet.prefixlen}")
    return topology, problems


def _address(subnet: ipaddress.IPv4Network, value: int | str, context: Mapping[str, object], key: str,
             problems: list[tuple[str, str]]) -> ipaddress.IPv4Address | None:
    if isinstance(value, int):
        if not 0 < value < subnet.num_addresses - 1:
            problems.append((key, f"host number {value} is outside {subnet} (1 to {subnet.num_addresses - 2})"))
            return None
        return subnet.network_address + value
    text = _render(value, context, key, problems)
    if text is None:
        return None
    try:
        address = ipaddress.IPv4Address(text)
    except ValueError:
        problems.append((key, f"{text!r} is not an IPv4 address"))
        return None
    if address not in subnet:
        problems.append((key, f"address {address} is outside the network's subnet {subnet}"))
    elif address in (subnet.network_address, subnet.broadcast_address):
        problems.append((key, f"address {address} is the network or broadcast address of {subnet}"))
    else:
        return address
    return None


def plan_topology(lab: Lab, context: Mapping[str, object]) -> Topology:
    """`topology_problems`, raising one `LabFormatError` that lists every problem."""
    topology, problems = topology_problems(lab, context)
    if problems:
        listed = "; ".join(f"{key}: {message}" for key, message in problems)
        raise LabFormatError(f"lab {lab.id} for student {context.get('student')}: {listed}")
    return topology
