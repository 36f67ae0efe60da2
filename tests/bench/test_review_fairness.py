"""The bench's judgement and checks read for what they can and cannot conclude: how often noise
alone decides a verdict, figures judged on too few repeats to leave a stray run off, an echo check
that a daemon which echoes nothing passes, and the echo section's "same N" on both sides.

No sockets, no timings: the judge is pure, the echo check runs against a stand-in client."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest

from bench import echo_bench, rpc_bench
from bench.common import Section
from bench.context import SCALES
from bench.judge import Spread, Verdict, left_off_each_end, verdict
from bench.runner import EXIT_MISSED, exit_status
from bench.targets import TARGETS, at_least

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
    "within noise" (and so pass `--strict`); it leaves nothing off below 4 repeats. The echo
    and memory figures are judged on 3 (echo_repeats, memory_repeats in every scale)."""
    unprotected = {
        k: repeats_for(k, scale)
        for k in JUDGED
        if left_off_each_end(repeats_for(k, scale)) == 0
        # memory.10000 is not measured by --quick (memory_counts=(1000,))
        and not (k == "memory.10000" and 10000 not in SCALES[scale].memory_counts)
    }
    assert not unprotected, f"{scale}: judged on fewer than 4 repeats: {unprotected}"


def test_a_clear_echo_miss_with_one_stray_run_passes_strict() -> None:
    """echo.100 (at least 0.2x), its 3 repeats at 0.05x, 0.06x and one disturbed 0.9x (the
    direct baseline slowed by another process): the median misses by 3x, the run passes."""
    ratios = [0.05, 0.06, 0.9]
    sec = Section("echo")
    fig = sec.add("echo.100", "x", "MB/s", ratios, [1.0] * 3, "direct")
    assert (fig.verdict, exit_status([sec], strict=True)) == (Verdict.MISSED, EXIT_MISSED)


@pytest.mark.parametrize("n", [3, 5, 7])
def test_a_figure_exactly_at_its_target_is_seldom_called_met(n: int) -> None:
    """A figure whose true ratio is its bound should read "within noise", not "met". Repeats
    of n = 3 (echo, memory), 5 (--quick) and 7 (full) with a symmetric noise around the bound:
    "met" needs only the middle runs on one side, i.e. all 3 of 3 (1 in 8), 4 of 5 (6 in 32)
    or 6 of 7 (8 in 128) above it. A claim that noise makes one time in 8 is no claim."""
    rng = random.Random(7411)
    target = at_least(0.2, "t")
    trials = 20_000
    met = sum(
        verdict(Spread.of([0.2 * math.exp(rng.gauss(0.0, 0.1)) for _ in range(n)]), target)
        is Verdict.MET
        for _ in range(trials)
    )
    assert met / trials <= 0.05, f"n={n}: called met in {met / trials:.1%} of trials at the bound"


class _ZerosDaemon:
    """An RPC client whose daemon acknowledges every tcp.send and answers every tcp.recv with
    as many zero bytes as asked: it forwards nothing to the echo peer at all."""

    def call(self, method: str, *params: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if method == "tcp.send":
            fut.set_result(len(params[1]))
        elif method == "tcp.recv":
            fut.set_result(bytes(params[1]))
        else:
            fut.set_exception(RuntimeError(method))
        return fut


async def test_the_rpc_echo_check_fails_a_daemon_that_echoes_nothing() -> None:
    """rpc_bench says a damaged echo fails the section; its payload is all zero bytes and the
    check is "no non-zero byte", so made-up zeros (or lost, duplicated or reordered chunks of
    the stream) pass it. The echo section's PatternStream + Verifier would catch this."""
    fake = _ZerosDaemon()
    with pytest.raises(RuntimeError):
        await rpc_bench.rpc_echo_rounds(fake, 1, 0.05, 20)  # type: ignore[arg-type]


@pytest.mark.parametrize("scale", ["full", "quick"])
def test_the_echo_section_runs_every_connection_at_once_on_both_sides(scale: str) -> None:
    """The direct side runs a round on all N connections at once; the emulated (and floor)
    side at most ROUNDS_PER_CLIENT per RPC client, over at most MAX_RPC_CLIENTS clients."""
    for n in SCALES[scale].echo_counts:
        k = max(
            echo_bench.MIN_RPC_CLIENTS,
            min(echo_bench.MAX_RPC_CLIENTS, math.ceil(n / echo_bench.ROUNDS_PER_CLIENT)),
        )
        assert k * echo_bench.ROUNDS_PER_CLIENT >= n, (
            f"N={n}: {k} clients x {echo_bench.ROUNDS_PER_CLIENT} = "
            f"{k * echo_bench.ROUNDS_PER_CLIENT} rounds at once via the daemon, {n} direct"
        )
