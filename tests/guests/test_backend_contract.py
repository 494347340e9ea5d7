"""One lifecycle contract, the same for every registered backend, through the real ``labkit`` command.

Each backend gets one machine of the tiny image and the same walk: create, start --wait, exec over SSH and over the
console, a forward from the host into the guest, a host port the guest may reach as 10.0.2.2, a live snapshot,
pause and resume, kill -9 of the machine process and recovery, a clean stop, restore, reset and rm. Three boots per
backend. QEMU runs on TCG here, slow under load: waits are generous, assertions are about outcomes, never timings.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from labkit.runtime import backend_kinds, get_backend

from .backend_helpers import HostWebService
from .labkit_cli import Labkit, fetch, host_port, labkit_home, wait_state

pytestmark = [pytest.mark.guest, pytest.mark.timeout(600)]

#: Enough for every backend (QEMU's kernel needs 128 MiB).
MEMORY = "128"


@pytest.fixture
def lk() -> Iterator[Labkit]:
    with labkit_home("lkc", exec_timeout=120) as labkit:
        yield labkit


@pytest.mark.parametrize("kind", backend_kinds())
def test_lifecycle_contract(lk: Labkit, kind: str) -> None:
    missing = get_backend(kind).check()
    if missing:
        pytest.skip(f"backend {kind} cannot run here: {'; '.join(missing)}")
    name = f"c{kind}{os.getpid() % 1000}"
    token = f"host-{name}"
    allowed, other = HostWebService(token), HostWebService(token)
    try:
        created = lk.json("vm", "create", name, "--image", "tiny", "--memory", MEMORY, "--backend", kind,
                          "--forward", "0:8080", "--host-port", str(allowed.port))
        assert created["backend"] == kind and created["state"] == "stopped"  # type: ignore[index]

        # ---- boot 1: both transports, forwards both ways, a live snapshot, pause/resume, kill -9
        lk("vm", "start", name, "--wait", "--timeout", "240")
        view = lk.status(name)
        assert view["state"] == "running" and view["pid"]
        assert os.stat(f"/proc/{view['pid']}").st_uid == os.getuid()

        by_ssh = lk.sh(name, "echo out; echo err >&2; hostname; exit 3")
        assert (by_ssh["transport"], by_ssh["exit_code"]) == ("ssh", 3), by_ssh
        assert (by_ssh["stdout"], by_ssh["stderr"]) == (f"out\n{name}\n", "err\n")
        by_console = lk.sh(name, "echo via-console; hostname; exit 4", "--transport", "console")
        assert (by_console["transport"], by_console["exit_code"]) == ("console", 4), by_console
        assert by_console["stdout"] == f"via-console\n{name}\n"

        # host -> guest: a forwarded guest service answers on the host's 127.0.0.1
        page = f"page-{name}"
        served = lk.sh(name, f"mkdir -p /tmp/www && echo {page} > /tmp/www/index.html && httpd -p 8080 -h /tmp/www")
        assert served["exit_code"] == 0, served
        assert fetch(f"http://127.0.0.1:{host_port(view, 8080)}/") == page
        # guest -> host: the allowed host port answers at 10.0.2.2, another host port does not
        reached = lk.sh(name, f"timeout 30 wget -q -O - http://10.0.2.2:{allowed.port}/")
        assert (reached["exit_code"], reached["stdout"]) == (0, token), reached
        refused = lk.sh(name, f"timeout 10 wget -q -O - http://10.0.2.2:{other.port}/ 2>&1")
        assert refused["exit_code"] != 0 and token not in str(refused["stdout"]), refused
        # the default route leaves through the gateway (a QEMU guest's slirp answers ARP only for 10.0.2.2/.3)
        route = lk.sh(name, "ip route show default")
        assert "via 10.0.2.2" in str(route["stdout"]), route

        assert lk.sh(name, "echo kept > /root/kept.txt && sync")["exit_code"] == 0
        lk("vm", "snapshot", name, "live")
        assert lk.status(name)["state"] == "running"
        assert lk.sh(name, "echo later > /root/later.txt && sync")["exit_code"] == 0

        lk("vm", "pause", name)
        assert lk.status(name)["state"] == "paused"
        lk("vm", "resume", name)
        assert lk.sh(name, "echo awake")["stdout"] == "awake\n"

        pid = int(lk.status(name)["pid"])  # type: ignore[arg-type]
        os.kill(pid, signal.SIGKILL)
        wait_state(lk, name, "stopped")

        # ---- boot 2: recovery after kill -9; the synced work is there; a clean stop
        lk("vm", "start", name, "--wait", "--timeout", "240")
        assert lk.status(name)["state"] == "running"
        assert lk.sh(name, "cat /root/kept.txt /root/later.txt")["stdout"] == "kept\nlater\n"
        lk("vm", "stop", name)
        assert lk.status(name)["state"] == "stopped"

        # ---- boot 3: the live snapshot restored
        lk("vm", "restore", name, "live", "--yes")
        names = [row["name"] for row in lk.json("vm", "snapshots", name)]  # type: ignore[union-attr]
        assert names[0] == "live" and any(n.startswith("before-restore-") for n in names), names
        lk("vm", "start", name, "--wait", "--timeout", "240")
        assert lk.sh(name, "cat /root/kept.txt")["stdout"] == "kept\n"
        assert lk.sh(name, "test -e /root/later.txt")["exit_code"] == 1
        lk("vm", "stop", name)

        # reset: an empty overlay; the old one kept as a snapshot
        lk("vm", "reset", name, "--yes")
        view = lk.status(name)
        assert view["overlay_bytes"] == 0, view
        assert any(str(s).startswith("before-reset-") for s in view["snapshots"]), view  # type: ignore[union-attr]

        lk("vm", "rm", name, "--yes")
        assert lk.json("vm", "status") == []
        assert lk("vm", "status", name, check=False).returncode == 1
    finally:
        allowed.close()
        other.close()
