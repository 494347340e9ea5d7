"""debian-bookworm through the whole stack: build (cached by recipe digest), boot, SSH, console login, clean stop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labkit.config import Settings
from labkit.images.guest_contract import SEED_ROOT_PASSWORD_HASH, SEED_SSH_HOST_KEY
from labkit.images.seed import seed_member
from labkit.services.machines import Machines

from .conftest import machines_on

pytestmark = [pytest.mark.guest, pytest.mark.slow]


@pytest.fixture
def machines(lk_settings: Settings) -> Iterator[Machines]:
    with machines_on(lk_settings, "debian-bookworm", actor="tester") as service:
        yield service


def test_debian_boots_to_ssh_and_console_login(machines: Machines) -> None:
    machines.create("deb", "debian-bookworm", memory_mb=256)
    view = machines.start("deb", timeout=180)
    assert view.state == "running"
    with machines.open_guest("deb") as guest:
        over_ssh = guest.run("hostname; systemctl is-active ssh; sshd -T | grep -x 'usepam no'; "
                             "tr '\\0' ' ' < /proc/$(systemctl show -P MainPID ssh)/cmdline", timeout=60)
        assert over_ssh.transport == "ssh"
        # the image's two SSH cuts (no PAM session, no re-exec per connection) are what sshd really runs with
        assert over_ssh.out.split()[:4] == ["deb", "active", "usepam", "no"]
        assert "/usr/sbin/sshd -D -r" in over_ssh.out.splitlines()[-1]
        # The console asks for a login: labkit logs in as root with the password it placed through the seed disk.
        over_console = guest.run("id -un; echo $((6*7))", timeout=60, transport="console")
        assert over_console.transport == "console"
        assert over_console.out.split() == ["root", "42"]
    view = machines.stop("deb")
    assert view.state == "stopped"


def test_a_root_password_changed_in_the_guest_gives_way_to_the_seeds_at_the_next_boot(machines: Machines) -> None:
    """The seed brings root's password hashed by labkit (bcrypt, which Debian's libxcrypt reads); the boot hook puts
    it into /etc/shadow with shell built-ins only when root's entry differs (hashing in the guest cost a quarter of a
    second of every boot, and most of a second under QEMU). A student who changed root's password still gets the
    seed's back, so labkit's console login keeps working; the machine's SSH host key is the seed's too."""
    machines.create("deb", "debian-bookworm", memory_mb=128)
    machines.start("deb", timeout=180)
    seed = machines.settings.seeds / "deb.img"  # where the services keep a machine's seed disk
    seeds_hash = seed_member(seed, SEED_ROOT_PASSWORD_HASH).decode().strip()
    seeds_host_key = seed_member(seed, SEED_SSH_HOST_KEY + ".pub").decode().split()[:2]
    assert seeds_hash.startswith("$2b$")
    with machines.open_guest("deb") as guest:
        first = guest.run("getent shadow root | cut -d: -f2; cat /etc/ssh/ssh_host_ed25519_key.pub", timeout=60)
        shadow, host_key = first.out.splitlines()
        assert shadow == seeds_hash
        assert host_key.split()[:2] == seeds_host_key
        students = guest.run("echo root:not-the-seeds | chpasswd; getent shadow root | cut -d: -f2", timeout=60)
        assert students.out.strip() not in ("", shadow)
    machines.stop("deb")
    machines.start("deb", timeout=180)
    with machines.open_guest("deb") as guest:
        over_console = guest.run("id -un", timeout=60, transport="console")
        assert (over_console.transport, over_console.out.split()) == ("console", ["root"])
        again = guest.run("getent shadow root | cut -d: -f2", timeout=60)
        assert again.out.strip() == seeds_hash  # the seed's password again, not the student's
        shadow_written = guest.run("stat -c %Y /etc/shadow", timeout=60).out
    machines.stop("deb")
    machines.start("deb", timeout=180)  # nothing changed: the boot does not write /etc/shadow again
    with machines.open_guest("deb") as guest:
        assert guest.run("stat -c %Y /etc/shadow", timeout=60).out == shadow_written
    machines.stop("deb")
