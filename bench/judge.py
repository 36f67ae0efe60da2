"""Ratios of interleaved repeats, their median and spread, and the verdict on a figure.

Each repeat measures the baseline and the emulated path next to each other, so one repeat gives
one ratio; the figure is the median of those ratios, its spread the range of its middle runs: a
quarter of the runs (rounded down) is left off each end, so one run the machine disturbed cannot
decide it (3 runs keep all 3; 5 or 7 runs drop the lowest and the highest). A difference is
claimed only when the whole spread is on one side: a spread that crosses or touches the target
(or 1.0, for a figure with no target) is "within noise". A ratio that is not a finite positive
number (a zero baseline, a zero or negative value such as an RSS difference that shrank) is no
measurement: the figure is "invalid", never met.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from bench.targets import Target

T = TypeVar("T")

# Fewer repeats than this give no spread worth the name: such a figure is shown, not judged.
MIN_REPEATS_TO_JUDGE = 3


class Verdict(Enum):
    MET = "met"
    MISSED = "missed"
    NOISE = "within noise"  # the spread crosses the target: neither claimed
    SAME = "no difference"  # no target; the spread crosses 1.0
    REPORTED = "reported"  # no target; the spread is on one side of 1.0
    FEW = "too few repeats"  # fewer than MIN_REPEATS_TO_JUDGE ratios
    FAILED = "failed"  # the measurement itself went wrong: its numbers mean nothing
    # some repeat's ratio is not a finite positive number: dividing by a baseline of 0, or a
    # value of 0 or less, gives inf, 0 or a negative ratio that a target would otherwise pass
    INVALID = "invalid measurement"


# What `--strict` fails on: a target missed, or a figure whose numbers could not be judged at all
# (counting only MISSED would let a broken measurement through as a pass).
NOT_MET = frozenset({Verdict.MISSED, Verdict.INVALID})


def left_off_each_end(n: int) -> int:
    """Runs left out of the spread at each end: a quarter, rounded down. With min-max, one wide
    run (a GC pause, another process on the core) made a clear miss "within noise". Leaving
    off a quarter, runs that stray to one side reach the spread only when they are more than a
    quarter of all, and the median stays inside it. Below 4 runs all count: too few to tell a
    stray run from the spread."""
    return n // 4


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    low: float  # the range of the middle runs: what the verdict judges
    high: float
    n: int
    lowest: float  # the range of all runs, shown beside it
    highest: float
    valid: bool = True  # every sample is a finite positive number

    @classmethod
    def of(cls, samples: Sequence[float]) -> Spread:
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        k = left_off_each_end(len(ordered))
        middle = ordered[k : len(ordered) - k]
        valid = all(math.isfinite(x) and x > 0 for x in samples)
        return cls(
            statistics.median(samples),
            middle[0],
            middle[-1],
            len(samples),
            ordered[0],
            ordered[-1],
            valid,
        )

    def crosses(self, bound: float) -> bool:
        return self.low < bound < self.high or bound in (self.low, self.high)


def verdict(ratios: Spread, target: Target) -> Verdict:
    """The judgement of the median, unless the spread leaves it open."""
    # before anything else: an invalid number says nothing however many repeats there are, and
    # would pass an at-most target (0, negative) or an at-least one (inf)
    if not ratios.valid:
        return Verdict.INVALID
    if ratios.n < MIN_REPEATS_TO_JUDGE:
        return Verdict.FEW
    if not target.judged:
        return Verdict.SAME if ratios.crosses(1.0) else Verdict.REPORTED
    assert target.bound is not None
    if ratios.crosses(target.bound):
        return Verdict.NOISE
    return Verdict.MET if target.met_by(ratios.median) else Verdict.MISSED


async def interleaved(
    runs: dict[str, Callable[[], Awaitable[T]]],
    repeats: int,
    after_each: Callable[[int], None] | None = None,
) -> dict[str, list[T]]:
    """Run every variant once per repeat, in forward then reverse order (A B B A …), so a drift
    of the machine during the run weighs on all of them alike. `after_each(i)` follows repeat i.
    """
    names = list(runs)
    out: dict[str, list[T]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else reversed(names):
            out[name].append(await runs[name]())
        if after_each is not None:
            after_each(i)
    return out
