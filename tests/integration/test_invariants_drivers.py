"""Host behaviour the invariant checker flags, pinned on real loopback sockets (the host stack
needs them). The engine is built here rather than by `make_engine`, whose teardown would turn
the flagged violation into an error instead of this test's own failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

from chimneyd.config import EngineConfig
from chimneyd.engine import start_engine
from tests.integration.support import assert_clean, drained


async def test_a_path_outlives_every_dependent_terminate(echo_port: int) -> None:
    engine = await start_engine(EngineConfig(invariants=True))
    try:
        one = await engine.connect("127.0.0.1", echo_port)
        two = await engine.connect("127.0.0.1", echo_port)  # same neighbor and path
        # hold the NIC's terminates so the first is still in flight when the second goes down
        fault = engine.fault_inject(
            {"kind": "delay", "layer": "nic0", "call": "MiniportTerminateOffload", "ms": 100}
        )
        first = asyncio.ensure_future(engine.upload(one))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(engine.upload(two))
        results: list[Any] = await asyncio.wait_for(asyncio.gather(first, second), 5.0)
        assert [r["state"] for r in results] == ["host", "host"]
        engine.fault_clear(fault)
        for conn in (one, two):
            await engine.close(conn)
        assert_clean(engine, await drained(engine))
    finally:
        await engine.shutdown(2.0)
