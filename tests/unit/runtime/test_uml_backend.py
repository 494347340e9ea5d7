"""UmlBackend without booting a kernel: its command line, path checks, state guards, slirp wrapper and prerequisites."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from labkit.errors import BadNameError, ConfigError, NotFoundError, StateError
from labkit.runtime.base import Forward, MachineSpec, State
from labkit.runtime.netns import Isolation
from labkit.runtime.network import machine_mac
from labkit.runtime.uml.backend import UmlBackend, console_tail
from labkit.runtime.uml.disk_check import kernel_fault_at_boot
from labkit.runtime.uml.slirp import SlirpNetwork, UmlNetwork


def make_spec(root: Path, name: str = "web", **kw: object) -> MachineSpec:
    image = root / "base.img"
    image.touch()
    fields: dict = dict(name=name, image=image, overlay=root / f"{name}.cow", run_dir=root / "run" / name,
                        console_log=root / f"{name}.log", memory_mb=96)
    fields.update(kw)
    return MachineSpec(**fields)


def test_command_line(tmp_path: Path) -> None:
    seed = tmp_path / "seed.img"
    seed.touch()
    spec = make_spec(tmp_path, seed=seed, kernel_args=("loglevel=3",))
    argv = UmlBackend().command_line(spec, "/usr/bin/linux", ["eth0=slirp,x,./slirp.sh"])
    assert argv == [
        "/usr/bin/linux", "mem=96M", "umid=web", f"uml_dir={tmp_path}/run/.uml",
        f"ubd0={tmp_path}/web.cow,{tmp_path}/base.img", f"ubd1r={seed}", "root=/dev/ubda", "rw",
        "eth0=slirp,x,./slirp.sh", "con=null", "ssl=null", "con0=fd:0,fd:1",
        "quiet", "lsm=landlock,lockdown,yama,integrity,apparmor,bpf",
        "initcall_blacklist=raid6_select_algo,mmapper_init",
        "labkit.seed=/dev/ubdb",  # where the boot hook finds the seed (labkit/images/guest/boot-hook.sh)
        "loglevel=3",  # the lab's own args come last
    ]
    unseeded = UmlBackend().command_line(make_spec(tmp_path, seed=None), "linux", [])
    assert not any(arg.startswith("labkit.seed=") for arg in unseeded)
    # A lab that teaches RAID 5/6 keeps the kernel's RAID6 set-up.
    plain = UmlBackend(boot_args=()).command_line(spec, "linux", [])
    assert "initcall_blacklist=raid6_select_algo,mmapper_init" not in plain


def test_socket_path_over_the_limit_is_a_config_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    deep.mkdir()
    spec = make_spec(deep)
    with pytest.raises(ConfigError, match="LABKIT_RUN"):
        UmlBackend().start(spec)


def test_missing_image_and_bad_paths(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, image=tmp_path / "nope.img")
    with pytest.raises(NotFoundError, match=r"nope\.img"):
        UmlBackend().start(spec)
    spec = make_spec(tmp_path, overlay=tmp_path / "a,b.cow")
    with pytest.raises(ConfigError, match="comma"):
        UmlBackend().start(spec)


def test_a_machine_that_never_ran_is_stopped_and_refuses_verbs(tmp_path: Path) -> None:
    backend, spec = UmlBackend(), make_spec(tmp_path)
    status = backend.status(spec)
    assert status.state == State.STOPPED and status.pid is None and not status.ready
    for verb in (backend.stop, backend.kill, backend.pause, backend.resume, backend.sync):
        with pytest.raises(StateError, match="it is stopped") as info:
            verb(spec)
        assert info.value.state == State.STOPPED
    assert backend.ssh_endpoint(spec) is None
    assert backend.console_socket(spec) == spec.run_dir / "console.sock"


def test_check_names_debian_packages() -> None:
    backend = UmlBackend(linux_binary="/nonexistent/linux", network=SlirpNetwork("/nonexistent/slirp"))
    missing = backend.check()
    assert any("user-mode-linux" in line for line in missing)
    assert any("package slirp" in line for line in missing)


def test_slirp_wrapper_and_recorded_forwards(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, forwards=(Forward(0, 22), Forward(0, 80)))
    spec.run_dir.mkdir(parents=True)
    plan = SlirpNetwork("sh", host_addr="10.0.2.2").prepare(spec)
    forwards = plan.forwards
    assert plan.kernel_args == (f"eth0=slirp,{machine_mac('web')},./slirp.sh",)
    # the supervisor listens on the host for exactly the forwards' ports; by default nothing of the host is reachable
    assert plan.isolation is not None
    assert plan.isolation.forwards == tuple((f.host_port, i.host_port) for f, i in zip(forwards, plan.inner,
                                                                                        strict=True))
    assert plan.isolation.host_ports == ()
    wrapper = spec.run_dir / "slirp.sh"
    assert os.access(wrapper, os.X_OK)
    text = wrapper.read_text()
    assert '"host addr 10.0.2.2"' in text
    # slirp listens inside the machine's namespace; the supervisor relays each host port to its inner port
    assert plan.inner == (Forward(20000, 22), Forward(20001, 80))
    for forward in plan.inner:
        assert f'"redir {forward.host_port} {forward.guest_port}"' in text
    assert UmlNetwork.recorded_forwards(spec.run_dir) == forwards



def test_slirp_gets_address_randomization_back(tmp_path: Path) -> None:
    """`linux` runs without address-space randomization (FIXED_LAYOUT) and slirp inherits that through exec; slirp
    parses the guest's packets, so its wrapper turns randomization back on."""
    spec = make_spec(tmp_path, forwards=(Forward(0, 22),))
    spec.run_dir.mkdir(parents=True)
    fake = tmp_path / "fake-slirp"
    fake.write_text(f"#!/bin/sh\ncat /proc/self/personality > {tmp_path / 'seen'}\n")
    fake.chmod(0o755)
    SlirpNetwork(str(fake), host_addr="10.0.2.2").prepare(spec)
    subprocess.run(["setarch", "-R", "./slirp.sh"], cwd=spec.run_dir, check=True, timeout=10)
    assert (tmp_path / "seen").read_text().strip() == "00000000"
    assert json.loads((spec.run_dir / "forwards.json").read_text())[0]["guest_port"] == 22
    assert UmlNetwork.recorded_forwards(tmp_path) == ()


