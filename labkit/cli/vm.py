"""``labkit vm``: single machines, from create to rm."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from typing import TYPE_CHECKING

import click

from labkit.cli.app import App, echo_json, json_option
from labkit.errors import StateError
from labkit.runtime import DEFAULT_BACKEND, backend_kinds
from labkit.runtime.network import parse_forward

if TYPE_CHECKING:
    from labkit.services.machines import MachineView

pass_app = click.make_pass_decorator(App)


@click.group("vm")
def command() -> None:
    """Create, run, inspect and reset single machines."""


def _show(view: MachineView) -> None:
    uptime = f"{view.uptime:.0f} s" if view.uptime is not None else "-"
    click.echo(f"{view.name}: {view.state}  {view.backend}  image {view.image}  {view.memory_mb} MB  uptime {uptime}  "
               f"overlay {view.overlay_bytes / 1e6:.1f} MB")
    for forward in view.forwards:
        host, guest = forward.split(":")
        click.echo(f"  forward host {host} -> guest {guest}")
    if view.ssh and view.state == "running":
        click.echo(f"  ssh: {view.ssh}")
    if view.snapshots:
        click.echo(f"  snapshots: {', '.join(view.snapshots)}")
    click.echo(f"  a snapshot now keeps: {view.snapshot_kind}")


@command.command("create")
@click.argument("name")
@click.option("--image", required=True, help="Base image as NAME or NAME:VERSION (newest when no version).")
@click.option("--memory", default=128, show_default=True, help="Memory in MB.")
@click.option("--forward", "forwards", multiple=True, metavar="HOST:GUEST",
              help="Forward a host TCP port to a guest port (HOST 0 picks a free port). SSH is always forwarded.")
@click.option("--host-port", "host_ports", multiple=True, type=click.IntRange(1, 65535), metavar="PORT",
              help="A port of this host's 127.0.0.1 the guest may reach as 10.0.2.2:PORT (by default: none).")
@click.option("--outbound/--no-outbound", default=True, show_default=True,
              help="Whether the guest reaches addresses beyond this host.")
@click.option("--backend", type=click.Choice(backend_kinds()), default=None,
              help=f"The machine's backend (default: the one its image names, else {DEFAULT_BACKEND}); its overlay "
                   "kind follows from it (labkit doctor checks each).")
@json_option
@pass_app
def create(app: App, name: str, image: str, memory: int, forwards: tuple[str, ...], host_ports: tuple[int, ...],
           outbound: bool, backend: str | None, as_json: bool) -> None:
    """Create machine NAME with its own copy-on-write overlay of a base image."""
    view = app.machines.create(name, image, memory, [parse_forward(f) for f in forwards],
                               host_ports=list(host_ports), outbound=outbound, backend=backend)
    echo_json(dataclasses.asdict(view)) if as_json else _show(view)


@command.command("start")
@click.argument("name")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Return when the guest reports ready.")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the ready marker.")
@pass_app
def start(app: App, name: str, wait: bool, timeout: float) -> None:
    """Boot machine NAME."""
    _show(app.machines.start(name, wait=wait, timeout=timeout))


@command.command("stop")
@click.argument("name")
@pass_app
def stop(app: App, name: str) -> None:
    """Shut NAME down cleanly (the guest is asked to power off, then halted after a timeout)."""
    _show(app.machines.stop(name))


@command.command("kill")
@click.argument("name")
@pass_app
def kill(app: App, name: str) -> None:
    """End NAME at once, without a clean shutdown."""
    _show(app.machines.kill(name))


@command.command("pause")
@click.argument("name")
@pass_app
def pause(app: App, name: str) -> None:
    """Freeze a running machine."""
    _show(app.machines.pause(name))


@command.command("resume")
@click.argument("name")
@pass_app
def resume(app: App, name: str) -> None:
    """Continue a paused machine."""
    _show(app.machines.resume(name))


@command.command("status")
@click.argument("name", required=False)
@json_option
@pass_app
def status(app: App, name: str | None, as_json: bool) -> None:
    """Show the true state of one machine or all, reconciled with the running processes."""
    views = app.read_status(lambda reader: reader.machines(name), lambda: app.machines.status(name))
    if as_json:
        echo_json([dataclasses.asdict(v) for v in views])
    elif not views:
        click.echo("no machines yet: labkit vm create NAME --image tiny")
    for view in [] if as_json else views:
        _show(view)


@command.command("console")
@click.argument("name")
@pass_app
def console(app: App, name: str) -> None:
    """Attach to NAME's console (several clients may attach; Ctrl-] detaches)."""
    from labkit.runtime.console import attach

    access = app.machines.console(name)
    click.echo(f"[labkit: console of {name}; if it asks, log in as root with password {access.password}]")
    attach(access.socket, log=access.log)


