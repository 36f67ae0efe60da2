"""The bench's judgement, on made-up numbers: a median is claimed met or missed only when the
whole spread (a confidence interval of it) is on one side of the target, and every figure needs
a row in the targets table."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest

from bench.common import Section, SectionSkip
from bench.judge import NOT_MET, Spread, Verdict, interleaved, verdict
from bench.runner import EXIT_FAILED, EXIT_MISSED, EXIT_OK, exit_status
from bench.targets import TARGETS, Target, at_least, at_most, count_key, reported


@pytest.mark.parametrize(
    ("ratios", "target", "expected"),
    [
        # seven runs, the least that leaves one off each end (the spread: 2nd lowest to 2nd
        # highest)
        ([0.7, 0.65, 0.8, 0.72, 0.68, 0.75, 0.7], at_least(0.6, "t"), Verdict.MET),
        ([0.5, 0.55, 0.4, 0.52, 0.48, 0.5, 0.45], at_least(0.6, "t"), Verdict.MISSED),
        # median met, spread crosses
        ([0.5, 0.7, 0.65, 0.55, 0.68, 0.62, 0.72], at_least(0.6, "t"), Verdict.NOISE),
        # median missed, spread crosses
        ([0.5, 0.55, 0.65, 0.52, 0.58, 0.62, 0.54], at_least(0.6, "t"), Verdict.NOISE),
        ([3.5, 5.0, 4.2, 3.8, 4.6, 4.1, 3.6], at_most(4.0, "t"), Verdict.NOISE),
        ([4.5, 5.0, 4.2, 4.8, 4.4, 4.6, 4.3], at_most(4.0, "t"), Verdict.MISSED),
        ([2.0, 3.0, 2.5, 2.2, 2.8, 2.4, 2.6], at_most(4.0, "t"), Verdict.MET),
        # "1.2x faster" is within noise of 1.0
        ([0.9, 1.4, 1.2, 0.95, 1.3, 1.25, 1.1], reported(), Verdict.SAME),
        ([1.1, 1.4, 1.2, 1.15, 1.3, 1.25, 1.2], reported(), Verdict.REPORTED),
        ([0.7, 0.8], at_least(0.6, "t"), Verdict.FEW),
        # 3 runs all on one side happen 1 time in 8 by chance: no claim either way
        ([0.7, 0.65, 0.8], at_least(0.6, "t"), Verdict.FEW),
        ([0.5, 0.55, 0.4], at_least(0.6, "t"), Verdict.FEW),
        # 4 to 6 runs wholly on one side are a claim (at most 1 time in 16 by chance) ...
        ([0.7, 0.65, 0.8, 0.72, 0.68], at_least(0.6, "t"), Verdict.MET),
        ([4.5, 5.0, 4.2, 4.8], at_most(4.0, "t"), Verdict.MISSED),
        # ... but none is left off: a spread that reaches the bound may owe it to one stray run
        ([0.5, 0.7, 0.65, 0.55, 0.68], at_least(0.6, "t"), Verdict.FEW),
        # a wide spread wholly on one side of the bound is still a claim, either way: only a
        # spread that reaches the bound leaves it open, however wide
        ([1.0, 1.5, 2.4, 1.2, 2.0, 1.8, 1.6], at_least(0.6, "t"), Verdict.MET),
        ([0.05, 0.3, 0.55, 0.1, 0.5, 0.4, 0.2], at_least(0.6, "t"), Verdict.MISSED),
        ([0.5, 2.0, 3.9, 1.0, 3.5, 3.0, 2.5], at_most(4.0, "t"), Verdict.MET),
        ([4.1, 6.0, 9.0, 4.5, 8.0, 7.0, 5.0], at_most(4.0, "t"), Verdict.MISSED),
        ([1.1, 3.0, 9.0, 1.5, 7.0, 5.0, 2.0], reported(), Verdict.REPORTED),
        ([0.1, 0.5, 0.9, 0.2, 0.8, 0.7, 0.3], reported(), Verdict.REPORTED),
    ],
)
def test_verdict_judges_the_median_within_its_spread(
    ratios: list[float], target: Target, expected: Verdict
) -> None:
    assert verdict(Spread.of(ratios), target) is expected


def test_a_bound_on_the_edge_of_the_spread_is_noise() -> None:
    assert verdict(Spread.of([0.55, 0.6, 0.7, 0.8, 0.75, 0.65, 0.85]), at_least(0.6, "t")) is (
        Verdict.NOISE
    )


OUTLIER_HIGH = [0.35, 0.34, 0.36, 0.345, 0.355, 0.35, 1.10]


@pytest.mark.parametrize(
    ("ratios", "target", "expected"),
    [
        # one wide run of seven: the other six miss 0.6 clearly, and so does the figure
        (OUTLIER_HIGH, at_least(0.6, "t"), Verdict.MISSED),
        ([0.7, 0.72, 0.68, 0.71, 0.69, 0.7, 0.1], at_least(0.6, "t"), Verdict.MET),
        ([3.0, 3.1, 2.9, 3.05, 2.95, 3.0, 9.0], at_most(4.0, "t"), Verdict.MET),
        ([5.0, 5.1, 4.9, 5.05, 4.95, 5.0, 1.0], at_most(4.0, "t"), Verdict.MISSED),
        ([1.3, 1.31, 1.29, 1.3, 1.32, 1.28, 0.5], reported(), Verdict.REPORTED),
        # of five, none can be left off (one of five would call a figure on its target met
        # 3 times in 16): the stray run leaves the figure with too few repeats, not a verdict
        ([1.3, 1.31, 1.29, 1.3, 0.5], reported(), Verdict.FEW),
        ([0.35, 0.34, 0.36, 0.345, 1.1], at_least(0.6, "t"), Verdict.FEW),
        # two of seven past the bound are more than 7 runs can leave off: the spread reaches it
        ([0.35, 0.34, 0.36, 0.345, 0.355, 1.1, 1.2], at_least(0.6, "t"), Verdict.NOISE),
        # three runs cannot tell a stray run from the spread
        ([0.35, 0.36, 1.10], at_least(0.6, "t"), Verdict.FEW),
        # a figure that truly sits at its bound is within noise, however tight or stray its runs
        ([0.58, 0.59, 0.6, 0.6, 0.61, 0.62, 0.6], at_least(0.6, "t"), Verdict.NOISE),
        ([0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6], at_least(0.6, "t"), Verdict.NOISE),
        ([0.2, 0.59, 0.6, 0.61, 1.5, 0.58, 0.62], at_least(0.6, "t"), Verdict.NOISE),
        ([3.9, 4.0, 4.1, 4.0, 3.95, 4.05, 12.0], at_most(4.0, "t"), Verdict.NOISE),
        ([0.97, 1.0, 1.02, 0.99, 1.01, 1.0, 3.0], reported(), Verdict.SAME),
    ],
)
def test_one_stray_run_does_not_decide_the_verdict(
    ratios: list[float], target: Target, expected: Verdict
) -> None:
    assert verdict(Spread.of(ratios), target) is expected


def test_the_spread_is_a_confidence_interval_of_the_median() -> None:
    """The k-th lowest to the k-th highest run, k as large as 1 in 16 allows (judge.spread_rank):
    one run off each end of 7, 8 or 9, two of 10, none of fewer than 7."""
    assert Spread.of(OUTLIER_HIGH) == Spread(0.35, 0.345, 0.36, 7, 0.34, 1.10)
    assert Spread.of([8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0]) == Spread(4.5, 2.0, 7.0, 8, 1.0, 8.0)
    ten = [float(x) for x in range(10, 0, -1)]
    assert Spread.of(ten) == Spread(5.5, 3.0, 8.0, 10, 1.0, 10.0)
    assert Spread.of([5.0, 1.0, 4.0, 2.0, 3.0]) == Spread(3.0, 1.0, 5.0, 5, 1.0, 5.0)
    assert Spread.of([2.0, 1.0, 3.0]) == Spread(2.0, 1.0, 3.0, 3, 1.0, 3.0)
    assert Spread.of([2.0]) == Spread(2.0, 2.0, 2.0, 1, 2.0, 2.0)


def test_the_json_keeps_all_runs_range_and_the_judged_one() -> None:
    sec = Section("bulk")
    fig = sec.add("bulk.1im", "x", "MB/s", [100.0 * r for r in OUTLIER_HIGH], [100.0] * 7, "raw")
    m = fig.as_map()
    assert (m["ratio_min"], m["spread_low"], m["spread_high"], m["ratio_max"]) == pytest.approx(
        (0.34, 0.345, 0.36, 1.10)
    )
    assert m["verdict"] == "missed"


async def test_interleaved_alternates_the_order_of_variants() -> None:
    calls: list[str] = []

    def make(name: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            calls.append(name)
            return name

        return run

    got = await interleaved({"a": make("a"), "b": make("b"), "c": make("c")}, 3)
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert got == {"a": ["a"] * 3, "b": ["b"] * 3, "c": ["c"] * 3}


def test_a_figure_takes_ratios_per_repeat_and_needs_a_target_row() -> None:
    sec = Section("bulk")
    values = [60.0, 80.0, 50.0, 70.0, 90.0, 45.0, 55.0]
    baselines = [100.0, 100.0, 50.0, 100.0, 100.0, 50.0, 50.0]
    fig = sec.add("bulk.1im", "x", "MB/s", values, baselines, "raw")
    assert fig.ratios == [0.6, 0.8, 1.0, 0.7, 0.9, 0.9, 1.1]
    assert fig.spread == Spread(0.9, 0.7, 1.0, 7, 0.6, 1.1)  # 7 runs: one off each end
    assert fig.verdict is Verdict.MET
    fig = sec.add("bulk.1im", "x", "MB/s", [60.0, 80.0, 50.0], [100.0, 100.0, 50.0], "raw")
    assert fig.spread == Spread(0.8, 0.6, 1.0, 3, 0.6, 1.0)  # 3 runs: every one counts
    assert fig.verdict is Verdict.FEW  # and too few to judge
    with pytest.raises(KeyError, match="no row"):
        sec.add("bulk.unheard_of", "x", "MB/s", [1.0], [1.0], "raw")
    fig = sec.add("bulk.1im", "x", "MB/s", [1.0] * 3, [1.0] * 3, "raw", failed="3 errors")
    assert fig.verdict is Verdict.FAILED and sec.problems == ["bulk: x: 3 errors"]


def test_counts_without_a_row_are_reported_not_judged() -> None:
    assert count_key("echo", 1000) == "echo.1000"
    assert count_key("echo", 10) == "echo.other"
    assert not TARGETS[count_key("memory", 200)].judged


@pytest.mark.parametrize(
    ("ratios", "target"),
    [
        ([math.inf, math.inf, math.inf], at_least(0.6, "t")),  # 0 measured on both sides
        ([-0.15, -0.1, -0.2], at_most(4.0, "t")),  # an RSS difference that shrank
        ([0.0, 1.0, 2.0], at_most(4.0, "t")),  # one repeat's value was 0
        ([0.7, 0.8, math.inf, 0.75, 0.7], at_least(0.6, "t")),  # one bad repeat of five
        ([math.nan, 0.7, 0.8], at_least(0.6, "t")),
        ([math.inf, 2.0, 3.0], at_most(4.0, "t")),
        ([-1.0, 1.2, 1.3], reported()),
        ([math.inf, 1.0], at_least(0.6, "t")),  # too few repeats, and invalid besides
    ],
)
def test_a_ratio_that_is_not_a_finite_positive_number_is_invalid(
    ratios: list[float], target: Target
) -> None:
    assert verdict(Spread.of(ratios), target) is Verdict.INVALID
    assert Verdict.INVALID in NOT_MET


def test_a_baseline_of_zero_or_less_has_no_finite_ratio() -> None:
    """Dividing by a baseline that measured nothing (or a negative RSS difference) gives no
    number: the ratio is infinite, never 0 or negative, which a target could read as met."""
    sec = Section("memory")
    fig = sec.add(
        "memory.10000", "x", "B", [900.0, 800.0, 0.0, 700.0], [0.0, -5.0, 0.0, 200.0], "b"
    )
    assert fig.ratios == [math.inf, math.inf, math.inf, 3.5]
    assert fig.verdict is Verdict.INVALID


def test_degenerate_figures_are_invalid_and_fail_a_strict_run() -> None:
    """0 measured on both sides, and an RSS difference of 0 or less: never "met", and --strict
    exits 3 on them as on a missed target (a plain run still exits 0: nothing broke)."""
    for values, baselines in (([0.0] * 3, [0.0] * 3), ([-300.0, -250.0, -280.0], [2000.0] * 3)):
        sec = Section("memory")
        fig = sec.add("memory.10000", "per conn", "B", values, baselines, "bare")
        assert fig.verdict is Verdict.INVALID, fig.ratios
        assert fig.as_map()["verdict"] == "invalid measurement"
        assert exit_status([sec], strict=True) == EXIT_MISSED
        assert exit_status([sec], strict=False) == EXIT_OK
    good = Section("memory")
    good.add("memory.10000", "per conn", "B", [3000.0] * 7, [1000.0] * 7, "bare")
    assert good.figures[0].verdict is Verdict.MET
    assert exit_status([good], strict=True) == EXIT_OK


def test_strict_exits_3_on_a_miss_and_1_on_a_failure() -> None:
    sec = Section("bulk")
    sec.add("bulk.1im", "x", "MB/s", [40.0, 45.0, 50.0, 42.0, 48.0, 44.0, 46.0], [100.0] * 7, "raw")
    assert sec.figures[0].verdict is Verdict.MISSED
    assert exit_status([sec], strict=True) == EXIT_MISSED
    assert exit_status([sec], strict=False) == EXIT_OK
    sec.failed = "the daemon did not answer"
    assert exit_status([sec], strict=True) == EXIT_FAILED


def test_only_a_listed_capability_may_skip() -> None:
    assert SectionSkip("nofile", "limit 1024").code == "nofile"
    with pytest.raises(ValueError):
        SectionSkip("daemon-error", "every call failed")
