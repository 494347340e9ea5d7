"""Running a lab's grader.py with the least rights it needs: a bubblewrap sandbox, a time and a memory limit.

A grader is lab code, written by whoever wrote the lab, and labkit runs it inside the web worker or the CLI, which hold
the database, every course and the key that signs sessions. So grader.py never runs in labkit's process: each script
check starts ``bwrap`` (Debian package bubblewrap, unprivileged through user namespaces) with

- only /usr (Debian's ``/usr/bin/python3``: the interpreter of labkit's own venv may live under a folder only its
  owner can read, and it would bring labkit's site-packages), labkit's package (for the grader API's value types)
  and the lab folder, all read-only, a private 16 MiB /tmp, a read-only root, /proc and a minimal /dev;
- every namespace unshared (no network at all: not even the host's loopback), nobody's uid and no capabilities, no
  further user namespaces, a new session, and death with labkit (``--die-with-parent``);
- an empty environment but PATH, HOME=/tmp and LANG: never LABKIT_HOME, the database URL or a secret;
- a wall-clock limit (the check's ``timeout`` plus `SCRIPT_GRACE`), after which the whole process group is killed by
  PID (and the sandbox's PID namespace with it), and an address-space limit (`GRADER_MEMORY`, set by the
  grader process itself before it imports grader.py).

The grader reaches its machines only through labkit: its Guest handles send each call over one socket
(labkit/grading/grader_process.py holds the wire format), and labkit runs it on the real, budgeted handle.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import labkit
from labkit.errors import ConfigError, GuestError, GuestUnavailableError, LabFormatError, LabkitError
from labkit.grading.grader_process import MAX_LINE, METHODS, decode_bytes, encode_value
from labkit.guest.result import BoundedBuffer

#: Debian's interpreter (package python3), reached through the read-only /usr of the sandbox.
GRADER_PYTHON = "/usr/bin/python3"
#: The address space a grader process may use (``RLIMIT_AS``): Python itself takes about 30 MiB of it.
GRADER_MEMORY = 256 << 20
#: The size of the sandbox's private /tmp (memory-backed).
TMP_SIZE = 16 << 20
#: Extra time a script gets past its check's budget before it is killed (its guest calls end at the deadline).
SCRIPT_GRACE = 2.0
#: Where the lab folder and labkit's package appear inside the sandbox.
LAB_MOUNT = "/lab"
PACKAGE_MOUNT = "/opt/labkit/labkit"
#: How much of the grader's own output (print, warnings) is kept to explain a crash.
OUTPUT_KEPT = 2048
DOCS = "docs/operations.md (Sandbox for grader.py)"


class SandboxUnavailable(ConfigError):
    """The sandbox for grader.py cannot start on this host; script checks are refused rather than run without it."""


class GraderTimedOut(GuestError):
    """The grading function did not finish in time (a guest that does not answer looks the same to the student)."""


@dataclass(frozen=True)
class GraderAnswer:
    """What a grading function returned: its points (not yet clamped) and its feedback."""

    points: float
    feedback: str


def bwrap_program() -> str:
    """The bwrap binary, or `SandboxUnavailable` saying how to get it."""
    program = shutil.which("bwrap")
    if program is None:
        raise SandboxUnavailable(f"script checks run grader.py in a bubblewrap sandbox, and bwrap is not installed "
                                 f"(Debian package bubblewrap); see {DOCS}")
    if not os.access(GRADER_PYTHON, os.X_OK):
        raise SandboxUnavailable(f"script checks run grader.py with Debian's {GRADER_PYTHON}, which is missing "
                                 f"(Debian package python3); see {DOCS}")
    return program


def sandbox_command(program: str, lab_root: Path, grader: str, fd: int, memory: int) -> list[str]:
    """The bwrap command line that runs ``grader`` (a path inside ``lab_root``) with the socket on ``fd``."""
    package = Path(labkit.__file__).resolve().parent
    return [
        program,
        "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534", "--cap-drop", "ALL",
        "--die-with-parent", "--new-session",
        "--clearenv", "--setenv", "PATH", "/usr/bin", "--setenv", "HOME", "/tmp", "--setenv", "LANG", "C.UTF-8",
        "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin",
        "--proc", "/proc", "--dev", "/dev", "--size", str(TMP_SIZE), "--tmpfs", "/tmp",
        "--ro-bind", str(package), PACKAGE_MOUNT, "--ro-bind", str(lab_root), LAB_MOUNT,
        "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", LAB_MOUNT,
        GRADER_PYTHON, "-I", "-B", f"{PACKAGE_MOUNT}/grading/grader_process.py", str(fd), str(memory),
        f"{LAB_MOUNT}/{grader}",
    ]


def probe() -> str | None:
    """Why the sandbox cannot start on this host, or None when it can (for ``labkit doctor``)."""
    try:
        program = bwrap_program()
    except SandboxUnavailable as err:
        return str(err)
    command = sandbox_command(program, Path(__file__).resolve().parent, "grader_process.py", 0, GRADER_MEMORY)
    python = command.index(GRADER_PYTHON)
    try:
        done = subprocess.run([*command[:python + 1], "-I", "-c", "pass"], capture_output=True, text=True,
                              timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bwrap did not run: {err}"
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[0][:300]
    return None


class _Closed(Exception):
    """The grader process closed its end of the socket."""


class _Link:
    """labkit's end of the socket: JSON lines, every read and write bounded by the grader's deadline."""

    def __init__(self, sock: socket.socket, deadline: float, seconds: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._seconds = seconds
        self._buffer = b""
        #: whether the grader process said it started: before that, an ending is bwrap's own failure
        self.greeted = False

    def _timed_out(self) -> GraderTimedOut:
        return GraderTimedOut(f"grader.py timed out: it did not finish within {self._seconds:g} s")

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out()
        return left

    def send(self, message: Mapping[str, object]) -> None:
        self._sock.settimeout(self._left())
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except TimeoutError as err:
            raise self._timed_out() from err
        except OSError as err:
            raise _Closed from err

    def receive(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise LabFormatError("grader.py sent labkit a line longer than the sandbox's protocol allows")
            self._sock.settimeout(self._left())
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError as err:
                raise self._timed_out() from err
            except OSError as err:
                raise _Closed from err
            if not data:
                raise _Closed
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except (ValueError, RecursionError) as err:
            raise LabFormatError("grader.py broke the sandbox's protocol (not JSON)") from err
        if not isinstance(message, dict):
            raise LabFormatError("grader.py broke the sandbox's protocol (not an object)")
        return message


def _arguments(method: str, args: object) -> tuple[list[object], dict[str, object]]:
    """The checked arguments of one Guest call from the sandbox (it is untrusted: nothing else gets through)."""
    if method not in METHODS or not isinstance(args, dict):
        raise LabFormatError(f"grader.py asked for an unknown Guest call {str(method)[:40]!r}")
    positional: list[object] = []
    for name in METHODS[method]:
        value = args.get(name)
        want = int if name == "port" else str
        if isinstance(value, bool) or not isinstance(value, want):
            raise LabFormatError(f"grader.py gave {method} a bad {name}")
        positional.append(value)
    timeout = args.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not math.isfinite(timeout)):
        raise LabFormatError(f"grader.py gave {method} a bad timeout")
    transport = args.get("transport")
    if transport is not None and not isinstance(transport, str):
        raise LabFormatError(f"grader.py gave {method} a bad transport")
    keywords: dict[str, object] = {"timeout": timeout, "transport": transport}
    if method == "run":
        try:
            keywords["stdin"] = decode_bytes(args.get("stdin", ""))
        except ValueError as err:
            raise LabFormatError("grader.py gave run a bad stdin") from err
    return positional, keywords


def _serve(guests: Mapping[str, Any], message: Mapping[str, Any],
           unavailable: list[GuestUnavailableError]) -> dict[str, object]:
    """Run one Guest call on the real (budgeted) handle; labkit's errors go back to the grader to catch.

    A guest labkit could not look into is also kept in ``unavailable``: whatever grader.py makes of it, the check
    is then "not checked", never a score the student did not earn or lose."""
    method, machine = message.get("call"), message.get("machine")
    guest = guests.get(machine) if isinstance(machine, str) else None
    if guest is None:
        raise LabFormatError(f"grader.py asked for machine {str(machine)[:40]!r}, which this check does not have")
    positional, keywords = _arguments(str(method), message.get("args"))
    try:
        value = getattr(guest, str(method))(*positional, **keywords)
    except GuestUnavailableError as err:
        unavailable.append(err)
        return {"error": "guest", "message": str(err), "transport": guest.last_transport}
    except GuestError as err:
        return {"error": "guest", "message": str(err), "transport": guest.last_transport}
    except LabkitError as err:
        return {"error": "labkit", "message": str(err), "transport": guest.last_transport}
    return {"value": encode_value(str(method), value), "transport": guest.last_transport}


def _drain(stream: Any, into: BoundedBuffer) -> None:
    """Keep the grader's own output (bounded) so a full pipe never blocks it; ends at EOF or when labkit closes."""
    with contextlib.suppress(OSError, ValueError):
        for chunk in iter(lambda: stream.read1(4096), b""):
            into.write(chunk)


