"""Lab networks without guests: MAC derivation, command lines, machine attachments, and the real ``vde_switch``'s
life cycle (it starts in milliseconds, so it is tested for real here; guests on it are in tests/guests)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from labkit.errors import BadNameError, ConfigError, RuntimeBackendError, StateError
from labkit.runtime.base import MachineSpec, NetworkAttachment, NetworkSpec, State
from labkit.runtime.network import check_mac, machine_mac, network_mac
from labkit.runtime.process import ProcessRecord, processes_running
from labkit.runtime.uml.backend import UmlBackend, vde_arguments
from labkit.runtime.vde import NetworkDir, VdeNetworks

needs_vde = pytest.mark.skipif(shutil.which("vde_switch") is None, reason="vde_switch (Debian package vde2) missing")


@pytest.fixture
def root(switch_root: Path) -> Path:
    """`switch_root` (conftest.py): its switches are ended by PID afterwards."""
    return switch_root


def make_machine(root: Path, name: str = "a", networks: tuple[NetworkAttachment, ...] = ()) -> MachineSpec:
    image = root / "base.img"
    image.touch()
    return MachineSpec(name=name, image=image, overlay=root / f"{name}.cow", run_dir=root / "run" / name,
                       console_log=root / f"{name}.log", memory_mb=64, networks=networks)


# ---- MACs


def test_network_mac_is_fixed_per_machine_and_network() -> None:
    mac = network_mac("a", "lan")
    assert mac == network_mac("a", "lan")
    assert len({mac, network_mac("b", "lan"), network_mac("a", "dmz"), machine_mac("a")}) == 4
    assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", mac)
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01  # locally administered, unicast
    assert len({network_mac(f"m{i}", "lan") for i in range(500)}) == 500
    assert check_mac(mac) == mac


@pytest.mark.parametrize("mac", ["", "02:00:00:00:00", "02-00-00-00-00-01", "02:00:00:00:00:0G", "02:AA:00:00:00:01",
                                 "03:00:00:00:00:01"])
def test_bad_mac_is_refused(mac: str) -> None:
    with pytest.raises(BadNameError, match="MAC address"):
        check_mac(mac)


# ---- command lines and attachments


def test_switch_command_line(root: Path) -> None:
    spec = NetworkSpec("lan", root / "net" / "lan")
    assert VdeNetworks(hub=False).command_line(spec, "/usr/bin/vde_switch") == [
        "/usr/bin/vde_switch", "--sock", f"{root}/net/lan/switch", "--rcfile", "/dev/null"]
    assert VdeNetworks().command_line(spec, "vde_switch")[-1] == "--hub"  # lab networks are hubs: captures see all


def test_attach_links_each_network_in_order(root: Path) -> None:
    lan, dmz = NetworkSpec("lan", root / "lan"), NetworkSpec("dmz", root / "dmz")
    spec = make_machine(root, networks=(NetworkAttachment(lan), NetworkAttachment(dmz, "02:00:00:00:00:09")))
    spec.run_dir.mkdir(parents=True)
    (spec.run_dir / "net-eth3").symlink_to(root / "old")  # left by an earlier run with three networks
    args = vde_arguments(VdeNetworks().attach(spec))
    assert args == [f"eth1=vde,net-eth1,{network_mac('a', 'lan')}", "eth2=vde,net-eth2,02:00:00:00:00:09"]
    assert os.readlink(spec.run_dir / "net-eth1") == str(root / "lan" / "switch")
    assert os.readlink(spec.run_dir / "net-eth2") == str(root / "dmz" / "switch")
    assert not (spec.run_dir / "net-eth3").is_symlink()
    assert sorted(p.name for p in spec.run_dir.iterdir()) == ["net-eth1", "net-eth2"]
    # The command line carries only the relative link: UML splits on commas, whatever the real folder holds.
    argv = UmlBackend().command_line(spec, "linux", ["eth0=slirp,x,./slirp.sh", *args])
    assert argv[argv.index("eth0=slirp,x,./slirp.sh") + 1:][:2] == args


@pytest.mark.parametrize(("networks", "message"), [
    (lambda r: (NetworkAttachment(NetworkSpec("lan", r / "n")), NetworkAttachment(NetworkSpec("lan2", r / "n"))),
     "joins network lan2 .* twice"),
    (lambda r: (NetworkAttachment(NetworkSpec("lan", r / "n"), "02:00:00:00:00:0"),), "on network lan: MAC"),
    (lambda r: (NetworkAttachment(NetworkSpec("lan", r / "n"), "02:00:00:00:00:01"),
                NetworkAttachment(NetworkSpec("dmz", r / "d"), "02:00:00:00:00:01")), "MAC 02:00:00:00:00:01 on two"),
    (lambda r: (NetworkAttachment(NetworkSpec("lan", r / ("x" * 100))),), "too long for UNIX sockets"),
])
def test_bad_attachments_are_refused_before_anything_runs(root: Path, networks: object, message: str) -> None:
    spec = make_machine(root, networks=networks(root))  # type: ignore[operator]
    with pytest.raises(ConfigError, match=message):
        UmlBackend().start(spec)
    assert not spec.run_dir.exists()


def test_bad_network_name_is_refused(root: Path) -> None:
    with pytest.raises(BadNameError, match="network name"):
        VdeNetworks().start(NetworkSpec("Lan_1", root / "n"))


def test_machine_on_a_stopped_network_is_refused(root: Path) -> None:
    lan = NetworkSpec("lan", root / "lan")
    spec = make_machine(root, networks=(NetworkAttachment(lan),))
    with pytest.raises(StateError, match=r"cannot start machine a: its network lan \(eth1\) is stopped") as info:
        UmlBackend().start(spec)
    assert info.value.state == State.STOPPED
    assert not spec.run_dir.exists()


# ---- the real switch


def test_missing_switch_is_a_config_error(root: Path) -> None:
    networks = VdeNetworks(binary="/nonexistent/vde_switch")
    with pytest.raises(ConfigError, match="'vde2'"):
        networks.start(NetworkSpec("lan", root / "lan"))
    assert any("vde2" in line for line in UmlBackend(lab_networks=networks).check())


@needs_vde
def test_start_is_idempotent_and_stop_is_by_pid(root: Path) -> None:
    backend, spec = UmlBackend(), NetworkSpec("lan", root / "lan")
    net = NetworkDir(spec.folder)
    assert backend.network_status(spec).state == State.STOPPED
    assert backend.stop_network(spec).state == State.STOPPED  # nothing to stop, nothing made
    assert not spec.folder.exists()

    started = backend.start_network(spec)
    assert started.state == State.RUNNING and started.pid and started.attached == 0
    assert started.extra["switch_dir"] == str(net.switch_dir)
    record = ProcessRecord.read(net.pid_file)
    assert record is not None and record.pid == started.pid and record.alive()
    assert os.getsid(started.pid) == started.pid  # its own session: a terminal's Ctrl-C does not reach it
    assert net.ctl.exists()
    again = backend.start_network(spec)
    assert again.state == State.RUNNING and again.pid == started.pid

    stopped = backend.stop_network(spec)
    assert stopped.state == State.STOPPED and stopped.pid is None and stopped.detail == ""
    assert not record.alive()
    assert processes_running(net.argv() or ["?"]) == []
    assert not net.switch_dir.exists() and not net.pid_file.exists()
    assert "Caught signal 15" in net.log.read_text()
    assert backend.stop_network(spec).state == State.STOPPED


@needs_vde
def test_dead_switch_is_reported_and_cleaned(root: Path) -> None:
    backend, spec = UmlBackend(), NetworkSpec("lan", root / "lan")
    net = NetworkDir(spec.folder)
    pid = backend.start_network(spec).pid
    assert pid is not None
    record = ProcessRecord.of(pid)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while record.alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert net.ctl.exists()  # SIGKILL gave vde_switch no chance to remove its socket
    status = backend.network_status(spec)
    assert status.state == State.STOPPED and status.pid is None
    assert f"the switch (pid {pid}) was gone without a clean stop; cleaned up" in status.detail
    assert not net.switch_dir.exists() and not net.pid_file.exists()
    assert backend.network_status(spec).detail == ""
    assert backend.start_network(spec).state == State.RUNNING
    assert backend.stop_network(spec).state == State.STOPPED


@needs_vde
def test_orphan_switch_without_pid_file_is_an_error_until_stopped(root: Path) -> None:
    backend, spec = UmlBackend(), NetworkSpec("lan", root / "lan")
    net = NetworkDir(spec.folder)
    pid = backend.start_network(spec).pid
    net.pid_file.unlink()  # as if labkit died between starting the switch and recording it
    status = backend.network_status(spec)
    assert status.state == State.ERROR and status.pid == pid and "without a pid file" in status.detail
    with pytest.raises(StateError, match="without a pid file"):
        backend.start_network(spec)
    assert backend.stop_network(spec).state == State.STOPPED
    assert processes_running(net.argv() or ["?"]) == []


def test_switch_that_exits_at_once_leaves_nothing(root: Path) -> None:
    fake = root / "fake-switch"
    fake.write_text("#!/bin/sh\necho 'cannot bind: boom' >&2\nexit 3\n")
    fake.chmod(0o755)
    spec = NetworkSpec("lan", root / "lan")
    networks = VdeNetworks(binary=str(fake))
    with pytest.raises(RuntimeBackendError, match=r"(?s)exited at start with code 3.*boom"):
        networks.start(spec)
    assert networks.status(spec).state == State.STOPPED
    assert not NetworkDir(spec.folder).pid_file.exists()


def test_switch_that_never_listens_is_ended(root: Path) -> None:
    fake = root / "slow-switch"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    spec = NetworkSpec("lan", root / "lan")
    networks = VdeNetworks(binary=str(fake))
    with pytest.raises(RuntimeBackendError, match="made no control socket"):
        networks.start(spec, timeout=0.3)
    assert networks.status(spec).state == State.STOPPED
    assert processes_running(NetworkDir(spec.folder).argv() or ["?"]) == []
