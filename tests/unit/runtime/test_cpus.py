"""One CPU per UML machine, in turn (labkit.runtime.cpus)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from labkit.runtime.cpus import next_cpu, pinning_wanted

ALLOWED = sorted(os.sched_getaffinity(0))
several = pytest.mark.skipif(len(ALLOWED) < 2, reason="this process may use only one CPU")


@several
def test_machines_take_the_allowed_cpus_in_turn(tmp_path: Path) -> None:
    taken = [next_cpu(tmp_path) for _ in range(2 * len(ALLOWED))]
    assert taken == ALLOWED * 2


@several
def test_starts_at_the_same_time_spread_over_the_cpus(tmp_path: Path) -> None:
    """The turn is kept under a lock: machines started together never pile onto one CPU."""
    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(lambda _: next_cpu(tmp_path), range(4 * len(ALLOWED))))
    assert sorted(taken) == sorted(ALLOWED * 4)


@several
def test_a_damaged_turn_file_starts_over(tmp_path: Path) -> None:
    (tmp_path / ".cpu-next").write_text("not a number\n")
    assert next_cpu(tmp_path) == ALLOWED[0]
    assert next_cpu(tmp_path) == ALLOWED[1]


def test_one_allowed_cpu_means_no_pinning(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    with ThreadPoolExecutor(1) as pool:  # a thread of its own: its affinity is its own
        def alone() -> int | None:
            os.sched_setaffinity(0, {min(before)})
            return next_cpu(tmp_path)
        assert pool.submit(alone).result() is None
    assert not (tmp_path / ".cpu-next").exists()


@pytest.mark.parametrize(("value", "wanted"), [(None, True), ("1", True), ("0", False), ("off", False),
                                               ("no", False), (" 0 ", False)])
def test_the_environment_turns_pinning_off(value: str | None, wanted: bool) -> None:
    assert pinning_wanted({} if value is None else {"LABKIT_PIN_CPU": value}) is wanted
