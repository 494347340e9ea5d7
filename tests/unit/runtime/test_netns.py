"""A machine's private namespace without a guest: what a process inside reaches, and the relays across its edge.

A child process joins the namespace the way ``linux`` does (`Namespace.join` before exec) and tries to connect to the
host's listeners; everything listens on 127.0.0.1 and belongs to the test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.runtime.netns import Isolation, Namespace, NamespaceError, Relays, start_slirp4netns, stop_process

PROBE = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, int(port)))
        print(target, s.recv(100).decode().strip() or "connected")
    except OSError as err:
        print(target, type(err).__name__)
"""


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    made = Namespace.create()
    yield made
    made.close()


def greeter(text: str) -> socket.socket:
    """A listener on the host's 127.0.0.1 that says ``text`` to every connection."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(text.encode() + b"\n")

    threading.Thread(target=serve, daemon=True).start()
    return sock


def probe_inside(namespace: Namespace, *ports: int, host: str = "127.0.0.1") -> dict[int, str]:
    """What a process that joined the namespace gets from connecting to ``host`` on each port."""
    user, net = namespace.join_fds()
    try:
        done = subprocess.run([sys.executable, "-c", PROBE, *(f"{host}:{port}" for port in ports)],
                              capture_output=True, text=True, timeout=30, preexec_fn=lambda: Namespace.join(user, net),
                              check=True)
    finally:
        for fd in (user, net):
            os.close(fd)
    return {int(line.split()[0].rsplit(":", 1)[1]): line.split(None, 1)[1] for line in done.stdout.splitlines()}


def test_inside_reaches_only_the_relayed_host_ports(namespace: Namespace) -> None:
    listener, allowed = greeter("listener"), greeter("allowed")
    relays = Relays(namespace)
    try:
        relays.listen_in_namespace(allowed.getsockname()[1])
        relays.start()
        seen = probe_inside(namespace, listener.getsockname()[1], allowed.getsockname()[1])
        assert seen == {listener.getsockname()[1]: "ConnectionRefusedError", allowed.getsockname()[1]: "allowed"}
        assert relays.open_forwards == 0  # the guest's own connections out are no sign of a user
    finally:
        relays.close()
        listener.close()
        allowed.close()


def test_a_forward_listens_on_host_loopback_and_reaches_inside(namespace: Namespace) -> None:
    inside = namespace.socket()
    inside.bind(("127.0.0.1", 20000))
    inside.listen(1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    relays = Relays(namespace)
    try:
        relays.listen_on_host(port, 20000)
        relays.start()
        assert {sock.getsockname() for sock in relays.listeners} == {("127.0.0.1", port)}
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            served, _ = inside.accept()
            assert relays.open_forwards == 1  # an open forwarded connection (SSH) is a user there: the idle mark
            with served:
                client.sendall(b"ping")
                assert served.recv(4) == b"ping"
                served.sendall(b"pong")
                served.shutdown(socket.SHUT_WR)  # the half-close reaches the host side
                client.settimeout(5)
                assert client.recv(4) == b"pong" and client.recv(4) == b""
        deadline = time.monotonic() + 10
        while relays.open_forwards:  # the relay's threads end once both sides closed
            assert time.monotonic() < deadline, "the forwarded connection is still counted after it closed"
            time.sleep(0.01)
        # a port the host already uses is a conflict, reported as such
        with pytest.raises(NamespaceError, match="already in use") as caught:
            relays.listen_on_host(port, 20001)
        assert caught.value.conflict
    finally:
        relays.close()
        inside.close()


@pytest.mark.skipif(shutil.which("slirp4netns") is None, reason="slirp4netns (Debian package slirp4netns) missing")
def test_slirp4netns_gives_a_way_out_but_not_to_the_host_loopback(namespace: Namespace, tmp_path: Path) -> None:
    listener = greeter("listener")
    proc = start_slirp4netns(shutil.which("slirp4netns") or "", namespace, tmp_path / "s.log")
    try:
        routes = Path(f"/proc/{namespace.pid}/net/route").read_text()
        assert "tap0" in routes and any(line.split()[1] == "00000000" for line in routes.splitlines()[1:])
        port = listener.getsockname()[1]
        assert probe_inside(namespace, port) == {port: "ConnectionRefusedError"}
        # slirp4netns's own gateway (10.0.2.2, inside this namespace) would be the host's loopback; with
        # --disable-host-loopback it leads nowhere
        assert "listener" not in probe_inside(namespace, port, host="10.0.2.2")[port]
    finally:
        stop_process(proc)
        listener.close()
    assert proc.poll() is not None


def test_isolation_round_trips_through_json() -> None:
    isolation = Isolation(forwards=((40000, 20000),), host_ports=(3142,), outbound=False, slirp4netns="/x")
    assert Isolation.from_json(isolation.to_json()) == isolation
