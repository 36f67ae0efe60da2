"""Engine.shutdown keeps its deadline even when closes are still running at it: it reports
them as unfinished instead of raising about futures it just cancelled."""

from __future__ import annotations

import asyncio

from chimneyd.config import DEFAULT_LAYERS, EngineConfig
from chimneyd.engine import start_engine


async def test_closes_cut_off_by_the_deadline_are_reported_not_raised(echo_port: int) -> None:
    engine = await start_engine(EngineConfig(), DEFAULT_LAYERS)
    conns = await asyncio.gather(*(engine.connect("127.0.0.1", echo_port) for _ in range(200)))
    assert len(conns) == 200
    report = await engine.shutdown(0.0)  # every close is still on its way at the deadline
    unfinished = report["left_over"].get("unfinished_closes", [])
    assert unfinished, report
    assert set(unfinished) <= set(conns)
    assert report["closed"] == len(conns) - len(unfinished)
    assert all(t.task is None for t in engine.tasks)
