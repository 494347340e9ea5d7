"""QemuBackend's pieces that need no guest: its command line, its state names, its checks (booting real QEMU guests is
tests/guests/test_runtime_qemu.py)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from labkit.overlays import get_overlay
from labkit.runtime import get_backend
from labkit.runtime.base import Forward, MachineSpec, NetworkAttachment, NetworkSpec, State
from labkit.runtime.qemu.backend import ACCEL_CACHE, BootSet, QemuBackend
from labkit.runtime.qemu.boot import MODULES

BOOT = BootSet(Path("/boot/k"), Path("/boot/i"), ("console=ttyS0", "root=/dev/vda", "rw"))


def spec(tmp_path: Path, **fields: object) -> MachineSpec:
    return MachineSpec(name="m1", image=tmp_path / "base.img", overlay=tmp_path / "a,b" / "m1.qcow2",  # type: ignore[arg-type]
                       run_dir=tmp_path / "m1", console_log=tmp_path / "m1.log", **fields)


def test_command_line(tmp_path: Path) -> None:
    machine = spec(tmp_path, seed=tmp_path / "seed.img", memory_mb=64, kernel_args=("quiet",),
                   networks=(NetworkAttachment(NetworkSpec("lan", tmp_path / "lan")),))
    argv = QemuBackend(boot=lambda: BOOT).command_line(machine, "/usr/bin/qemu-system-x86_64", BOOT, "tcg",
                                                        (Forward(20000, 22),))
    line = " ".join(argv)
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert "-nodefaults" in argv and "-display none" in line and "-accel tcg" in line
    # the serial port is the supervisor's pty (stdio), and ctrl-c goes to the guest, not to QEMU
    assert "-chardev stdio,id=con0,signal=off -serial chardev:con0" in line
    assert "-qmp unix:qmp.sock,server=on,wait=off" in line
    assert "-m 128" in line  # the floor below which the kernel does not come up
    assert "-append console=ttyS0 root=/dev/vda rw labkit.seed=/dev/vdb quiet" in line
    # root on virtio from the qcow2 overlay (a comma in its path doubled), the seed read-only as the second disk
    assert f"file={tmp_path}/a,,b/m1.qcow2,if=none,id=root,format=qcow2" in line
    assert f"file={tmp_path}/seed.img,if=none,id=seed,format=raw,readonly=on" in line
    assert line.index("drive=root") < line.index("drive=seed")
    # eth0: the SLIRP contract's addresses, forwards on the namespace's loopback only; eth1: the lab's VDE switch
    assert "user,id=n0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,hostfwd=tcp:127.0.0.1:20000-:22" in line
    assert "-netdev vde,id=n1,sock=net-eth1" in line
    # the guest's random pool is fed from the host at boot (its initrd loads the driver): no wait for the first SSH key
    assert "-device virtio-rng-pci" in line and "virtio-rng" in MODULES
    # no seed disk, no seed argument (and no second disk)
    bare = " ".join(QemuBackend(boot=lambda: BOOT).command_line(spec(tmp_path), "qemu", BOOT, "tcg", ()))
    assert "labkit.seed" not in bare and "id=seed" not in bare
    # a running state comes in through a shell QEMU starts: the path is quoted for it
    state = tmp_path / "it's $(here).state"
    restored = QemuBackend(boot=lambda: BOOT).command_line(machine, "qemu", BOOT, "tcg", (), state_file=state)
    assert restored[-2:] == ["-incoming", "exec:cat " + shlex.quote(str(state))]
    assert "-loadvm" not in argv and "-incoming" not in argv


def test_which_machines_may_start_warm(tmp_path: Path) -> None:
    """Only a fresh machine with a seed, no lab networks and no kernel arguments of its own: the saved state has the
    warm boot's devices and command line, and a written disk is the student's work."""
    backend = QemuBackend(boot=lambda: BOOT, warm=True)
    seeded = spec(tmp_path, seed=tmp_path / "seed.img")
    assert backend.warm_refusal(seeded) == ""  # no overlay file yet: nothing written
    assert "no seed disk" in backend.warm_refusal(spec(tmp_path))
    assert "kernel arguments" in backend.warm_refusal(spec(tmp_path, seed=tmp_path / "s", kernel_args=("quiet",)))
    lan = (NetworkAttachment(NetworkSpec("lan", tmp_path / "lan")),)
    assert "lab networks" in backend.warm_refusal(spec(tmp_path, seed=tmp_path / "s", networks=lan))
    assert "turned off" in QemuBackend(boot=lambda: BOOT, warm=False).warm_refusal(seeded)
    base = tmp_path / "base.img"
    base.write_bytes(b"\0" * (1 << 20))
    seeded.overlay.parent.mkdir(parents=True)
    get_overlay("qcow2").create(base, seeded.overlay)
    assert backend.warm_refusal(seeded) == ""  # an empty overlay, fresh from provisioning or a reset
    # a guest's write, as QEMU's block layer makes it (qemu-io, of qemu-utils)
    subprocess.run(["qemu-io", "-c", "write -P 1 0 64k", str(seeded.overlay)], check=True, capture_output=True)
    assert "has been written" in backend.warm_refusal(seeded)


def test_checks_name_the_debian_package(tmp_path: Path) -> None:
    backend = QemuBackend(qemu_binary="/nonexistent/qemu-system-x86_64", boot=lambda: BOOT)
    assert any("qemu-system-x86" in line and "/nonexistent" in line for line in backend.check())
    assert backend.status(spec(tmp_path)).state == State.STOPPED
    assert backend.ssh_endpoint(spec(tmp_path)) is None


def test_registered_with_what_it_can_do() -> None:
    backend = get_backend("qemu")
    assert isinstance(backend, QemuBackend)
    assert (backend.kind, backend.overlay_kind, backend.console_kind) == ("qemu", "qcow2", "socket")
    assert backend.capabilities.ram_snapshots and backend.capabilities.pause and backend.capabilities.lab_networks


def test_accelerator_is_tcg_unless_kvm_was_proven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABKIT_QEMU_ACCEL", raising=False)
    assert QemuBackend(accel="tcg", boot=lambda: BOOT).accelerator() == "tcg"
    monkeypatch.setenv("LABKIT_QEMU_ACCEL", "kvm")
    assert QemuBackend(boot=lambda: BOOT).accelerator() == "kvm"
    monkeypatch.delenv("LABKIT_QEMU_ACCEL")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        assert QemuBackend(boot=lambda: BOOT, cache=tmp_path).accelerator() == "tcg"
        assert not (tmp_path / ACCEL_CACHE).exists()  # nothing to probe without access
        return
    # With access, a probe's answer is kept per QEMU binary and kernel: a recorded answer is used without a probe.
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    key = f"{qemu}:{os.stat(qemu).st_mtime_ns}:{BOOT.kernel}"
    (tmp_path / ACCEL_CACHE).write_text(json.dumps({"key": key, "accel": "kvm"}))
    assert QemuBackend(boot=lambda: BOOT, cache=tmp_path).accelerator() == "kvm"
