"""A student's clock on one course lab: when their time ends, how much is left, whether the lab is open.

Pure arithmetic over a `CourseLab` and the student's `Attempt`, so the workspace's countdown, the class grid, the
admission check and the sweeper that stops or freezes machines at the end all read the same answer. Extra minutes
(granted to one student, e.g. for accessibility) extend both the allowance and the window's close for that student.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from labkit.services.models import Attempt, CourseLab


@dataclass(frozen=True)
class Clock:
    """The time bounds of one student on one lab, as plain values."""

    opens_at: dt.datetime | None
    closes_at: dt.datetime | None
    allowance: dt.timedelta | None
    began_at: dt.datetime | None
    extra: dt.timedelta

    @classmethod
    def of(cls, lab: CourseLab, attempt: Attempt | None) -> Clock:
        return cls(opens_at=lab.opens_at, closes_at=lab.closes_at,
                   allowance=None if lab.allowance_minutes is None else dt.timedelta(minutes=lab.allowance_minutes),
                   began_at=attempt.began_at if attempt else None,
                   extra=dt.timedelta(minutes=attempt.extra_minutes if attempt else 0))

    @property
    def limited(self) -> bool:
        return self.closes_at is not None or self.allowance is not None

    def deadline(self) -> dt.datetime | None:
        """When this student's time ends: the earlier of the window's close and the end of their allowance (which
        runs from their first start), each pushed back by their extra minutes. None: no end."""
        ends = []
        if self.closes_at is not None:
            ends.append(self.closes_at + self.extra)
        if self.allowance is not None and self.began_at is not None:
            ends.append(self.began_at + self.allowance + self.extra)
        return min(ends) if ends else None

    def remaining(self, now: dt.datetime) -> dt.timedelta | None:
        """Time left at ``now`` (never negative); None when nothing bounds it."""
        deadline = self.deadline()
        return None if deadline is None else max(deadline - now, dt.timedelta(0))

    def not_yet_open(self, now: dt.datetime) -> bool:
        return self.opens_at is not None and now < self.opens_at

    def over(self, now: dt.datetime) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def used(self, now: dt.datetime) -> dt.timedelta | None:
        """Time since the student's first start (the class grid's "time used"); None before it."""
        return None if self.began_at is None else max(now - self.began_at, dt.timedelta(0))
