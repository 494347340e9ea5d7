"""A student's clock: the window's close and the allowance both bound it, extra minutes push both back."""

from __future__ import annotations

import datetime as dt

from labkit.services.lab_time import Clock

T0 = dt.datetime(2026, 12, 8, 9, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)


def clock(**kw: object) -> Clock:
    values: dict[str, object] = {"opens_at": None, "closes_at": None, "allowance": None, "began_at": None,
                                 "extra": dt.timedelta(0)}
    values.update(kw)
    return Clock(**values)  # type: ignore[arg-type]


def test_no_bounds_means_no_deadline() -> None:
    c = clock(began_at=T0)
    assert not c.limited and c.deadline() is None and c.remaining(T0) is None and not c.over(T0 + 1000 * MIN)


def test_allowance_runs_from_the_first_start_only() -> None:
    c = clock(allowance=90 * MIN)
    assert c.limited and c.deadline() is None  # not started: the allowance has not begun
    started = clock(allowance=90 * MIN, began_at=T0)
    assert started.deadline() == T0 + 90 * MIN
    assert started.remaining(T0 + 30 * MIN) == 60 * MIN
    assert started.remaining(T0 + 200 * MIN) == dt.timedelta(0) and started.over(T0 + 90 * MIN)


def test_the_earlier_end_wins_and_extra_time_pushes_both() -> None:
    c = clock(closes_at=T0 + 60 * MIN, allowance=90 * MIN, began_at=T0)
    assert c.deadline() == T0 + 60 * MIN
    extra = clock(closes_at=T0 + 60 * MIN, allowance=90 * MIN, began_at=T0, extra=15 * MIN)
    assert extra.deadline() == T0 + 75 * MIN
    late = clock(closes_at=T0 + 60 * MIN, allowance=30 * MIN, began_at=T0 + 20 * MIN, extra=5 * MIN)
    assert late.deadline() == T0 + 55 * MIN


def test_window_not_yet_open_and_time_used() -> None:
    c = clock(opens_at=T0, began_at=T0 + MIN)
    assert c.not_yet_open(T0 - MIN) and not c.not_yet_open(T0)
    assert c.used(T0 + 11 * MIN) == 10 * MIN and clock().used(T0) is None
