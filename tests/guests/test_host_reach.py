"""A guest reaches only what its lab allows on the host (issue 11, section 5), probed from inside real UML guests.

Every probe is made by the guest itself (busybox ``nc`` to 10.0.2.2, which SLIRP maps to the loopback of the
namespace slirp runs in). Everything the probes could reach listens on the host's 127.0.0.1 and is owned by the test:
a listener, a web server standing in for the portal, another student's SSH forward, and an allowed port. Each of them
is first shown to answer from the host, and the same probe that is refused for them succeeds for the allowed port, so
the refusals are not a broken probe. Nothing here talks to an address outside 127.0.0.0/8 or the test's own guests.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import make_short_dir
from guest_console import console_run

from labkit.images.store import ImageRecord
from labkit.runtime.base import Forward, MachineSpec, State
from labkit.runtime.console import connect
from labkit.runtime.process import ProcessRecord
from labkit.runtime.rundir import RunDir
from labkit.runtime.uml.backend import UmlBackend

from .backend_helpers import BannerServer, HostWebService, end_by_pid, listening_addresses, namespace_links, usable
from .backend_helpers import uml_spec as make_spec

pytestmark = [pytest.mark.guest, pytest.mark.timeout(300)]

TOKEN = secrets.token_hex(4)


def from_host(port: int) -> bytes:
    """What a client on the host reads from ``port`` (an HTTP request goes first, for the portal)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        sock.settimeout(10)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
            if b"\n" in data and (b"SSH-" in data or TOKEN.encode() in data):
                break
        return data


def probe(console: socket.socket, port: int) -> str:
    """From inside the guest: connect to the host (10.0.2.2) on ``port``, send an HTTP request, show the answer."""
    out = console_run(console, f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 8 nc 10.0.2.2 {port} 2>&1 | head -c 300;"
                               " echo", timeout=30)
    return out.strip()


@pytest.fixture(scope="module")
def world(tiny_image: ImageRecord, seed: Path) -> Iterator[dict[str, object]]:
    """Host services on 127.0.0.1, another student's running machine with its SSH forward, and this student's
    machine, which may reach exactly one host port."""
    backend = usable(UmlBackend())
    root = make_short_dir("lkr")
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        listener = BannerServer(f"listener-{TOKEN}".encode())
        stack.callback(listener.close)
        allowed = BannerServer(f"allowed-{TOKEN}".encode())
        stack.callback(allowed.close)
        portal = HostWebService(f"portal-{TOKEN}")  # stands in for labkit's web app on the host's loopback
        stack.callback(portal.close)
        specs = {"other": make_spec(root, tiny_image.path, seed, "other", forwards=(Forward(0, 22),)),
                 "mine": make_spec(root, tiny_image.path, seed, "mine", forwards=(Forward(0, 22),),
                                   host_ports=(allowed.port,))}
        for spec in specs.values():
            stack.callback(end_by_pid, spec.run_dir)
            assert backend.start(spec, timeout=90).state == State.RUNNING
        yield {"backend": backend, "root": root, "seed": seed, "specs": specs, "listener": listener,
               "allowed": allowed, "portal": portal}


def ssh_port(backend: UmlBackend, spec: MachineSpec) -> int:
    endpoint = backend.ssh_endpoint(spec)
    assert endpoint is not None
    return endpoint[1]


def test_a_guest_reaches_only_the_host_ports_its_lab_allows(world: dict) -> None:
    backend, specs = world["backend"], world["specs"]
    refused = {"listener": world["listener"].port, "portal": world["portal"].port,
               "other student's SSH forward": ssh_port(backend, specs["other"])}
    # Each of them answers on the host: a refusal from the guest is the namespace's doing, not a dead service.
    assert f"listener-{TOKEN}".encode() in from_host(refused["listener"])
    assert f"portal-{TOKEN}".encode() in from_host(refused["portal"])
    assert from_host(refused["other student's SSH forward"]).startswith(b"SSH-2.0-dropbear")
    with connect(backend.console_socket(specs["mine"])) as console:
        # the same probe succeeds for the port the lab allows, so it is able to reach the host
        assert f"allowed-{TOKEN}" in probe(console, world["allowed"].port)
        for what, port in refused.items():
            answer = probe(console, port)
            assert "refused" in answer.lower(), f"the guest reached the {what} on host port {port}: {answer!r}"
            assert TOKEN not in answer and "SSH-" not in answer


def test_the_guests_own_forwards_work_and_listen_only_on_loopback(world: dict) -> None:
    backend, spec = world["backend"], world["specs"]["mine"]
    port = ssh_port(backend, spec)
    assert from_host(port).startswith(b"SSH-2.0-dropbear")
    bound = listening_addresses(port)
    assert bound == {"0100007F"}, f"host port {port} is bound on {bound}, not only on 127.0.0.1"


def test_without_outbound_traffic_the_namespace_has_only_loopback(world: dict) -> None:
    backend, root, seed = world["backend"], world["root"], world["seed"]
    mine = world["specs"]["mine"]
    # the machine with outbound traffic (the default) has a way out: tap0 and a default route, so the check below can
    # tell the difference
    linux = ProcessRecord.read(RunDir(mine.run_dir).machine_pid)
    assert linux is not None
    links, default_route = namespace_links(linux.pid)
    assert "tap0" in links and default_route
    assert ProcessRecord.read(RunDir(mine.run_dir).slirp4netns_pid) is not None

    spec = make_spec(root, world["specs"]["mine"].image, seed, "exam", forwards=(Forward(0, 22),),
                     host_ports=(world["allowed"].port,), outbound=False)
    assert backend.start(spec, timeout=90).state == State.RUNNING
    try:
        run = RunDir(spec.run_dir)
        linux = ProcessRecord.read(run.machine_pid)
        assert linux is not None
        assert namespace_links(linux.pid) == ({"lo"}, False)
        assert not run.slirp4netns_pid.exists()
        with connect(backend.console_socket(spec)) as console:
            assert f"allowed-{TOKEN}" in probe(console, world["allowed"].port)
            assert "refused" in probe(console, world["listener"].port).lower()
        assert from_host(ssh_port(backend, spec)).startswith(b"SSH-2.0-dropbear")
    finally:
        backend.kill(spec)


def test_every_helper_ends_with_its_machine(world: dict) -> None:
    backend, root, seed = world["backend"], world["root"], world["seed"]
    spec = make_spec(root, world["specs"]["mine"].image, seed, "gone", forwards=(Forward(0, 22),),
                     host_ports=(world["allowed"].port,))
    status = backend.start(spec, timeout=90)
    run = RunDir(spec.run_dir)
    helpers = [ProcessRecord.read(path) for path in run.helper_pid_files()]
    assert all(helpers) and all(h.alive() for h in helpers if h)
    # A SIGKILLed supervisor cannot clean up: its helpers still go (parent-death signal), and so does linux.
    assert status.supervisor_pid is not None
    ProcessRecord.of(status.supervisor_pid).send(signal.SIGKILL)
    deadline = time.monotonic() + 15
    while backend.status(spec).state != State.STOPPED or any(h.alive() for h in helpers if h):
        assert time.monotonic() < deadline, f"still running: {[h for h in helpers if h and h.alive()]}"
        time.sleep(0.1)
    # and a clean start and stop afterwards leaves nothing either
    assert backend.start(spec, timeout=90).state == State.RUNNING
    helpers = [ProcessRecord.read(path) for path in run.helper_pid_files()]
    assert backend.stop(spec, timeout=30).state == State.STOPPED
    assert not any(h.alive() for h in helpers if h)