def test_explicit_mac_wins(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, mac="02:00:00:00:00:01")
    spec.run_dir.mkdir(parents=True)
    plan = SlirpNetwork("sh").prepare(spec)
    assert plan.kernel_args[0].startswith("eth0=slirp,02:00:00:00:00:01,")


def test_host_reach_goes_into_the_plan(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, host_ports=(20000, 80, 20000), outbound=False)
    spec.run_dir.mkdir(parents=True)
    plan = SlirpNetwork("sh", slirp4netns_binary="/nonexistent/slirp4netns").prepare(spec)
    assert plan.isolation is not None
    assert plan.isolation.host_ports == (80, 20000)
    # slirp exits without any redir, so a machine without forwards gets one, on a port no allowed host port takes
    assert '"redir 20001 9"' in (spec.run_dir / "slirp.sh").read_text()
    assert plan.isolation.outbound is False
    assert Isolation.from_json(plan.isolation.to_json()) == plan.isolation
    # outbound traffic needs slirp4netns: a missing one is a clear error, not a guest that silently has no way out
    with pytest.raises(ConfigError, match="slirp4netns"):
        SlirpNetwork("sh", slirp4netns_binary="/nonexistent/slirp4netns").prepare(make_spec(tmp_path, outbound=True))
    with pytest.raises(BadNameError, match="not between 1 and 65535"):
        SlirpNetwork("sh").prepare(make_spec(tmp_path, host_ports=(70000,)))


def test_console_tail(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_bytes(b"".join(f"line {i}\r\n".encode() for i in range(100)))
    assert console_tail(log, lines=2) == "line 98\nline 99"
    assert "no console log" in console_tail(tmp_path / "none.log")


def test_console_tail_of_a_panic_shows_why_not_the_stack(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    frames = "".join(f" [<6069{i:04x}>] ? frame_{i}+0x0/0x58\n" for i in range(30))
    log.write_text("VFS: Cannot open root device \"ubda\" or unknown-block(98,0): error -6\n"
                   "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(98,0)\n"
                   "CPU: 0 PID: 1 Comm: swapper Not tainted 6.1.0\nStack:\nCall Trace:\n" + frames)
    tail = console_tail(log, lines=5)
    assert "Cannot open root device" in tail and "Unable to mount root fs" in tail
    assert "frame_" not in tail


#: The console of a real failed start (tests/guests/test_runtime_uml.py under heavy host load, 2026-12-07), as
#: `console_tail` gave it: the kernel warned earlier, its crypto algorithms were unusable, ext4 could not mount.
KERNEL_FAULT_CONSOLE = """\
zswap: default compressor lzo not available
zswap: pool creation failed
AppArmor: failed to setup profile sha1 hashing: -80
Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(98,0)
CPU: 0 PID: 1 Comm: swapper Tainted: G        W          6.1.176 #1
Stack:
 606944ba 607e7fcd 6fc3fce0 6067bb96
Call Trace:
"""


def test_a_kernel_fault_at_boot_is_told_apart_from_a_disk_problem() -> None:
    assert kernel_fault_at_boot(KERNEL_FAULT_CONSOLE, [])
    # A disk problem is never retried: the next boot would fail the same way.
    assert not kernel_fault_at_boot(KERNEL_FAULT_CONSOLE, ["/x.cow is locked by process 7 (linux)"])
    # Without the kernel's own warning, a root mount failure is the disk's or the command line's.
    assert not kernel_fault_at_boot(KERNEL_FAULT_CONSOLE.replace("Tainted: G        W", "Not tainted"), [])
    assert not kernel_fault_at_boot("CPU: 0 PID: 1 Comm: swapper Tainted: G        W\n", [])