def _private_places() -> dict[str, Path]:
    """Folders the sandbox must never show, by what they hold: a lab folder that contains one is refused."""
    places = {"your home folder": Path.home()}
    if os.environ.get("LABKIT_HOME"):
        places["labkit's state folder (LABKIT_HOME)"] = Path(os.environ["LABKIT_HOME"])
    else:
        places["labkit's state folder"] = Path.home() / ".local/share/labkit"
    database = os.environ.get("LABKIT_DB", "")
    if database.startswith("sqlite:///"):
        places["labkit's database"] = Path(database.removeprefix("sqlite:///"))
    return places


def refuse_broad(lab_root: Path) -> None:
    """The lab folder is shown to grader.py in full, so it may not hold a home folder or labkit's state."""
    for what, place in _private_places().items():
        if place.absolute().resolve().is_relative_to(lab_root):
            raise LabFormatError(f"the lab folder {lab_root} holds {what}, which grader.py would see: keep each lab "
                                 "in a folder of its own")


def run_grader(lab_root: Path, grader: str, function: str, guests: Mapping[str, Any],
               params: Mapping[str, object], seconds: float, memory: int = GRADER_MEMORY) -> GraderAnswer:
    """Call ``function(guests, params)`` of ``lab_root/grader`` in a sandbox; its answer, or a `LabkitError`.

    - `GraderTimedOut` (a `GuestError`) when it runs longer than ``seconds``;
    - `LabFormatError` when grader.py does not import, lacks the function, raises, returns something else than
      ``(points, feedback)`` or runs out of memory; `GuestError`/`LabkitError` when it let a guest error through;
    - `SandboxUnavailable` when bwrap cannot start here (never run without the sandbox).
    """
    program = bwrap_program()
    refuse_broad(lab_root)
    ours, theirs = socket.socketpair()
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            sandbox_command(program, lab_root, grader, theirs.fileno(), memory), pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as err:
        ours.close()
        theirs.close()
        raise SandboxUnavailable(f"cannot start bwrap for grader.py: {err.strerror}; see {DOCS}") from err
    theirs.close()
    output = BoundedBuffer(OUTPUT_KEPT)
    assert process.stdout is not None
    drain = threading.Thread(target=_drain, args=(process.stdout, output), name="labkit-grader-output", daemon=True)
    drain.start()
    link = _Link(ours, started + seconds, seconds)
    try:
        return _converse(link, process, output, drain, function, guests, params, memory)
    finally:
        _stop(process)
        ours.close()
        drain.join(1.0)
        process.stdout.close()


