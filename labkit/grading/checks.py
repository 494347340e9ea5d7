"""The check kinds of ``[[checks]]`` as plugins: one `Check` class per kind, found through `CHECK_KINDS`.

A check is built from its `CheckDef` (and the lab, for a script's grader.py) and run against one student's Guest
handles, parameters and the check's rendered options (`labkit.labs.render.render_check`). It only looks: it never
sees a web request, never writes to the database, and never changes a guest.

`Check.run` owns what every kind shares: the time budget (``CheckDef.timeout`` bounds all the check's guest calls
together), picking the machine, turning a `GuestError` or other labkit error into a failed result with the reason,
choosing the feedback, and timing. A kind only implements `evaluate`, which says what it saw.
"""

from __future__ import annotations

import re
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labkit.errors import GuestError, GuestUnavailableError, LabFormatError, LabkitError
from labkit.grading.budget import Budget, BudgetedGuest
from labkit.grading.result import CheckResult, safe_text
from labkit.grading.sandbox import SCRIPT_GRACE, SandboxUnavailable, run_grader
from labkit.labs.loader import GRADER_FILE
from labkit.labs.model import CheckDef, Lab, parse_mode
from labkit.labs.render import lab_path

#: How long a port reached from the host must stay open to count: a backend's user-mode forward accepts every
#: connection on a forwarded port at once and closes it when nothing in the guest answers, so "it connected" alone
#: proves nothing.
HOST_PROBE = 1.0


@dataclass(frozen=True)
class Outcome:
    """What a kind saw: passed or not, the points it gives (None: all or nothing), why, and the evidence."""

    passed: bool
    reason: str
    evidence: str = ""
    points: float | None = None
    feedback: str | None = None  # a script's own feedback, used instead of feedback_pass/feedback_fail
    transport: str = ""
    unchecked: str | None = None  # why labkit could not look at all (see CheckResult.unchecked)


