"""A stateful property-based test of the services layer (the one the CLI and the web app call), on real tiny guests.

Hypothesis plays random but repeatable sequences of what instructors and students do to one small course (create,
roster, provision, start, stop, write work, snapshot, restore, reset, submit, grade, session begin/end, course rm)
and checks after every step:

- every error a service raises is a `LabkitError` (anything else fails the test: it would be a traceback or a 500);
- the database and the process table agree once a status has reconciled them, and nothing runs that labkit does not
  account for (found by scanning /proc for processes whose cwd or command line is inside the test's home);
- no overlay holding work disappears or is replaced without a reset, restore or remove event with actor and time;
- submissions and snapshots the database lists still have their files;
- and, at the end of every sequence, nothing labkit started is left running.

Each rule makes one or two service calls and is kept small, so it follows the services when they change. The memory
budget lets at most three 64 MB machines run at once. Shrinking is off: a failing sequence is reported as found
(enable ``Phase.shrink`` locally to minimise one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import LABS, make_settings, make_short_dir
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from labkit.errors import LabkitError
from labkit.images.recipe import find_recipe
from labkit.images.store import ImageStore
from labkit.overlays import get_overlay
from labkit.runtime.process import ProcessRecord, process_state
from labkit.services.courses import Courses
from labkit.services.db import Database
from labkit.services.grading import Grading
from labkit.services.models import Event, Machine, Snapshot, Submission
from labkit.services.submissions import Submissions

pytestmark = pytest.mark.guest

COURSE = "sm"
STUDENTS = ("alice", "bob", "carol")
LAB_IDS = ("intro-shell", "two-hosts")
LAB_SETS = {"intro-shell": [LABS / "intro-shell"], "both": [LABS / "intro-shell", LABS / "two-hosts"]}
LAB_MACHINES = {"intro-shell": 1, "two-hosts": 2}  # machines in each lab.toml
#: three 64 MB machines at once: enough for a two-machine lab beside another student's machine, never more
BUDGET_MB = 192
ACTOR = "teacher"
#: seconds a process of a machine that has just ended may take to exit (slirp, vde_plug see their peer go)
STRAY_GRACE = 3.0


def _roster(*sids: str) -> bytes:
    return ("id,name,email\n" + "".join(f"{sid},{sid.title()},{sid}@example.org\n" for sid in sids)).encode()


VALID_ROSTERS = {
    "alice-bob": _roster("alice", "bob"),
    "all": _roster(*STUDENTS),
    "bob": _roster("bob"),
    "alice-carol": _roster("alice", "carol"),
}
BROKEN_ROSTERS = {
    "path-id": _roster("alice") + b"../etc,Evil,e@example.org\n",
    "duplicate": _roster("alice", "alice"),
    "two-columns": b"id,name\nalice,Alice\n",
    "not-utf8": b"id,name,email\nb\xf6b,B,b@example.org\n",
    "header-only": b"id,name,email\n",
    "empty": b"",
    "huge-field": b"id,name,email\nalice," + b"A" * (200 * 1024) + b",a@example.org\n",
    "unclosed-quote": b'id,name,email\nalice,"Alice,a@example.org\n',
}
#: events that may take an overlay's content away (each names the machine as its target)
DROPPING = {"reset", "restore", "remove"}
#: successful calls per rule and errors per (rule, class), across the whole run: the test's own sanity check
SUCCEEDED: Counter[str] = Counter()
REFUSED: Counter[tuple[str, str]] = Counter()
SECONDS: Counter[str] = Counter()


def processes_under(home: Path) -> dict[int, tuple[str, str]]:
    """Live processes whose cwd or command line is inside ``home``: pid -> (cwd, command line)."""
    found = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        inside = cwd == str(home) or cwd.startswith(f"{home}/") or str(home) in cmdline
        if inside and process_state(int(entry.name)) not in (None, "Z", "X"):
            found[int(entry.name)] = (cwd, cmdline)
    return found


def owner(run_dir: Path, cwd: str, cmdline: str) -> tuple[str, str]:
    """("machine", name) or ("net", network folder) for a labkit process; ("unknown", cmdline) otherwise."""
    for word in cmdline.split():
        if word.startswith("umid="):
            return "machine", word.removeprefix("umid=")
    try:
        parts = Path(cwd).relative_to(run_dir).parts
    except ValueError:
        return "unknown", cmdline
    if len(parts) >= 2 and parts[0] == "net":
        return "net", str(run_dir / "net" / parts[1])
    if len(parts) >= 1 and parts[0] != "net":
        return "machine", parts[0]
    return "unknown", cmdline


class ServicesMachine(RuleBasedStateMachine):
    """One course, 2-3 students, the intro-shell lab (and two-hosts with its lab network) on the tiny image."""

    snapshots = Bundle("snapshots")

    def __init__(self) -> None:
        super().__init__()
        self.root = make_short_dir("lksm")
        self.settings = make_settings(self.root / "h")
        ImageStore(self.settings).build(find_recipe(self.settings.recipes, "tiny"))
        self.db = Database(self.settings)
        self.courses = Courses(self.settings, self.db, actor=ACTOR)
        self.machines = self.courses.machines
        self.grading = Grading(self.settings, self.db, actor=ACTOR)
        self.submissions = Submissions(self.settings, self.db, actor=ACTOR)
        self.course_exists = False
        self.session_open = False
        self.overlays: dict[str, tuple[int, int]] = {}
        self.last_event = 0
        self.steps = 0
        self.errors: list[str] = []
        #: every machine process (linux, supervisor) labkit reported, with its start time: none may outlive the test
        self.recorded: set[ProcessRecord] = set()

    # ---- calling services --------------------------------------------------------------------------------------
    def call(self, rule: str, action: Any, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Run one service call: (True, result), or (False, error) for a `LabkitError`; anything else propagates
        and fails the test."""
        self.steps += 1
        began = time.monotonic()
        try:
            result = action(*args, **kwargs)
        except LabkitError as err:
            assert str(err).strip(), f"{rule}: {type(err).__name__} without a message"
            REFUSED[(rule, type(err).__name__)] += 1
            self.errors.append(f"{rule}: {type(err).__name__}: {str(err)[:500]}")
            return False, err
        finally:
            SECONDS[rule] += time.monotonic() - began
        SUCCEEDED[rule] += 1
        return True, result

    def names(self, student: str | None, lab: str | None) -> list[str]:
        """The machines a class-wide action on (student, lab) applies to (none when nothing is provisioned)."""
        ok, targets = self.call("targets", self.courses.targets, COURSE, student=student, lab=lab)
        return [t.name for t in targets] if ok else []

    def states(self, names: list[str]) -> set[str]:
        return {view.state for view in self.machines.status(names=names)}

    # ---- rules: the course -------------------------------------------------------------------------------------
    @initialize(labs=st.sampled_from(sorted(LAB_SETS)), roster=st.sampled_from(sorted(VALID_ROSTERS)))
    def provisioned_course(self, labs: str, roster: str) -> None:
        """Most sequences start from a provisioned class, so that they reach the machines in a few steps."""
        self.create(labs, 2)
        self.roster(roster, False)
        self.provision()

    @precondition(lambda self: not self.course_exists)
    @rule(labs=st.sampled_from(sorted(LAB_SETS)), max_running=st.sampled_from([2, 1]))
    def create(self, labs: str, max_running: int) -> None:
        ok, err = self.call("create", self.courses.create, COURSE, LAB_SETS[labs], memory_budget_mb=BUDGET_MB,
                            max_running_per_student=max_running)
        # a limit below the biggest lab's machine count (two-hosts has 2) is refused, and nothing is made
        assert ok == (max_running >= max(LAB_MACHINES[lab.name] for lab in LAB_SETS[labs])), err
        self.course_exists = ok

    @rule(how=st.sampled_from(["duplicate", "missing-lab", "bad-name", "no-lab", "same-lab-twice"]))
    def create_refused(self, how: str) -> None:
        name, labs = {"duplicate": (COURSE, LAB_SETS["intro-shell"]),
                      "missing-lab": ("sm2", [self.root / "no-such-lab"]),
                      "bad-name": ("../sm", LAB_SETS["intro-shell"]),
                      "no-lab": ("sm2", []),
                      "same-lab-twice": ("sm2", LAB_SETS["intro-shell"] * 2)}[how]
        ok, _ = self.call("create_refused", self.courses.create, name, labs)
        assert not ok or (how == "duplicate" and not self.course_exists), f"create ({how}) was accepted"
        if ok:
            self.course_exists = True

    @precondition(lambda self: self.course_exists and self.steps >= 8)  # late: what comes before has machines
    @rule(purge=st.booleans())
    def remove(self, purge: bool) -> None:
        had_machines = bool(self.names(None, None))
        ok, err = self.call("remove", self.courses.remove, COURSE, purge=purge)
        assert ok == (purge or not had_machines), f"course rm (purge={purge}, machines={had_machines}): {err}"
        if ok:
            self.course_exists = self.session_open = False

    @precondition(lambda self: self.course_exists)
    @rule(roster=st.sampled_from(sorted(VALID_ROSTERS) + sorted(BROKEN_ROSTERS)), purge=st.booleans())
    def roster(self, roster: str, purge: bool) -> None:
        path = self.root / "roster.csv"
        path.write_bytes(VALID_ROSTERS.get(roster) or BROKEN_ROSTERS[roster])
        ok, err = self.call("roster", self.courses.import_roster, COURSE, path, purge=purge)
        assert ok == (roster in VALID_ROSTERS), f"roster {roster}: {err}"

    @precondition(lambda self: self.course_exists)
    @rule()
    def provision(self) -> None:
        ok, err = self.call("provision", self.courses.provision, COURSE)
        assert ok, err

    # ---- rules: running ----------------------------------------------------------------------------------------
    @precondition(lambda self: self.course_exists)
    @rule(student=st.sampled_from((*STUDENTS, None)), lab=st.sampled_from((*LAB_IDS, None)))
    def start(self, student: str | None, lab: str | None) -> None:
        ok, _ = self.call("start", self.courses.start, COURSE, student=student, lab=lab)
        if ok:
            assert self.states(self.names(student, lab)) == {"running"}

    @precondition(lambda self: self.course_exists)
    @rule(student=st.sampled_from((*STUDENTS, None)), lab=st.sampled_from((*LAB_IDS, None)))
    def stop(self, student: str | None, lab: str | None) -> None:
        ok, _ = self.call("stop", self.courses.stop, COURSE, student=student, lab=lab)
        if ok:
            assert self.states(self.names(student, lab)) == {"stopped"}

    @precondition(lambda self: self.course_exists)
    @rule(student=st.sampled_from(STUDENTS), lab=st.sampled_from(LAB_IDS))
    def work(self, student: str, lab: str) -> None:
        """A student writes a file on their first machine of ``lab``, if it runs."""
        for name in self.names(student, lab)[:1]:
            ok, guest = self.call("open_guest", self.machines.open_guest, name)
            if ok and self.states([name]) == {"running"}:
                with guest:
                    assert guest.run(f"echo {student} > /root/work.txt && sync", timeout=30).ok

    # ---- rules: the overlay ------------------------------------------------------------------------------------
    @precondition(lambda self: self.course_exists)
    @rule(target=snapshots, student=st.sampled_from(STUDENTS), lab=st.sampled_from(LAB_IDS),
          tag=st.sampled_from(["s1", "s2"]))
    def snapshot(self, student: str, lab: str, tag: str) -> Any:
        for name in self.names(student, lab)[:1]:
            ok, _ = self.call("snapshot", self.machines.snapshot, name, tag)
            if ok:
                return (name, tag)
        return multiple()

    @rule(snap=snapshots)
    def restore(self, snap: tuple[str, str]) -> None:
        self.call("restore", self.machines.restore, *snap)

    @precondition(lambda self: self.course_exists)
    @rule(student=st.sampled_from((*STUDENTS, None)), lab=st.sampled_from((*LAB_IDS, None)))
    def reset(self, student: str | None, lab: str | None) -> None:
        ok, _ = self.call("reset", self.courses.reset, COURSE, student=student, lab=lab)
        if ok:
            assert {view.overlay_bytes for view in self.machines.status(names=self.names(student, lab))} == {0}

    # ---- rules: submissions and grades -------------------------------------------------------------------------
    @precondition(lambda self: self.course_exists)
    @rule(student=st.sampled_from(STUDENTS), lab=st.sampled_from((*LAB_IDS, None)))
    def submit(self, student: str, lab: str | None) -> None:
        self.call("submit", self.submissions.submit, COURSE, student, lab)

    @precondition(lambda self: self.course_exists)
    @rule(student=st.sampled_from((*STUDENTS, None)), lab=st.sampled_from((*LAB_IDS, None)),
          submissions=st.booleans())
    def grade(self, student: str | None, lab: str | None, submissions: bool) -> None:
        if submissions and student is None:
            student = "alice"  # every submission boots throwaway copies: one student's at a time
        self.call("grade", self.grading.grade, COURSE, lab=lab, student=student, submissions=submissions)
        if student is not None and not submissions:
            self.call("self_check", self.grading.self_check, COURSE, student, lab)
        self.call("gradebook", self.grading.gradebook, COURSE, detail=True)

    # ---- rules: sessions ---------------------------------------------------------------------------------------
    @precondition(lambda self: self.course_exists)
    @rule()
    def session_begin(self) -> None:
        ok, _ = self.call("session_begin", self.courses.session_begin, COURSE)
        assert ok != self.session_open, "a second session began" if ok else "no session could begin"
        self.session_open = True

    @precondition(lambda self: self.course_exists and self.session_open)
    @rule()
    def session_end(self) -> None:
        ok, err = self.call("session_end", self.courses.session_end, COURSE)
        assert ok, err
        self.session_open = False
        assert self.states(self.names(None, None)) <= {"stopped"}

    # ---- invariants --------------------------------------------------------------------------------------------
    @invariant()
    def database_and_processes_agree(self) -> None:
        views = {view.name: view for view in self.machines.status()}  # the services' own reconcile
        if self.course_exists:
            ok, rows = self.call("course_status", self.courses.status, COURSE)
            assert ok and all(row["state"] == views[str(row["name"])].state for row in rows), rows
        with self.db.read() as session:
            recorded = {m.name: (m.state, m.pid, [net for _, net in m.networks])
                        for m in session.scalars(select(Machine))}
        assert set(recorded) == set(views)
        for name, view in views.items():
            assert view.state in ("running", "stopped"), f"{name} is {view.state} between two steps"
            assert recorded[name][:2] == (view.state, view.pid), f"{name}: record {recorded[name]} vs {view}"
        live = {name for name, view in views.items() if view.state == "running"}
        networks = {net for name in live for net in recorded[name][2]}
        run_dir = self.settings.run_dir

        def strays() -> dict[int, tuple[tuple[str, str], str]]:
            found = {}
            for pid, (cwd, cmdline) in processes_under(self.settings.home).items():
                kind, what = owner(run_dir, cwd, cmdline)
                if not ((kind == "machine" and what in live) or (kind == "net" and what in networks)):
                    found[pid] = ((kind, what), cmdline[:200])
            return found

        left = strays()
        deadline = time.monotonic() + STRAY_GRACE
        while left and time.monotonic() < deadline:  # a helper of a machine that just ended may still be exiting
            time.sleep(0.1)
            left = strays()
        assert not left, f"processes run that labkit does not account for (running: {sorted(live)}): {left}; " \
                         f"last errors: {self.errors[-3:]}"
        owners: dict[tuple[str, str], list[int]] = {}
        for pid, (cwd, cmdline) in processes_under(self.settings.home).items():
            owners.setdefault(owner(run_dir, cwd, cmdline), []).append(pid)
        for name in live:
            assert views[name].pid in owners.get(("machine", name), []), f"{name}: pid {views[name].pid} is not up"
            for pid in (views[name].pid, views[name].supervisor_pid):
                with contextlib.suppress(ProcessLookupError):
                    self.recorded.add(ProcessRecord.of(pid or 0))

    @invariant()
    def no_work_lost_without_an_event(self) -> None:
        overlay = get_overlay("umlcow")
        now = {str(path): (path.stat().st_ino, overlay.info(path).allocated_bytes)
               for path in self.settings.overlays.glob("*.cow")}
        with self.db.read() as session:
            events = session.scalars(select(Event).where(Event.id > self.last_event))
            dropped = {e.target for e in events if e.action in DROPPING and e.actor and e.at is not None}
            latest = session.scalar(select(func.max(Event.id))) or 0
        for path, (inode, allocated) in self.overlays.items():
            if allocated and now.get(path, (None,))[0] != inode:
                assert Path(path).stem in dropped, f"{path} ({allocated} bytes of work) went without an event"
        self.overlays, self.last_event = now, latest

    @invariant()
    def kept_copies_exist(self) -> None:
        with self.db.read() as session:
            snapshots = [s.path for s in session.scalars(select(Snapshot))]
            frozen = [str(d["overlay"]) for s in session.scalars(select(Submission)) for d in s.disks.values()]
        missing = [p for p in snapshots + frozen if not Path(p).is_file()]
        assert not missing, f"recorded snapshots or submissions without their files: {missing}"

    def teardown(self) -> None:
        """Stop whatever runs through the services, then make sure nothing of this home is left (killed by PID)."""
        try:
            for view in self.machines.status():
                if view.state != "stopped":
                    self.machines.kill(view.name)
            left = processes_under(self.settings.home)
            left.update({r.pid: ("recorded by labkit", "") for r in self.recorded if r.alive()})
        finally:
            for pid in processes_under(self.settings.home):
                os.kill(pid, signal.SIGKILL)
            for record in self.recorded:
                record.send(signal.SIGKILL)
            self.db.close()
            shutil.rmtree(self.root, ignore_errors=True)
        assert not left, f"left running after the services stopped everything: {left}"