def _converse(link: _Link, process: subprocess.Popen[bytes], output: BoundedBuffer, drain: threading.Thread,
              function: str, guests: Mapping[str, Any], params: Mapping[str, object], memory: int) -> GraderAnswer:
    try:
        if link.receive().get("ready") is not True:
            raise LabFormatError("grader.py broke the sandbox's protocol (no greeting)")
        link.greeted = True
        machines = {name: {"forwards": sorted(dict(guest.forwards).items()), "inside_transport":
                           guest.inside_transport} for name, guest in guests.items()}
        link.send({"function": function, "params": json.loads(json.dumps(dict(params), default=str)),
                   "machines": machines})
        unavailable: list[GuestUnavailableError] = []
        while True:
            message = link.receive()
            if "call" not in message:
                if unavailable:
                    raise unavailable[0]
                return _answer(function, message, memory)
            link.send(_serve(guests, message, unavailable))
    except _Closed:
        pass
    # the grader process ended without a last word: bwrap could not start, or grader.py killed its own process
    try:
        code = process.wait(timeout=2.0)
    except subprocess.TimeoutExpired:
        code = None
    drain.join(1.0)
    said = output.getvalue().decode("utf-8", errors="replace").strip()
    if said.startswith("bwrap:") and not link.greeted:
        raise SandboxUnavailable(f"script checks run grader.py in a bubblewrap sandbox, which cannot start here: "
                                 f"{said.splitlines()[0][:300]}; see {DOCS}")
    last = said.splitlines()[-1][:300] if said else "no output"
    raise LabFormatError(f"grader.py ended without an answer (exit code {code}): {last}")


def _answer(function: str, message: Mapping[str, Any], memory: int) -> GraderAnswer:
    failed, text = message.get("failed"), str(message.get("message", ""))[:500]
    if failed == "memory":
        raise LabFormatError(f"{function} in grader.py ran out of memory (the limit is {memory >> 20} MiB)")
    if failed == "import":
        raise LabFormatError(f"importing grader.py failed: {text}")
    if failed == "function":
        raise LabFormatError(f"grader.py has no function {function}")
    if failed == "raised":
        raise LabFormatError(f"{function} in grader.py raised {text}")
    if failed == "guest":
        raise GuestError(text)
    if failed == "labkit":
        raise LabkitError(text)
    done = message.get("done")
    if isinstance(done, dict) and "bad" not in done:
        points, feedback = done.get("points"), done.get("feedback")
        if (isinstance(points, int | float) and not isinstance(points, bool) and math.isfinite(points)
                and isinstance(feedback, str)):
            return GraderAnswer(float(points), feedback)
    shown = str(done.get("bad", "")) if isinstance(done, dict) else "something else"
    raise LabFormatError(f"{function} in grader.py must return (points, feedback), not {shown[:200]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the sandbox by its process group (bwrap leads it), whether or not it is done: its PID namespace dies
    with it. Waiting for a grader that answered to exit by itself would only cost time."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()
