"""``labkit capture``: a student's lab network as a pcap file (Wireshark, ``tcpdump -r``)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import BinaryIO

import click

from labkit.cli.app import App

pass_app = click.make_pass_decorator(App)


@click.command("capture")
@click.argument("course")
@click.argument("student")
@click.argument("network")
@click.option("-o", "--output", required=True, metavar="FILE",
              help="Where the pcap goes ('-': standard output, e.g. into 'tcpdump -r -' or 'wireshark -k -i -').")
@click.option("--duration", default=10.0, show_default=True, metavar="SECONDS",
              help="How long to capture (at most 3600 s); Ctrl-C stops sooner and keeps what was captured.")
@click.option("--lab", help="The lab of the network, when two labs of the student have a network of that name.")
@click.option("--max-mb", default=64, show_default=True, type=click.IntRange(1, 1024),
              help="Stop before the file grows past this many MiB.")
@pass_app
def command(app: App, course: str, student: str, network: str, output: str, duration: float, lab: str | None,
            max_mb: int) -> None:
    """Capture lab network NETWORK of STUDENT in COURSE while their machines run, into a pcap file.

    The capture is a plug on the student's own switch, so it sees their machines' traffic and nobody else's."""
    from labkit.services.captures import Captures

    capture = Captures(app.settings, app.db).start(course, student, network, seconds=duration, lab=lab,
                                                   max_bytes=max_mb << 20)
    net = capture.network
    click.echo(f"capturing {net.network} of {net.student}'s {net.lab} (machines {', '.join(net.machines)}) for "
               f"{capture.seconds:g} s ...", err=True)
    if not capture.sees_all:
        click.echo("labkit: warning: this network's switch started before lab networks were hubs; the capture shows "
                   "broadcasts only until the lab's machines are stopped and started again", err=True)
    if output == "-":
        _copy(capture.chunks, sys.stdout.buffer)
        target = "standard output"
    else:
        path = Path(output)
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            with open(part, "wb") as out:
                _copy(capture.chunks, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(part, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        target = str(path)
    stopped = {"duration": "the time was up", "size": f"the file reached {max_mb} MiB",
               "network": "the network stopped", "interrupted": "interrupted"}[capture.stats.stopped_by]
    click.echo(f"{capture.stats.packets} packets ({capture.stats.bytes} bytes) to {target}; stopped: {stopped}",
               err=True)


def _copy(chunks: Generator[bytes, None, None], out: BinaryIO) -> None:
    """Write every chunk as it comes; Ctrl-C ends the capture (the plug, by its PID) and keeps what was written,
    which is whole pcap records only."""
    try:
        for chunk in chunks:
            out.write(chunk)
            if out is sys.stdout.buffer:
                out.flush()
    except KeyboardInterrupt:
        pass
    finally:
        chunks.close()
