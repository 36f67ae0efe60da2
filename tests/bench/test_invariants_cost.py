"""`python -m bench.invariants_cost --engine MIB`: the bulk offloaded send with the invariant
checker off and on. It imported a module the bench no longer has (`bench.engine_bench`) and
failed at once; here it runs at a tiny size against a real sink and measures both."""

from __future__ import annotations

from bench import invariants_cost


async def test_the_engine_figure_runs_with_the_checker_off_and_on() -> None:
    off, on = await invariants_cost._engine(2, 1)
    assert off > 0 and on > 0
