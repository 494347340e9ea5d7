"""MAC derivation, forward parsing and the host port checks (real sockets on 127.0.0.1 / 0.0.0.0)."""

from __future__ import annotations

import os
import re
import socket

import pytest

from labkit.errors import BadNameError, ConflictError
from labkit.runtime.base import Forward
from labkit.runtime.network import (
    listening_ports,
    machine_mac,
    parse_forward,
    pick_free_port,
    port_is_free,
    resolve_forwards,
)


def test_mac_is_stable_locally_administered_unicast() -> None:
    mac = machine_mac("web")
    assert mac == machine_mac("web")
    assert mac != machine_mac("db")
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac)
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01
    assert len({machine_mac(f"m{i}") for i in range(500)}) == 500


@pytest.mark.parametrize(("text", "forward"), [("8080:80", Forward(8080, 80)), (" 0:22 ", Forward(0, 22))])
def test_parse_forward(text: str, forward: Forward) -> None:
    assert parse_forward(text) == forward
    assert str(forward) == text.strip()


@pytest.mark.parametrize("text", ["80", "a:b", "1:", "-1:22", "70000:22", "22:0", "22:70000", "1:2:3"])
def test_parse_forward_refuses(text: str) -> None:
    with pytest.raises(BadNameError):
        parse_forward(text)


def test_busy_port_is_a_conflict_naming_port_and_forward() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert not port_is_free(port)
        with pytest.raises(ConflictError, match=f"host port {port} of forward {port}:22 is already in use"):
            resolve_forwards((Forward(0, 80), Forward(port, 22)))
    assert port_is_free(port)


def test_port_zero_gets_distinct_free_ports() -> None:
    resolved = resolve_forwards((Forward(0, 22), Forward(0, 80), Forward(0, 443)))
    assert [f.guest_port for f in resolved] == [22, 80, 443]
    ports = [f.host_port for f in resolved]
    assert len(set(ports)) == 3 and all(port_is_free(p) for p in ports)
    assert pick_free_port(avoid=set(ports)) not in ports


def test_duplicate_host_port_is_a_conflict() -> None:
    port = pick_free_port()
    with pytest.raises(ConflictError, match="two forwards"):
        resolve_forwards((Forward(port, 22), Forward(port, 80)))


def test_listening_ports_sees_only_the_given_processes() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert port in listening_ports([os.getpid()])
        assert port not in listening_ports([1])
