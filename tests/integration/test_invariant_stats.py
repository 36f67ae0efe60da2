"""`engine.invariant_checked_nbls` in `stack.stats`: what tells a checker that is on and hears
the traffic from one that is on and was never called (its 0 violations are then no news)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chimneyd.config import EngineConfig
from chimneyd.engine import start_engine

PAYLOAD = b"checked " * 512


async def test_the_checker_counts_the_nbls_of_offloaded_traffic(
    make_engine: Callable[..., Any], echo_port: int
) -> None:
    engine = await make_engine()
    before = engine.stats()["engine"]["invariant_checked_nbls"]
    assert before == 0  # nothing went through NDIS yet
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "offloaded"
    assert await engine.send(conn, PAYLOAD) == len(PAYLOAD)
    got = b""
    while len(got) < len(PAYLOAD):
        got += await engine.recv(conn, len(PAYLOAD), 5.0)
    assert got == PAYLOAD
    stats = engine.stats()["engine"]
    # the send and the receives of an offloaded connection each complete an NBL through NDIS,
    # which the checker hears: detached from NDIS, it would count none
    assert stats["invariant_checked_nbls"] >= 2, stats
    assert stats["invariant_violations"] == 0


async def test_no_count_without_the_checker() -> None:
    engine = await start_engine(EngineConfig(invariants=False))
    try:
        stats = engine.stats()["engine"]
        assert stats["invariant_checked_nbls"] is None and stats["invariant_violations"] is None
    finally:
        await engine.shutdown(1.0)
