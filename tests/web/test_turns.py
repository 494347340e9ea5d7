"""Page requests take turns (web/turns.py): at most ``limit`` at once, the others in arrival order; WebSockets skip."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from web.turns import Turns, taking_turns


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("limit", [1, 2])
def test_waiters_get_their_turn_in_arrival_order_and_never_more_than_the_limit(limit: int) -> None:
    """What `Turns` promises: a freed turn goes to the oldest waiter, and never more than ``limit`` hold one.

    It does not promise in which order threads let in together run their first line, so the test frees one turn at
    a time (each visitor leaves only when told) and looks at who came in after each.
    """
    turns = Turns(limit)
    inside: list[str] = []
    most = 0
    lock = threading.Lock()
    leave = {name: threading.Event() for name in [f"h{i}" for i in range(limit)] + [f"w{i}" for i in range(6)]}

    def visit(name: str) -> None:
        nonlocal most
        with turns.turn():
            with lock:
                inside.append(name)
                most = max(most, len(inside))
            assert leave[name].wait(10)
            with lock:
                inside.remove(name)

    threads = [threading.Thread(target=visit, args=(f"h{i}",)) for i in range(limit)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(inside) == limit)
    for i in range(6):  # one at a time, so their arrival order is known
        threads.append(threading.Thread(target=visit, args=(f"w{i}",)))
        threads[-1].start()
        wait_until(lambda n=i: len(turns._waiting) == n + 1)
    assert sorted(inside) == [f"h{i}" for i in range(limit)]  # every turn is taken: everyone else waits
    for i in range(6):
        with lock:
            oldest = inside[0]
        leave[oldest].set()  # frees exactly one turn: the oldest waiter, and only it, gets it
        wait_until(lambda n=i, gone=oldest: f"w{n}" in inside and gone not in inside)
        with lock:
            assert len(inside) == limit and not any(f"w{later}" in inside for later in range(i + 1, 6))
        assert len(turns._waiting) == 5 - i
    for event in leave.values():
        event.set()
    for thread in threads:
        thread.join(10)
    assert most == limit
    assert turns._holders == 0 and not turns._waiting


def test_a_failing_request_hands_its_turn_on() -> None:
    turns = Turns(1)
    with pytest.raises(RuntimeError), turns.turn():
        raise RuntimeError("the view failed")
    with turns.turn():  # would block for ever if the failure had kept the turn
        pass


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Turns(0)


def test_websocket_upgrades_do_not_wait_for_a_turn() -> None:
    release = threading.Event()
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        if environ["PATH_INFO"] == "/slow":
            release.wait(5)
        return [b"ok"]

    gated = taking_turns(app, 1)
    slow = threading.Thread(target=gated, args=({"PATH_INFO": "/slow"}, None))
    slow.start()
    wait_until(lambda: calls == ["/slow"])
    page = threading.Thread(target=gated, args=({"PATH_INFO": "/page"}, None))
    page.start()
    # the page waits behind the slow request; the console's WebSocket goes straight in
    assert gated({"PATH_INFO": "/ws/console/m", "HTTP_UPGRADE": "WebSocket"}, None) == [b"ok"]
    assert calls == ["/slow", "/ws/console/m"]
    release.set()
    slow.join(5)
    page.join(5)
    assert calls == ["/slow", "/ws/console/m", "/page"]
