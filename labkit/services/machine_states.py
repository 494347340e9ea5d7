"""The one table of a machine's live states and of which states each action accepts.

The machine service refuses an action in any other state with a `StateError` naming the state; the web pages and the
API ask the same table before they queue a job, so a refusal reads the same wherever it comes from.
"""

from __future__ import annotations

from labkit.runtime.base import State

#: States in which a machine's processes exist: its disk is in use (no reset, restore, removal or new seed), and
#: its console can be reached.
LIVE: tuple[State, ...] = (State.RUNNING, State.PAUSED, State.STARTING, State.STOPPING)
#: The states not in `LIVE`: nothing runs.
AT_REST: tuple[State, ...] = tuple(state for state in State if state not in LIVE)

#: action -> the real states (the backend's, just read) in which the machine service does it
ACCEPTS: dict[str, tuple[State, ...]] = {
    "start": AT_REST,
    "stop": (State.RUNNING, State.PAUSED, State.STARTING),
    "kill": (*LIVE, State.ERROR),
    "pause": (State.RUNNING,),
    "resume": (State.PAUSED,),
    # a running machine is synced and paused for the copy; a paused or resting one is copied as it is
    "snapshot": tuple(state for state in State if state not in (State.STARTING, State.STOPPING)),
    "reset": AT_REST,
    "restore": AT_REST,
    "remove": AT_REST,
    "console": LIVE,
}


#: Snapshot kinds (``Snapshot.kind``): the disk only, or the disk with the running machine's memory and devices
DISK = "disk"
RUNNING_STATE = "running state"
#: States in which a machine has a running state to keep (on a backend with running-state snapshots)
RAM_STATES: tuple[State, ...] = (State.RUNNING, State.PAUSED)


def snapshot_kind(ram_snapshots: bool, state: State) -> str:
    """The kind of snapshot the machine service takes of a machine in ``state`` on a backend that does (or not)
    keep running states."""
    return RUNNING_STATE if ram_snapshots and state in RAM_STATES else DISK


def is_live(state: str | State) -> bool:
    """Whether a machine in ``state`` (a `State` or its value, as records and views hold it) has running processes."""
    return str(state) in {s.value for s in LIVE}


def accepts(action: str, state: str | State) -> bool:
    """Whether the machine service does ``action`` on a machine in ``state``."""
    return str(state) in {s.value for s in ACCEPTS[action]}
