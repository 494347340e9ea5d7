"""The one table of live states and transitions: what the machine service, the web pages and the API all ask."""

from __future__ import annotations

from labkit.runtime.base import State
from labkit.services.machine_states import ACCEPTS, AT_REST, LIVE, accepts, is_live


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
