"""Boot the built images with the real ``linux`` binary, classic slirp and a seed disk, then log in over SSH.

These tests drive UML directly (pexpect on the console, a 15-line mconsole client) so that they check the images and
the boot hook on their own, without the runtime layer.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pexpect
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from labkit.config import Settings
from labkit.images.guest_contract import READY_MARKER, SLIRP_HOST_ADDRESS
from labkit.images.recipe import find_recipe
from labkit.images.seed import SeedSpec, build_seed
from labkit.images.store import ImageRecord, ImageStore

RECIPES = Path(__file__).resolve().parents[2] / "base_images"
_UMIDS = itertools.count()


def make_key() -> tuple[paramiko.PKey, str]:
    """A fresh Ed25519 key: (paramiko key, OpenSSH public line)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem)), f"{public} labkit-test"


def free_port() -> int:
    """A port free on 0.0.0.0 (classic slirp's redir listens there), below the kernel's ephemeral range so that
    outgoing connections of other processes do not take it between this check and slirp's bind."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


class Uml:
    """One UML guest on a COW over ``image``, console on pexpect, SSH forwarded from a host port by slirp."""

    def __init__(self, workdir: Path, image: Path, seed: Path | None, memory: str = "64M") -> None:
        self.workdir = workdir
        self.image = image
        self.seed = seed
        self.memory = memory
        self.cow = workdir / "root.cow"
        self.umid = f"lkt{os.getpid()}-{next(_UMIDS)}"
        self.port = 0
        self.child: pexpect.spawn | None = None

    def start(self) -> None:
        self.port = free_port()
        wrapper = self.workdir / "slirp.sh"
        # UML's slirp transport splits its argument on "," and turns "_" into a space.
        assert not set(str(wrapper)) & {"_", ",", " "}, f"slirp cannot start a helper at {wrapper}"
        wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/slirp "host addr {SLIRP_HOST_ADDRESS}" "redir {self.port} 22"\n')
        wrapper.chmod(0o755)
        args = [
            f"mem={self.memory}", f"ubd0={self.cow},{self.image}", f"eth0=slirp,fe:fd:0a:00:02:0f,{wrapper}",
            "root=/dev/ubda", "rw", "con=null", "ssl=null", "con0=fd:0,fd:1", f"uml_dir={self.workdir}",
            f"umid={self.umid}",
        ]
        if self.seed is not None:
            args.insert(2, f"ubd1r={self.seed}")
        log = (self.workdir / "console.log").open("a")
        self.child = pexpect.spawn("linux", args, encoding="utf-8", codec_errors="replace", timeout=60,
                                   logfile=log, dimensions=(40, 200))

    def expect(self, pattern: str | type, timeout: float = 60) -> None:
        assert self.child is not None
        try:
            self.child.expect(pattern, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as err:
            tail = self.console_tail()
            raise AssertionError(f"console never showed {pattern!r}; console tail:\n{tail}") from err

    def console_tail(self) -> str:
        if self.child is not None and self.child.logfile is not None:
            self.child.logfile.flush()
        return (self.workdir / "console.log").read_text(errors="replace")[-3000:]

    def wait_ready(self, timeout: float = 60) -> float:
        started = time.monotonic()
        self.expect(READY_MARKER, timeout)
        return time.monotonic() - started

    def ssh(self, key: paramiko.PKey) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect("127.0.0.1", port=self.port, username="root", pkey=key, look_for_keys=False,
                           allow_agent=False, timeout=15, banner_timeout=15, auth_timeout=15)
        except (OSError, paramiko.SSHException) as err:
            tail = self.console_tail()
            raise AssertionError(f"SSH to port {self.port} failed: {err}; console tail:\n{tail}") from err
        return client

    def mconsole(self, command: str) -> str:
        """Send one mconsole command and return the reply text."""
        path = self.workdir / self.umid / "mconsole"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(f"\0labkit-test-{self.umid}")
            sock.settimeout(10)
            sock.sendto(struct.pack("=III512s", 0xCAFEBABE, 2, len(command), command.encode()), str(path))
            reply = sock.recv(4096)
        _err, _more, length = struct.unpack("=III", reply[:12])
        return reply[12:12 + length].decode(errors="replace")

    def wait_exit(self, timeout: float = 60) -> int | None:
        self.expect(pexpect.EOF, timeout)
        assert self.child is not None
        self.child.close()
        return self.child.exitstatus

    def kill(self) -> None:
        """Last resort: halt through mconsole, then kill our own child process by its PID."""
        if self.child is None or not self.child.isalive():
            return
        try:
            self.mconsole("halt")
            self.child.expect(pexpect.EOF, timeout=10)
        except Exception:
            self.child.terminate(force=True)
        self.child.close(force=True)


def run(client: paramiko.SSHClient, command: str) -> str:
    _stdin, stdout, stderr = client.exec_command(command, timeout=30)
    output = stdout.read().decode()
    assert stdout.channel.recv_exit_status() == 0, f"{command!r} failed: {stderr.read().decode()}"
    return output


@pytest.fixture
def guests(short_tmp: Path) -> Iterator[list[Uml]]:
    """Guests a test starts; any still running at the end are halted and killed by PID."""
    started: list[Uml] = []
    yield started
    for guest in started:
        guest.kill()


def seeded(short_tmp: Path, public_key: str, hostname: str = "web1",
           more_scripts: tuple[tuple[str, str], ...] = ()) -> Path:
    files = short_tmp / "files"
    (files / "etc").mkdir(parents=True)
    (files / "etc" / "lab-motd").write_text("welcome to the lab\n")
    spec = SeedSpec(
        hostname=hostname,
        authorized_keys=[public_key],
        root_password="lab-secret",
        files_dir=files,
        startup_scripts=[("mark", "echo ran >> /var/log/startup-mark\n"), *more_scripts],
    )
    return build_seed(spec, short_tmp / "seed.img")


@pytest.mark.guest
def test_tiny_boots_with_seed_and_accepts_ssh(tiny_image: ImageRecord, short_tmp: Path, guests: list[Uml]) -> None:
    key, public = make_key()
    guest = Uml(short_tmp, tiny_image.path, seeded(short_tmp, public))
    guests.append(guest)
    guest.start()
    assert guest.wait_ready(60) < 30
    with guest.ssh(key) as client:
        assert run(client, "hostname").strip() == "web1"
        assert run(client, "cat /etc/lab-motd") == "welcome to the lab\n"
        assert run(client, "cat /var/log/startup-mark") == "ran\n"
        assert "10.0.2.15/24" in run(client, "ip addr show eth0")
        assert "default via 10.0.2.2 dev eth0" in run(client, "ip route")
        assert run(client, "cat /etc/resolv.conf") == "nameserver 10.0.2.3\n"
        assert run(client, "grep -c '^root:\\$6\\$' /etc/shadow").strip() == "1"  # password from the seed
        assert "ubdb" not in run(client, "cat /proc/mounts")  # seed unmounted again
    # The console is a usable root shell with a real tty.
    assert guest.child is not None
    guest.child.sendline("echo $((6*7)) on $(tty)")
    guest.expect("42 on /dev/tty0", 15)
    guest.child.sendline("poweroff")
    assert guest.wait_exit(60) == 0


@pytest.mark.guest
def test_overlay_keeps_state_across_boots_and_cad_shuts_down(tiny_image: ImageRecord, short_tmp: Path,
                                                             guests: list[Uml]) -> None:
    key, public = make_key()
    seed = seeded(short_tmp, public)
    first = Uml(short_tmp, tiny_image.path, seed)
    guests.append(first)
    first.start()
    first.wait_ready()
    with first.ssh(key) as client:
        run(client, "echo student-edit > /etc/lab-motd; : > /root/.ssh/authorized_keys; sync")
    # mconsole "cad" reaches busybox init's ::ctrlaltdel: entry and the guest powers off cleanly.
    first.mconsole("cad")
    assert first.wait_exit(60) == 0

    second = Uml(short_tmp, tiny_image.path, seed)
    guests.append(second)
    second.start()
    second.wait_ready()
    with second.ssh(key) as client:  # the grader key came back although the student emptied the file
        assert run(client, "cat /etc/lab-motd") == "student-edit\n"  # files/ copied on first boot only
        assert run(client, "cat /var/log/startup-mark") == "ran\nran\n"  # startup scripts run every boot
    second.mconsole("cad")
    assert second.wait_exit(60) == 0


@pytest.mark.guest
def test_tiny_boots_without_seed(tiny_image: ImageRecord, short_tmp: Path, guests: list[Uml]) -> None:
    guest = Uml(short_tmp, tiny_image.path, None)
    guests.append(guest)
    guest.start()
    guest.wait_ready()
    assert guest.child is not None
    guest.child.sendline("hostname")
    guest.expect("\ntiny", 15)
    guest.child.sendline("poweroff")
    assert guest.wait_exit(60) == 0


@pytest.mark.guest
@pytest.mark.slow
def test_debian_builds_and_boots_to_ssh(session_settings: Settings, short_tmp: Path, guests: list[Uml]) -> None:
    record = ImageStore(session_settings).build(find_recipe(RECIPES, "debian-bookworm"))
    assert record.size == 2 << 30
    key, public = make_key()
    # The seed is applied early in the boot, the lab's startup scripts later, on the booted system; the readiness
    # marker waits for both (docs/images.md, "The Debian image's boot").
    booted = ("booted", "systemctl is-active basic.target > /var/log/startup-booted\n")
    guest = Uml(short_tmp, record.path, seeded(short_tmp, public, hostname="deb1", more_scripts=(booted,)),
                memory="256M")
    guests.append(guest)
    guest.start()
    guest.wait_ready(180)
    with guest.ssh(key) as client:
        assert run(client, "hostname").strip() == "deb1"
        assert run(client, "cat /etc/lab-motd") == "welcome to the lab\n"
        assert run(client, "cat /var/log/startup-mark /var/log/startup-booted") == "ran\nactive\n"
        assert run(client, "systemctl is-active ssh labkit-seed labkit-startup").split() == ["active"] * 3
        # one host key, Ed25519, made on this first boot
        assert run(client, "ls /etc/ssh/ | grep '^ssh_host_'").split() == ["ssh_host_ed25519_key",
                                                                         "ssh_host_ed25519_key.pub"]
    guest.mconsole("cad")  # ctrl-alt-del.target is linked to poweroff.target in the image
    assert guest.wait_exit(120) == 0
