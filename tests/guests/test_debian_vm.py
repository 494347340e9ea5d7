"""debian-bookworm through the whole stack: build (cached by recipe digest), boot, SSH, console login, clean stop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labkit.config import Settings
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
