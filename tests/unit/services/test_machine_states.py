"""The one table of live states and transitions: what the machine service, the web pages and the API all ask."""

from __future__ import annotations

from labkit.runtime.base import State
from labkit.services.machine_states import (
    ACCEPTS,
    AT_REST,
    DISK,
    LIVE,
    RUNNING_STATE,
    accepts,
    is_live,
    snapshot_kind,
)


def test_every_state_is_live_or_at_rest_and_the_disk_is_replaced_only_at_rest() -> None:
    assert set(LIVE) | set(AT_REST) == set(State) and not set(LIVE) & set(AT_REST)
    for action in ("reset", "restore", "remove", "start"):
        assert set(ACCEPTS[action]) == set(AT_REST), action
    assert set(ACCEPTS["console"]) == set(LIVE)
    # a machine between states cannot be copied; one that is stopping cannot be asked to stop again
    assert not accepts("snapshot", "starting") and not accepts("snapshot", State.STOPPING)
    assert not accepts("stop", "stopping") and accepts("kill", "error")


def test_records_and_views_are_asked_by_their_string_values() -> None:
    assert [s.value for s in State if is_live(s.value)] == [s.value for s in State if s in LIVE]
    assert not is_live("no-such-state") and not accepts("stop", "no-such-state")


def test_a_running_state_is_kept_only_of_a_running_or_paused_machine_on_a_backend_that_can() -> None:
    kept = {state for state in State if snapshot_kind(True, state) == RUNNING_STATE}
    assert kept == {State.RUNNING, State.PAUSED}
    assert all(snapshot_kind(False, state) == DISK for state in State)  # UML: disk snapshots only
    assert kept <= set(ACCEPTS["snapshot"])  # every state a running state is kept in is one a snapshot is taken in
