"""A send's bookkeeping once the host answers it: the bytes it held against
`max_queued_send_bytes` come back, and the send-latency observer (metrics) times it once,
when the peer acknowledged it, whether the connection is offloaded or the host's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.api import EngineError

pytestmark = pytest.mark.timeout(60, method="thread")

SOON_S = 5.0


@pytest.mark.parametrize("offloaded", [True, False])
async def test_an_answered_send_gives_its_bytes_back_and_is_timed_once(
    make_engine: Any, recording: Any, offloaded: bool
) -> None:
    port, _ = recording
    engine = await make_engine()
    timed: list[float] = []
    engine.send_observer = timed.append
    conn = await engine.connect("127.0.0.1", port)
    if offloaded:
        await asyncio.wait_for(engine.offload(conn), SOON_S)
    sizes = [5, 0, 70_000, 1]
    assert (
        await asyncio.wait_for(
            asyncio.gather(*[engine.send(conn, b"s" * n) for n in sizes]), SOON_S
        )
        == sizes
    )
    assert len(timed) == len(sizes) and all(t >= 0 for t in timed)
    assert engine.stats()["engine"]["queued_send_bytes"] == 0
    assert not engine._queued_send  # no connection keeps an entry, not even for an empty send


async def test_a_failed_send_gives_its_bytes_back_and_is_not_timed(
    make_engine: Any, recording: Any
) -> None:
    port, _ = recording
    engine = await make_engine()
    timed: list[float] = []
    engine.send_observer = timed.append
    conn = await engine.connect("127.0.0.1", port)
    await asyncio.wait_for(engine.close(conn), SOON_S)
    with pytest.raises(EngineError):
        await asyncio.wait_for(engine.send(conn, b"too late"), SOON_S)
    assert timed == []
    assert not engine._queued_send
