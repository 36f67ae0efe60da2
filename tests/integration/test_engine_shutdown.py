"""Engine.shutdown keeps its deadline even when closes are still running at it: it reports
them as unfinished instead of raising about futures it just cancelled."""

from __future__ import annotations

import asyncio

from chimneyd.config import DEFAULT_LAYERS, EngineConfig
from chimneyd.drivers.passthrough import PassthroughIm
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


async def test_a_layer_table_left_behind_is_reported(echo_port: int) -> None:
    """What no NDIS gauge shows — a layer's record of a send it passed down, kept after the
    send came back — is in the shutdown report too (`tables`), as the conformance suite's
    drain check reads it (`DriverLayer.leftovers`)."""
    engine = await start_engine(EngineConfig(), DEFAULT_LAYERS)
    conn = await engine.connect("127.0.0.1", echo_port)
    await engine.send(conn, b"x" * 1000)
    await engine.close(conn)
    im = next(t.layer for t in engine.tasks if t.layer.name == "im0")
    assert isinstance(im, PassthroughIm) and not im.leftovers()["sends_below"]
    im.sends_below[-1] = None  # type: ignore[assignment]  # a record nothing will take back
    report = await engine.shutdown(2.0)
    assert report["left_over"] == {"im0": {"tables": {"sends_below": 1}}}
