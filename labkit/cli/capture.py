"""``labkit capture``: a student's lab network as a pcap file (Wireshark, ``tcpdump -r``)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import click

from labkit.cli.app import App
from labkit.errors import LabkitError

if TYPE_CHECKING:
    from labkit.runtime.capture import PcapStream

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

    folder = Path(output).absolute().parent
    if output != "-" and not (folder.is_dir() and os.access(folder, os.W_OK)):
        raise LabkitError(f"cannot write the capture to {output}: {folder} is not a folder you may write to")
    # Ctrl-C (SIGINT) ends the capture within 0.2 s, through its normal end: the plug ended by its PID, the file
    # whole. (The plug runs in a session of its own: the terminal's Ctrl-C reaches labkit only.)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        capture = Captures(app.settings, app.db).start(course, student, network, seconds=duration, lab=lab,
                                                       max_bytes=max_mb << 20, stop=stop)
        try:
            net = capture.network
            click.echo(f"capturing {net.network} of {net.student}'s {net.lab} (machines {', '.join(net.machines)}) "
                       f"for {capture.seconds:g} s ...", err=True)
            if not capture.sees_all:
                click.echo("labkit: warning: this network's switch started before lab networks were hubs; the "
                           "capture shows broadcasts only until the lab's machines are stopped and started again",
                           err=True)
            target = _write(capture.chunks, output)
        finally:
            capture.chunks.close()  # the plug ends by its PID, whatever happened
    finally:
        signal.signal(signal.SIGINT, previous)
    stopped = {"duration": "the time was up", "size": f"the file reached {max_mb} MiB",
               "network": "the network stopped", "interrupted": "interrupted"}[capture.stats.stopped_by]
    click.echo(f"{capture.stats.packets} packets ({capture.stats.bytes} bytes) to {target}; stopped: {stopped}",
               err=True)


def _write(chunks: PcapStream, output: str) -> str:
    """Write the capture to ``output`` ('-': standard output) as it comes; a file appears whole, at the end (a
    temporary name beside it first). Returns where it went, in words."""
    if output == "-":
        _copy(chunks, sys.stdout.buffer)
        return "standard output"
    path = Path(output)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with open(part, "wb") as out:
            _copy(chunks, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, path)
    except OSError as err:
        raise LabkitError(f"cannot write the capture to {output}: {err.strerror}") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return str(path)


def _copy(chunks: PcapStream, out: BinaryIO) -> None:
    """Write every chunk as it comes (whole pcap records only)."""
    try:
        for chunk in chunks:
            out.write(chunk)
            if out is sys.stdout.buffer:
                out.flush()
    except BrokenPipeError:  # the reader of standard output went away (tcpdump ended): so does the capture
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        chunks.close()
