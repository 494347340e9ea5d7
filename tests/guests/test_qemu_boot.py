"""The same tiny base image boots under QEMU (TCG) on a qcow2 overlay with labkit's kernel and initrd.

QEMU runs as a plain subprocess that the test owns (serial console on its stdin/stdout) and ends by its PID; nothing
of the QEMU backend is used, so this checks the boot pieces on their own: `Qcow2`, `boot_files`, `kernel_args`, the
seed disk found from ``labkit.seed=/dev/vdb`` and the tiny image's init on ttyS0.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from labkit.config import Settings
from labkit.images.guest_contract import ERROR_MARKER, READY_MARKER
from labkit.images.seed import SeedSpec, build_seed
from labkit.images.store import ImageRecord
from labkit.overlays.qcow2 import Qcow2
from labkit.runtime.qemu.boot import SEED_DEVICE, BootFiles, boot_files, kernel_args
from tests.guests.test_images_boot import make_key, run

pytestmark = pytest.mark.guest


def free_local_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Qemu:
    """One QEMU guest: serial console on stdio (read by a thread into ``console``), SSH forwarded from 127.0.0.1."""

    def __init__(self, boot: BootFiles, root: Path, seed: Path | None, log: Path) -> None:
        self.port = free_local_port()
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-m", "128", "-nodefaults", "-display", "none",
                "-no-reboot", "-kernel", str(boot.kernel), "-initrd", str(boot.initrd),
                "-append", " ".join(kernel_args(SEED_DEVICE if seed else None)),
                "-drive", f"file={root},if=virtio,format=qcow2"]
        if seed is not None:
            argv += ["-drive", f"file={seed},if=virtio,format=raw,readonly=on"]
        argv += ["-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:22",
                 "-device", "virtio-net-pci,netdev=n0,romfile=", "-serial", "stdio"]
        self.log = log
        self.console = ""
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("ab") as log:
            for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
                log.write(chunk)
                log.flush()
                self.console += chunk.decode(errors="replace")

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds from the start of QEMU until ``text`` was on the console (fails on the guest's error marker)."""
        deadline = time.monotonic() + timeout
        while text not in self.console:
            if ERROR_MARKER in self.console and ERROR_MARKER not in text:
                raise AssertionError(f"the guest failed; console tail:\n{self.console[-3000:]}")
            if time.monotonic() > deadline or (self.proc.poll() is not None and not self._reader.is_alive()):
                raise AssertionError(f"console never showed {text!r}; console tail:\n{self.console[-3000:]}")
            time.sleep(0.02)
        return time.monotonic() - self.started

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def ssh(self, key: paramiko.PKey) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect("127.0.0.1", port=self.port, username="root", pkey=key, look_for_keys=False,
                       allow_agent=False, timeout=15, banner_timeout=15, auth_timeout=15)
        return client

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def qemus() -> Iterator[list[Qemu]]:
    """Guests a test starts; any still running at the end are killed by their PID."""
    started: list[Qemu] = []
    yield started
    for guest in started:
        guest.kill()


@pytest.fixture(scope="module")
def boot(session_settings: Settings) -> BootFiles:
    """Kernel and initrd, built into the persistent test cache (downloaded once per machine)."""
    return boot_files(session_settings.cache)


def test_tiny_boots_under_qemu_with_its_seed(tiny_image: ImageRecord, boot: BootFiles, short_tmp: Path,
                                             qemus: list[Qemu]) -> None:
    overlay = Qcow2()
    root = overlay.create(tiny_image.path, short_tmp / "root.qcow2").path
    key, public = make_key()
    seed = build_seed(SeedSpec(hostname="qemu1", authorized_keys=[public]), short_tmp / "seed.img")
    guest = Qemu(boot, root, seed, short_tmp / "console.log")
    qemus.append(guest)
    ready = guest.wait_for(READY_MARKER, 120)
    print(f"\ntiny under QEMU/TCG: ready {ready:.2f} s after the process started")

    with guest.ssh(key) as client:  # the key only works if the seed was found and applied
        assert run(client, "uname -m").strip() == "x86_64"
        assert run(client, "hostname").strip() == "qemu1"
        assert f"labkit.seed={SEED_DEVICE}" in run(client, "cat /proc/cmdline").split()
        mounts = [line.split() for line in run(client, "cat /proc/mounts").splitlines()]
        assert ["/dev", "devtmpfs"] in [m[1:3] for m in mounts]  # mounted and moved by the initrd
        assert ["/dev/vda", "/"] in [m[:2] for m in mounts]
        run(client, "echo kept > /root/proof && sync")

    # the console shell is on the serial port (ttyS0), as the tiny image's inittab asks through cttyhack
    guest.type("tty; echo console-$((6 * 7))")
    guest.wait_for("console-42", 30)
    assert "/dev/ttyS0" in guest.console

    guest.type("poweroff")
    assert guest.proc.wait(timeout=60) == 0
    assert overlay.info(root).allocated_bytes > 0  # the guest's writes went to the overlay, the base is unchanged
    flat = short_tmp / "flat.raw"
    overlay.flatten(root, flat)
    debugfs = subprocess.run(["/sbin/debugfs", "-R", "cat /root/proof", str(flat)], capture_output=True, text=True,
                             timeout=30, check=False)
    assert debugfs.stdout == "kept\n"


def test_initrd_reports_a_root_disk_it_cannot_mount(boot: BootFiles, short_tmp: Path, qemus: list[Qemu]) -> None:
    blank = short_tmp / "blank.img"
    with open(blank, "wb") as f:
        f.truncate(16 << 20)
    root = Qcow2().create(blank, short_tmp / "root.qcow2").path
    guest = Qemu(boot, root, None, short_tmp / "console.log")
    qemus.append(guest)
    guest.wait_for(f"{ERROR_MARKER} initrd: cannot mount the root disk /dev/vda", 120)
    assert guest.proc.wait(timeout=60) == 0  # powered off, no kernel panic loop
