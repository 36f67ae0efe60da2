"""Fixtures for engine tests on real loopback sockets: an in-process engine and peers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from chimneyd.config import DEFAULT_LAYERS, EngineConfig, LayerConfig
from chimneyd.engine import Engine, start_engine
from tests.integration.support import EchoPeer, RecordingPeer, assert_clean, drained

CLOSE_BOUND_S = 10.0


@pytest.fixture
async def make_engine() -> AsyncIterator[Callable[..., Any]]:
    """Build engines with the invariant checker on; at teardown every connection is closed and
    every table, count and task must be back to zero."""
    engines: list[Engine] = []

    async def make(layers: tuple[LayerConfig, ...] = DEFAULT_LAYERS, **settings: Any) -> Engine:
        engine = await start_engine(EngineConfig(invariants=True, **settings), layers)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        for conn_id in engine.conn_ids():
            # bounded: a stack left inconsistent must fail the test, not hang the suite
            # (pytest-timeout's signal cannot stop a loop that is waiting)
            try:
                await asyncio.wait_for(engine.close(conn_id), CLOSE_BOUND_S)
            except TimeoutError:
                raise AssertionError(
                    f"closing connection {conn_id} took over {CLOSE_BOUND_S} s: "
                    f"{engine.conn_info(conn_id)}"
                ) from None
        stats = await drained(engine)
        assert_clean(engine, stats)
        report = await engine.shutdown(2.0)
        assert report["left_over"] == {}
        assert all(t.task is None for t in engine.tasks)


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoPeer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def recording() -> AsyncIterator[tuple[int, list[RecordingPeer]]]:
    loop = asyncio.get_running_loop()
    peers: list[RecordingPeer] = []
    server = await loop.create_server(lambda: RecordingPeer(peers), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], peers
    for p in peers:
        p.transport.abort()
    server.close()