def _text(data: bytes | str) -> str:
    """Guest output as text for matching: invalid UTF-8 replaced, console line endings made plain."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return text.replace("\r\n", "\n")


def match_text(text: str, spec: Mapping[str, object], what: str) -> list[str]:
    """Why ``text`` fails the ``equals``/``contains``/``regex`` options of ``spec`` (empty: it matches).

    ``equals`` compares with trailing newlines removed on both sides (commands end their output with one);
    ``regex`` is searched (``re.search``, no flags), so anchor it with ``^``/``$`` to match the whole text.
    """
    problems = []
    if "equals" in spec and text.rstrip("\n") != str(spec["equals"]).rstrip("\n"):
        problems.append(f"{what} is not {str(spec['equals'])!r}")
    if "contains" in spec and str(spec["contains"]) not in text:
        problems.append(f"{what} does not contain {str(spec['contains'])!r}")
    if "regex" in spec:
        try:
            pattern = re.compile(str(spec["regex"]))
        except re.error as err:
            raise LabFormatError(f"bad regular expression {spec['regex']!r}: {err}") from err
        if pattern.search(text) is None:
            problems.append(f"{what} does not match /{spec['regex']}/")
    return problems


class Check(ABC):
    """One check of a lab, ready to run for any student."""

    #: whether the check runs on one machine (``CheckDef.machine``); script checks get all of them
    on_machine = True

    def __init__(self, definition: CheckDef, lab: Lab | None = None) -> None:
        self.definition = definition
        self.lab = lab

    def run(self, guests: Mapping[str, Any], params: Mapping[str, object], spec: Mapping[str, object]) -> CheckResult:
        """Grade one student. Never raises for guest trouble or a broken option: that is a failed result."""
        started = time.monotonic()
        budget = Budget(self.definition.timeout)
        transports: dict[str, None] = {}
        wrapped = {name: BudgetedGuest(guest, budget, transports) for name, guest in guests.items()}
        try:
            outcome = self._evaluate_on(wrapped, params, spec)
        except (GuestUnavailableError, SandboxUnavailable) as err:  # not the student's doing: "not checked"
            reason = f"not checked: {err}"
            outcome = Outcome(False, reason, evidence=f"error: {err}", feedback=reason, unchecked=str(err))
        except GuestError as err:  # the student's feedback says the check could not look, not that it failed
            reason = f"labkit could not check this: {err}"
            outcome = Outcome(False, reason, evidence=f"error: {err}", feedback=reason)
        except LabkitError as err:
            reason = f"this check is broken, tell your instructor: {err}"
            outcome = Outcome(False, reason, evidence=f"error: {err}", feedback=reason)
        transport = ",".join(dict.fromkeys([*filter(None, outcome.transport.split(",")), *transports]))
        return self._result(outcome, spec, transport, time.monotonic() - started)

    def _evaluate_on(self, guests: Mapping[str, BudgetedGuest], params: Mapping[str, object],
                     spec: Mapping[str, object]) -> Outcome:
        if not self.on_machine:
            return self.evaluate(None, guests, params, spec)
        machine = self.definition.machine or (next(iter(self.lab.machines)) if self.lab and
                                               len(self.lab.machines) == 1 else None)
        if machine is None:
            raise LabFormatError(f"check {self.definition.id} names no machine and the lab has several")
        if machine not in guests:
            have = ", ".join(sorted(guests)) or "none"
            return Outcome(False, f"machine {machine!r} of this check is not available (machines: {have})",
                           evidence=f"no guest handle for machine {machine!r}")
        return self.evaluate(guests[machine], guests, params, spec)

    def _result(self, outcome: Outcome, spec: Mapping[str, object], transport: str, duration: float) -> CheckResult:
        max_points = float(self.definition.points)
        points = outcome.points if outcome.points is not None else (max_points if outcome.passed else 0.0)
        written = str(spec.get("feedback_pass" if outcome.passed else "feedback_fail", "") or "")
        feedback = outcome.feedback or written or outcome.reason
        evidence = outcome.evidence if outcome.passed or not outcome.reason else f"{outcome.reason}\n{outcome.evidence}"
        return CheckResult(self.definition.id, outcome.passed, points, max_points, feedback, evidence.strip(),
                           transport, duration, unchecked=outcome.unchecked)

    @abstractmethod
    def evaluate(self, guest: BudgetedGuest | None, guests: Mapping[str, BudgetedGuest],
                 params: Mapping[str, object], spec: Mapping[str, object]) -> Outcome:
        """Look at the guest (``guest`` is the check's machine; None for checks over all ``guests``)."""


class CommandCheck(Check):
    """Runs ``command``; passes when the exit code and stdout meet ``exit_code``/``equals``/``contains``/``regex``.

    Without any expectation, the exit code must be 0.
    """

    def evaluate(self, guest: BudgetedGuest | None, guests: Mapping[str, BudgetedGuest],
                 params: Mapping[str, object], spec: Mapping[str, object]) -> Outcome:
        assert guest is not None
        command = str(spec["command"])
        result = guest.run(command)
        stdout = _text(result.stdout)
        problems = []
        wanted = spec.get("exit_code")
        if wanted is None and not {"equals", "contains", "regex"} & set(spec):
            wanted = 0
        if wanted is not None and result.exit_code != wanted:
            problems.append(f"exit code is {result.exit_code}, not {wanted}")
        problems += match_text(stdout, spec, "the output")
        evidence = (f"$ {command}\nexit code {result.exit_code}\n--- stdout\n{safe_text(result.stdout)}"
                    f"\n--- stderr\n{safe_text(result.stderr, 1024)}")
        return Outcome(not problems, "; ".join(problems), evidence)


def _names(table: bytes) -> dict[str, int]:
    """name -> id from /etc/passwd or /etc/group text."""
    ids = {}
    for line in _text(table).splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            ids.setdefault(fields[0], int(fields[2]))
    return ids


def _resolve(guest: BudgetedGuest, name: str, table: str) -> int | None:
    """The id of a user or group name inside the guest (a number stands for itself)."""
    if name.isdigit():
        return int(name)
    return _names(guest.read_file(table)).get(name)


class FileCheck(Check):
    """Looks at ``path``: ``exists`` (default true), ``contains``/``regex`` on its content, ``mode``, ``owner``.

    ``owner`` is ``user`` or ``user:group`` (names are looked up in the guest's /etc/passwd and /etc/group, numbers
    are ids); ``mode`` compares the permission bits including setuid/setgid/sticky.
    """

    def evaluate(self, guest: BudgetedGuest | None, guests: Mapping[str, BudgetedGuest],
                 params: Mapping[str, object], spec: Mapping[str, object]) -> Outcome:
        assert guest is not None
        path = str(spec["path"])
        present = guest.exists(path)
        if spec.get("exists", True) is False:
            return Outcome(not present, f"{path} exists but should not" if present else "", f"{path} exists: {present}")
        if not present:
            return Outcome(False, f"{path} does not exist", f"{path} exists: False")
        problems: list[str] = []
        evidence = [f"{path} exists"]
        if "mode" in spec or "owner" in spec:
            info = guest.stat(path)
            evidence.append(f"kind {info.kind}, mode {info.mode:04o}, uid {info.uid}, gid {info.gid}")
            if "mode" in spec:
                mode = parse_mode(spec["mode"])  # type: ignore[arg-type]
                if mode is None:
                    raise LabFormatError(f"mode {spec['mode']!r} is not an octal file mode")
                if info.mode != mode:
                    problems.append(f"mode of {path} is {info.mode:04o}, not {mode:04o}")
            if "owner" in spec:
                problems += self._owner_problems(guest, path, str(spec["owner"]), info.uid, info.gid)
        if {"contains", "regex"} & set(spec):
            data = guest.read_file(path)
            evidence.append(f"--- content\n{safe_text(data)}")
            problems += match_text(_text(data), spec, f"the content of {path}")
        return Outcome(not problems, "; ".join(problems), "\n".join(evidence))

    @staticmethod
    def _owner_problems(guest: BudgetedGuest, path: str, owner: str, uid: int, gid: int) -> list[str]:
        user, _sep, group = owner.partition(":")
        problems = []
        want_uid = _resolve(guest, user, "/etc/passwd")
        if want_uid is None:
            problems.append(f"there is no user {user!r}, so it cannot own {path}")
        elif want_uid != uid:
            problems.append(f"{path} is owned by user id {uid}, not {user} ({want_uid})")
        if group:
            want_gid = _resolve(guest, group, "/etc/group")
            if want_gid is None:
                problems.append(f"there is no group {group!r}, so it cannot own {path}")
            elif want_gid != gid:
                problems.append(f"the group of {path} is id {gid}, not {group} ({want_gid})")
        return problems


def probe_host_port(port: int, timeout: float) -> tuple[bool, str]:
    """Whether something answers on 127.0.0.1:``port`` and stays connected for `HOST_PROBE` seconds (or sends)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=min(timeout, 5.0)) as sock:
            sock.settimeout(min(HOST_PROBE, timeout))
            try:
                data = sock.recv(1)
            except TimeoutError:
                return True, f"127.0.0.1:{port} accepted and stayed open"
            except OSError as err:
                return False, f"127.0.0.1:{port} accepted, then failed: {err}"
            if data:
                return True, f"127.0.0.1:{port} accepted and sent data"
            return False, f"127.0.0.1:{port} accepted, then closed at once (nothing listens behind the forward)"
    except OSError as err:
        return False, f"cannot connect to 127.0.0.1:{port}: {err}"


def _require_running(guest: BudgetedGuest, why: str) -> None:
    """A stopped machine has no forwards: say it cannot be checked, not that the port is closed."""
    if not guest.running:
        raise GuestUnavailableError(f"machine {guest.name} is stopped: it must run {why}")


def _forwarded(guest: BudgetedGuest, port: int) -> int | None:
    return guest.forwards.get(port)


class PortCheck(Check):
    """Whether TCP ``port`` is open (``open``, default true): listening inside the guest (``via = "guest"``) or
    reachable from the host through the machine's forward (``via = "host"``)."""

    def evaluate(self, guest: BudgetedGuest | None, guests: Mapping[str, BudgetedGuest],
                 params: Mapping[str, object], spec: Mapping[str, object]) -> Outcome:
        assert guest is not None
        port = int(spec["port"])  # type: ignore[call-overload]
        want_open = spec.get("open", True) is not False
        if spec.get("via", "guest") == "host":
            _require_running(guest, f"to reach its port {port} from the host")
            host_port = _forwarded(guest, port)
            if host_port is None:
                return Outcome(False, f"port {port} of {guest.name} is not forwarded to the host",
                               f"forwards: {dict(guest.forwards)}", transport="host")
            is_open, evidence = probe_host_port(host_port, self.definition.timeout)
            where, transport = "reachable from the host", "host"
        else:
            is_open = guest.port_open(port)
            evidence, where, transport = f"port {port} listening in {guest.name}: {is_open}", "listening", ""
        passed = is_open == want_open
        reason = "" if passed else f"port {port} is {'not ' if want_open else ''}{where}"
        return Outcome(passed, reason, evidence, transport=transport)


class HttpCheck(Check):
    """GET ``path`` (default "/") from ``port``; passes on ``status`` (default 200) and the body options.

    ``via = "host"`` fetches through the machine's forward (what a visitor sees); ``via = "guest"`` (the default)
    fetches inside the guest, even when the port is also forwarded.
    """

    def evaluate(self, guest: BudgetedGuest | None, guests: Mapping[str, BudgetedGuest],
                 params: Mapping[str, object], spec: Mapping[str, object]) -> Outcome:
        assert guest is not None
        port = int(spec["port"])  # type: ignore[call-overload]
        path = str(spec.get("path", "/")) or "/"
        transport = None
        if spec.get("via", "guest") == "host":
            _require_running(guest, f"to answer HTTP on port {port}")
            if _forwarded(guest, port) is None:
                return Outcome(False, f"port {port} of {guest.name} is not forwarded to the host",
                               f"forwards: {dict(guest.forwards)}")
        elif _forwarded(guest, port) is not None:
            # the Guest fetches a forwarded port from the host; force a transport into the guest instead
            transport = guest.inside_transport
        status, body = guest.http_get(port, path, transport=transport)
        wanted = int(spec.get("status", 200))  # type: ignore[call-overload]
        problems = [f"status is {status}, not {wanted}"] if status != wanted else []
        problems += match_text(_text(body), spec, "the page")
        evidence = f"GET {path} on port {port}: status {status}\n--- body\n{safe_text(body)}"
        return Outcome(not problems, "; ".join(problems), evidence)


# ---- script checks ---------------------------------------------------------------------------------------------


class ScriptCheck(Check):
    """Calls ``function(guests, params)`` from the lab's grader.py; it returns ``(points, feedback)``.

    Points between 0 and the check's points give partial credit (outside that range they are clamped); the check
    passes with full marks. The function runs in a sandbox (labkit.grading.sandbox) with a time and a memory limit,
    and gets every machine's Guest handle through labkit (each call bounded by the check's timeout).
    """

    on_machine = False

    def evaluate(self, guest: BudgetedGuest | None, guests: Mapping[str, BudgetedGuest],
                 params: Mapping[str, object], spec: Mapping[str, object]) -> Outcome:
        name = str(spec["function"])
        if self.lab is None or self.lab.folder is None:
            raise LabFormatError(f"script check {self.definition.id} needs its lab's folder to find grader.py")
        root = self.lab.folder.resolve()
        path, why = lab_path(root, GRADER_FILE)
        if path is None:
            raise LabFormatError(why or "bad path", str(self.lab.folder / GRADER_FILE))
        if not path.is_file():
            raise LabFormatError(f"no grader.py at {self.lab.folder / GRADER_FILE}")
        answer = run_grader(root, path.relative_to(root).as_posix(), name, guests, params,
                            self.definition.timeout + SCRIPT_GRACE)
        max_points = float(self.definition.points)
        points = min(max(answer.points, 0.0), max_points)
        return Outcome(points >= max_points, "", f"{name} returned {points:g} of {max_points:g}: {answer.feedback}",
                       points=points, feedback=answer.feedback)


#: The check kinds that need a running machine: a frozen or stopped disk cannot answer them the way the student's
#: running machine did (added addresses, routes and started services are gone after a reboot).
NEEDS_RUNNING = frozenset({"command", "port", "http"})

#: The check kinds by the name used in ``kind = ...``; the option names are those of labkit.labs.schema.CHECK_KINDS.
CHECK_KINDS: dict[str, type[Check]] = {
    "command": CommandCheck,
    "file": FileCheck,
    "port": PortCheck,
    "http": HttpCheck,
    "script": ScriptCheck,
}


def make_check(definition: CheckDef, lab: Lab | None = None) -> Check:
    """The `Check` for ``definition``."""
    try:
        kind = CHECK_KINDS[definition.kind]
    except KeyError as err:
        raise LabFormatError(f"check {definition.id} has unknown kind {definition.kind!r}") from err
    return kind(definition, lab)
