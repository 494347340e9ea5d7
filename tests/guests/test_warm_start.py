"""Warm starts on real QEMU guests (TCG): fresh debian-bookworm machines from one saved boot of their image are each
their own machine (hostname, address, SSH host key, randomness, clock, password), a used machine boots from its own
disk, and a reset one starts warm again (docs/backends.md, "Warm starts")."""

from __future__ import annotations

import time
from collections.abc import Iterator

import paramiko
import pytest

from labkit.config import Settings
from labkit.errors import ConfigError
from labkit.images.guest_contract import SEED_ROOT_PASSWORD_HASH, SEED_SSH_HOST_KEY
from labkit.images.seed import seed_member
from labkit.runtime import get_backend
from labkit.runtime.base import Forward
from labkit.services.images import Images
from labkit.services.machines import Machines

from .conftest import machines_on

pytestmark = [pytest.mark.guest, pytest.mark.slow, pytest.mark.timeout(900)]
IMAGE = "debian-bookworm"
#: how old the saved state is, at least, when the machines start: a clock left as saved would be this far behind
STATE_AGE = 6.0


@pytest.fixture
def machines(lk_settings: Settings) -> Iterator[Machines]:
    with machines_on(lk_settings, IMAGE, actor="tester") as service:
        yield service


def presented_host_key(port: int) -> str:
    """The host key the guest's sshd shows on the forward (its base64), read by a bare SSH handshake."""
    transport = paramiko.Transport(("127.0.0.1", port))
    try:
        transport.start_client(timeout=30)
        return transport.get_remote_server_key().get_base64()
    finally:
        transport.close()


def test_fresh_machines_from_one_warm_state_are_each_their_own(machines: Machines) -> None:
    images = Images(machines.settings, machines.db)
    _record, state, made = images.warm(IMAGE, 128)
    assert made and state.state.stat().st_size > 10 << 20 and state.disk.is_file()
    assert images.warm(IMAGE, 128)[2] is False  # kept: one boot per image version, memory size and QEMU
    assert get_backend("qemu").warm_state(state.disk.parent.parent.parent / "disk.img", 256) is None  # per size
    time.sleep(max(0.0, STATE_AGE - (time.time() - state.state.stat().st_mtime)))

    seen = {}
    for name in ("wa", "wb"):
        machines.create(name, IMAGE, memory_mb=128, forwards=[Forward(0, 22)], backend="qemu")
        view = machines.start(name, timeout=180)
        assert view.state == "running"
        port = int(view.forwards[0].split(":")[0])
        with machines.open_guest(name) as guest:
            out = guest.run("hostname; date +%s.%N; cat /run/labkit-warm.log; ip -4 -o addr show eth0; "
                            "getent shadow root | cut -d: -f2; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' '",
                            timeout=60)
            host_now = time.time()
            assert out.transport == "ssh"
            lines = out.out.splitlines()
            assert lines[0] == name
            # the clock is the host's, not the saved state's (at least STATE_AGE old)
            assert abs(float(lines[1]) - host_now) < 3.0, (lines[1], host_now)
            # it went through the warm start: the guest's own timeline of it
            assert any(line.endswith(" ready") for line in lines)
            assert any("10.0.2.15/24" in line for line in lines)
            seed = machines.settings.seeds / f"{name}.img"
            assert seed_member(seed, SEED_ROOT_PASSWORD_HASH).decode().strip() in lines
            # sshd reloaded with the seed's host key: the one it presents, not the saved state's
            seeds_key = seed_member(seed, SEED_SSH_HOST_KEY + ".pub").decode().split()[1]
            assert presented_host_key(port) == seeds_key
            # labkit's console login works with the seed's password
            console = guest.run("id -un", timeout=60, transport="console")
            assert (console.transport, console.out.split()) == ("console", ["root"])
        seen[name] = (seeds_key, lines[-1])
    # each its own: host keys and the random stream after the reseed differ
    assert seen["wa"][0] != seen["wb"][0]
    assert seen["wa"][1] != seen["wb"][1]

    # a machine that has run boots from its own disk (its work), not from the warm state
    with machines.open_guest("wa") as guest:
        assert guest.run("echo kept > /root/work; sync", timeout=60).ok
    machines.stop("wa")
    machines.start("wa", timeout=180)
    with machines.open_guest("wa") as guest:
        again = guest.run("cat /root/work; test -e /run/labkit-warm.log && echo warm || echo booted; hostname",
                          timeout=60)
        assert again.out.split() == ["kept", "booted", "wa"]
    # a reset gives it a fresh disk: it starts warm again
    machines.stop("wa")
    machines.reset("wa", discard=True)
    machines.start("wa", timeout=180)
    with machines.open_guest("wa") as guest:
        fresh = guest.run("test -e /root/work && echo work || echo none; test -e /run/labkit-warm.log && echo warm",
                          timeout=60)
        assert fresh.out.split() == ["none", "warm"]
    for name in ("wa", "wb"):
        machines.stop(name)


def test_an_image_without_warm_support_is_refused_in_one_line(lk_settings: Settings) -> None:
    with machines_on(lk_settings, "tiny", actor="tester") as machines, pytest.raises(
            ConfigError, match=r"image tiny:1 cannot start machines warm: its recipe does not say"):
        Images(machines.settings, machines.db).warm("tiny", 128)