SETTINGS = settings(max_examples=25, stateful_step_count=30, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_random_sequences_of_service_calls_keep_the_invariants() -> None:
    SUCCEEDED.clear()
    REFUSED.clear()
    SECONDS.clear()
    run_state_machine_as_test(ServicesMachine, settings=SETTINGS)
    print(dict(SUCCEEDED), dict(REFUSED), {rule: round(s) for rule, s in SECONDS.most_common()})
    # The sequences did real things (machines ran), and were refused things too.
    assert SUCCEEDED["start"] and SUCCEEDED["stop"] and REFUSED


def test_one_scripted_sequence_through_every_rule() -> None:
    """Every rule's successful path once, in an order that makes each one succeed, with the invariants after each
    step: the random sequences above may or may not reach some of them."""
    SUCCEEDED.clear()
    machine = ServicesMachine()
    steps: list[tuple[str, tuple[Any, ...]]] = [
        ("provisioned_course", ("both", "alice-bob")), ("start", ("alice", "intro-shell")),
        ("work", ("alice", "intro-shell")), ("snapshot", ("alice", "intro-shell", "s1")),
        ("submit", ("alice", "intro-shell")), ("grade", ("alice", "intro-shell", False)),
        ("grade", ("alice", "intro-shell", True)), ("stop", ("alice", None)), ("restore", (("", "s1"),)),
        ("session_begin", ()), ("start", ("bob", "two-hosts")), ("submit", ("bob", "two-hosts")),
        ("grade", ("bob", "two-hosts", True)), ("session_end", ()),
        ("roster", ("bob", True)), ("reset", (None, "intro-shell")), ("roster", ("huge-field", False)),
        ("create_refused", ("duplicate",)), ("remove", (False,)), ("remove", (True,)), ("create", ("intro-shell", 1)),
    ]
    try:
        for name, args in steps:
            if name == "restore":
                args = ((machine.names("alice", "intro-shell")[0], "s1"),)
            if name == "remove":
                machine.steps = max(machine.steps, 8)
            getattr(machine, name)(*args)
            machine.database_and_processes_agree()
            machine.no_work_lost_without_an_event()
            machine.kept_copies_exist()
    finally:
        machine.teardown()
    assert {rule: SUCCEEDED[rule] for rule in ("start", "snapshot", "submit", "grade", "stop", "restore",
                                               "session_end", "reset", "roster", "remove", "create")} == \
        {"start": 2, "snapshot": 1, "submit": 2, "grade": 3, "stop": 1, "restore": 1, "session_end": 1, "reset": 1,
         "roster": 2, "remove": 1, "create": 2}
