"""Ratios of interleaved repeats, their median and spread, and the verdict on a figure.

Each repeat measures the baseline and the emulated path next to each other, so one repeat gives
one ratio; the figure is the median of those ratios, its spread an order-statistic confidence
interval for that median: of n runs sorted, the k-th lowest to the k-th highest, which misses
the true median with probability 2·P(Bin(n, 1/2) < k) whatever the noise's shape (the runs
only need to be independent and alike). k is the largest with P(Bin(n, 1/2) < k) at most
MAX_FALSE_CALL (1 in 16), so the k - 1 runs left off each end are as many as that allows: none
of 4 to 6 runs, one of 7 to 9 (so one run the machine disturbed cannot decide it), two of 10
to 12. A difference is claimed only when the whole spread is on one side: a figure whose true
ratio sits exactly on its target is called "met" in at most 1 of 16 runs of the bench, and
"missed" in as few (6.25% each at 7 runs, 3.1% at 5, 3.5% at 8). A spread that crosses or
touches the target (or 1.0, for a figure with no target) is "within noise" when a run was left
off each end; with none left off one stray run may be all that reaches the target, and the
figure has "too few repeats" to say. Fewer than 4 runs cannot reach 1 in 16 at all (3 runs all
on one side happen 1 time in 8 by chance): too few repeats, whatever they show.

A ratio that is not a finite positive number (a zero baseline, a zero or negative value such as
an RSS difference that shrank) is no measurement: the figure is "invalid", never met.
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

#: The most often noise alone may decide a verdict: a figure whose true median sits on its target
#: is called met at most this often, and missed at most as often. 1 in 16 is what 7 runs give with
#: one left off each end (8 of their 128 orders put 6 or 7 above the median): a lower bound would
#: need 8 runs or more before any stray run could be left off.
MAX_FALSE_CALL = 1 / 16


def false_call_rate(n: int, k: int) -> float:
    """P(Bin(n, 1/2) < k): how often the k-th lowest of n runs lands above their true median
    (and, alike, the k-th highest below it), i.e. how often a spread from the k-th lowest to the
    k-th highest run lies wholly on one side of a target the figure truly sits on."""
    return float(sum(math.comb(n, i) for i in range(k))) / float(2**n)


def spread_rank(n: int) -> int:
    """k: the spread runs from the k-th lowest to the k-th highest of n runs, the largest k whose
    false_call_rate is at most MAX_FALSE_CALL; 0 when not even the whole range reaches it."""
    k = 0
    while k + 1 <= (n + 1) // 2 and false_call_rate(n, k + 1) <= MAX_FALSE_CALL:
        k += 1
    return k


# Fewer repeats than this cannot keep a claim to MAX_FALSE_CALL (spread_rank is 0): such a figure
# is shown, not judged.
MIN_REPEATS_TO_JUDGE = next(n for n in range(1, 64) if spread_rank(n) > 0)
# The fewest repeats that leave a run off each end of the spread (spread_rank 2): below this a
# spread that reaches the target is "too few repeats", so a judged figure needs this many.
MIN_REPEATS_TO_LEAVE_ONE_OFF = next(n for n in range(1, 64) if spread_rank(n) > 1)


class Verdict(Enum):
    MET = "met"
    MISSED = "missed"
    NOISE = "within noise"  # the spread crosses the target: neither claimed
    SAME = "no difference"  # no target; the spread crosses 1.0
    REPORTED = "reported"  # no target; the spread is on one side of 1.0
    # fewer than MIN_REPEATS_TO_JUDGE ratios, or a spread with no run left off that reaches the
    # target: one stray run may be all that does
    FEW = "too few repeats"
    FAILED = "failed"  # the measurement itself went wrong: its numbers mean nothing
    # some repeat's ratio is not a finite positive number: dividing by a baseline of 0, or a
    # value of 0 or less, gives inf, 0 or a negative ratio that a target would otherwise pass
    INVALID = "invalid measurement"


# What `--strict` fails on: a target missed, or a figure whose numbers could not be judged at all
# (counting only MISSED would let a broken measurement through as a pass).
NOT_MET = frozenset({Verdict.MISSED, Verdict.INVALID})


def fails_strict(v: Verdict, target: Target) -> bool:
    """Whether `--strict` fails on a figure with verdict `v`: NOT_MET, and also a target that
    had too few repeats to be judged. A target nobody could judge is not a target met: a run cut
    short (--smoke, a section that lost repeats) must not pass `--strict` by saying nothing. A
    figure with no target has nothing to meet: its "too few repeats" is shown, not failed."""
    return v in NOT_MET or (v is Verdict.FEW and target.judged)


def left_off_each_end(n: int) -> int:
    """Runs left out of the spread at each end: as many as MAX_FALSE_CALL allows (spread_rank
    less one). With min-max, one wide run (a GC pause, another process on the core) made a clear
    miss "within noise"; a quarter left off each end called a figure on its target met 3 times
    in 16 at 5 runs. Below 7 runs none can be left off; below 4 no spread is judged at all."""
    return max(0, spread_rank(n) - 1)


@dataclass(frozen=True, slots=True)
class Spread:
    median: float
    low: float  # the confidence interval of the median (spread_rank): what the verdict judges
    high: float
    n: int
    lowest: float  # the range of all runs, shown beside it
    highest: float
    valid: bool = True  # every sample is a finite positive number

    @property
    def left_off(self) -> int:
        """Runs left out of the judged spread at each end."""
        return left_off_each_end(self.n)

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
    bound = 1.0 if target.bound is None else target.bound
    if ratios.crosses(bound):
        # with no run left off, the one run that reaches the bound may be a stray: a clear miss
        # and one disturbed run would read "within noise" (and pass --strict)
        if ratios.left_off == 0:
            return Verdict.FEW
        return Verdict.SAME if not target.judged else Verdict.NOISE
    if not target.judged:
        return Verdict.REPORTED
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
