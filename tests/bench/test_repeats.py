"""Every judged figure gets enough repeats that one run the machine disturbed is left off its
spread at every scale a reader relies on (full and --quick), so a clear miss with a stray run
stays a miss and fails `--strict`. No sockets, no timings: the scales and the judge only."""

from __future__ import annotations

import pytest

from bench.common import Section
from bench.context import SCALES
from bench.judge import MIN_REPEATS_TO_JUDGE, Verdict, left_off_each_end
from bench.runner import EXIT_MISSED, EXIT_OK, exit_status, strict_failures
from bench.targets import TARGETS

#: the repeats each judged figure gets, per scale (bench/context.py): key prefix -> field
REPEATS_OF = {
    "echo.": "echo_repeats",
    "memory.": "memory_repeats",
    "observe.": "observe_repeats",
}


def repeats_for(key: str, scale: str) -> int:
    field = next((f for p, f in REPEATS_OF.items() if key.startswith(p)), "repeats")
    return int(getattr(SCALES[scale], field))


JUDGED = sorted(k for k, t in TARGETS.items() if t.judged)


@pytest.mark.parametrize("scale", ["full", "quick"])
def test_every_judged_figure_has_enough_repeats_to_leave_a_stray_run_off(scale: str) -> None:
    """judge.left_off_each_end exists so that one disturbed run cannot turn a clear miss into
    "within noise" (and so pass `--strict`); it leaves nothing off below 7 repeats."""
    unprotected = {
        k: repeats_for(k, scale)
        for k in JUDGED
        if left_off_each_end(repeats_for(k, scale)) == 0
        # memory.10000 is not measured by --quick (memory_counts=(1000,))
        and not (k == "memory.10000" and 10000 not in SCALES[scale].memory_counts)
    }
    assert not unprotected, f"{scale}: judged on too few repeats to leave one off: {unprotected}"


@pytest.mark.parametrize("scale", ["full", "quick"])
def test_every_reported_figure_is_measured_often_enough_to_be_read(scale: str) -> None:
    """A figure with no target still says "no difference" or "reported": fewer repeats than
    MIN_REPEATS_TO_JUDGE show it as "too few repeats" at every scale a reader relies on."""
    few = {
        field: getattr(SCALES[scale], field)
        for field in ("repeats", *REPEATS_OF.values())
        if getattr(SCALES[scale], field) < MIN_REPEATS_TO_JUDGE
    }
    assert not few, f"{scale}: {few}"


@pytest.mark.parametrize(
    ("key", "scale"), [("echo.100", "full"), ("echo.1000", "quick"), ("memory.10000", "full")]
)
def test_a_clear_miss_with_one_stray_run_fails_strict(key: str, scale: str) -> None:
    """A clear miss, all its runs at a quarter of the bound or further but one disturbed run
    (the baseline slowed by another process) far past it: the median misses, and so does the
    figure, on the repeats the figure gets."""
    target = TARGETS[key]
    assert target.bound is not None
    n = repeats_for(key, scale)
    far = 0.25 if target.op == ">=" else 4.0  # a quarter of an at-least bound, 4x an at-most one
    stray = 4.5 if target.op == ">=" else 0.2
    ratios = [target.bound * far * (1 + 0.02 * i) for i in range(n - 1)] + [target.bound * stray]
    sec = Section(key.split(".")[0])
    fig = sec.add(key, "x", "u", ratios, [1.0] * n, "b")
    assert (fig.verdict, exit_status([sec], strict=True)) == (Verdict.MISSED, EXIT_MISSED)


@pytest.mark.parametrize(
    "ratios",
    [
        # 3 repeats, all far below the bound: fewer than MIN_REPEATS_TO_JUDGE, no claim at all
        [0.1, 0.12, 0.11],
        # 5 repeats whose spread reaches the bound: none can be left off, so one stray run may be
        # all that reaches it
        [0.1, 0.12, 0.11, 0.13, 0.9],
    ],
)
def test_a_judged_figure_with_too_few_repeats_fails_strict(ratios: list[float]) -> None:
    """A target the run could not judge is not a target met: `--strict` exits 3 and says why,
    as it does for a miss (a run cut short, a section that lost repeats)."""
    sec = Section("bulk")
    n = len(ratios)
    fig = sec.add("bulk.1im", "one IM", "MB/s", [100.0 * r for r in ratios], [100.0] * n, "raw")
    assert fig.verdict is Verdict.FEW
    assert exit_status([sec], strict=True) == EXIT_MISSED
    assert exit_status([sec], strict=False) == EXIT_OK
    (why,) = strict_failures([sec])
    assert "bulk: one IM" in why and "too few repeats" in why and f"{n} repeats" in why, why


def test_a_reported_figure_with_too_few_repeats_does_not_fail_strict() -> None:
    """--strict is about targets: a figure with none has nothing to meet (its "too few repeats"
    is shown in the table, as it was)."""
    sec = Section("bulk")
    fig = sec.add("bulk.im_curve.1", "no IM", "MB/s", [90.0, 110.0], [100.0] * 2, "raw")
    assert fig.verdict is Verdict.FEW
    assert (exit_status([sec], strict=True), strict_failures([sec])) == (EXIT_OK, [])