@command.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--transport", type=click.Choice(["ssh", "console"]), help="Force a transport (default: SSH, console "
              "when SSH does not answer).")
@click.option("--timeout", default=60.0, show_default=True)
@json_option
@pass_app
def exec_(app: App, name: str, cmd: tuple[str, ...], transport: str | None, timeout: float, as_json: bool) -> None:
    """Run CMD in NAME and exit with its exit code: labkit vm exec NAME -- CMD ARGS..."""
    command_line = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
    with app.machines.open_guest(name) as guest:
        result = guest.run(command_line, timeout=timeout, transport=transport)
    if as_json:
        echo_json({"exit_code": result.exit_code, "stdout": result.out, "stderr": result.err,
                   "duration": result.duration, "transport": result.transport, "truncated": result.truncated})
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stderr.buffer.write(result.stderr)
    sys.exit(result.exit_code)


@command.command("ssh")
@click.argument("name")
@pass_app
def ssh(app: App, name: str) -> None:
    """Print the ssh command line that reaches NAME with labkit's key."""
    view = app.machines.status(name)[0]
    if not view.ssh or view.state != "running":
        raise StateError(f"machine {name} is {view.state}; SSH is reachable only while it runs")
    click.echo(view.ssh)


def _confirm(yes: bool, message: str) -> None:
    if not yes:
        click.confirm(message, abort=True)


@command.command("reset")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--discard", is_flag=True, help="Do not keep the old overlay as a snapshot: every change is lost.")
@pass_app
def reset(app: App, name: str, yes: bool, discard: bool) -> None:
    """Give stopped machine NAME a fresh, empty overlay. The old one is kept as snapshot before-reset-<time>
    (unless --discard)."""
    _confirm(yes, f"Reset {name}? " + ("Every change made in it since it was created is lost." if discard else
                                        "Its old disk is kept as a snapshot."))
    _show(app.machines.reset(name, discard=discard))


@command.command("snapshot")
@click.argument("name")
@click.argument("snapshot")
@pass_app
def snapshot(app: App, name: str, snapshot: str) -> None:
    """Keep a named copy of NAME's overlay. A running machine is synced and paused for the copy ("disk"), or, on a
    backend that keeps running states (QEMU), its memory is kept too ("running state")."""
    view = app.machines.snapshot(name, snapshot)
    kind = next((row["kind"] for row in app.machines.snapshots(name) if row["name"] == snapshot), "disk")
    click.echo(f"snapshot {snapshot} of {name}: {kind}")
    _show(view)


@command.command("restore")
@click.argument("name")
@click.argument("snapshot")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--discard", is_flag=True, help="Do not keep the current overlay as a snapshot: changes made since "
              "SNAPSHOT are lost.")
@pass_app
def restore(app: App, name: str, snapshot: str, yes: bool, discard: bool) -> None:
    """Bring SNAPSHOT back as stopped machine NAME's overlay. The current one is kept as snapshot
    before-restore-<time> (unless --discard). After a "running state" snapshot, NAME's next start goes on where it
    was instead of booting."""
    _confirm(yes, f"Restore {name} to {snapshot}? " + ("Changes made since that snapshot are lost." if discard else
                                                       "The current disk is kept as a snapshot."))
    _show(app.machines.restore(name, snapshot, discard=discard))
    if any(row["name"] == snapshot and row["kind"] == "running state" for row in app.machines.snapshots(name)):
        click.echo(f"  {snapshot} keeps a running state: 'labkit vm start {name}' goes on where it was")


@command.command("snapshots")
@click.argument("name")
@json_option
@pass_app
def snapshots(app: App, name: str, as_json: bool) -> None:
    """List NAME's snapshots."""
    rows = app.machines.snapshots(name)
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        click.echo(f"{row['name']}\t{row['created_at']}\t{row['size'] / 1e6:.1f} MB\t{row['kind']}")


@command.command("rm")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def rm(app: App, name: str, yes: bool) -> None:
    """Delete stopped machine NAME with its overlay and snapshots."""
    _confirm(yes, f"Delete {name} with its overlay and all its snapshots?")
    app.machines.remove(name)
    click.echo(f"removed {name}")
