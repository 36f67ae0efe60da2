"""A host completion that broke the contract but that the host settled before it raised
(`SettledThenRaised`) names the connections it could not settle: the engine fails the requests
waiting on those with INTERNAL, and no other request of the connections the completion names
(docs/spec.md §6.3) — those are the host's, which carries them on. Before, the engine knew
only `LetGoHandles` (which names none) and the host's other such errors failed every request
of every connection the completion named."""

from __future__ import annotations

import asyncio

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import EngineConfig
from chimneyd.drivers.host.errors import SettledThenRaised
from chimneyd.engine import start_engine
from chimneyd.ndis.blocks import new_neighbor_block, new_tcp_block
from chimneyd.ndis.handles import NdisOffloadHandle
from tests.integration.support import eventually


async def test_only_the_connections_a_settled_error_names_have_their_requests_failed(
    echo_port: int,
) -> None:
    engine = await start_engine(EngineConfig(invariants=True))
    try:
        broken = await engine.connect("127.0.0.1", echo_port)
        healthy = await engine.connect("127.0.0.1", echo_port)
        reads = {
            conn: asyncio.ensure_future(engine.recv(conn, 5, 10.0, True))
            for conn in (broken, healthy)
        }
        await eventually(lambda: engine._unanswered() == 2, "both reads pending")
        host = engine.host
        # a completion naming both connections (the hop traces of its blocks), settled but for
        # `broken` before the host raised
        root = new_neighbor_block(None)
        for conn in (broken, healthy):
            root.add_dependent(
                new_tcp_block(NdisOffloadHandle(host.name, None, host.tcbs[conn].trace))
            )
        error = SettledThenRaised("a block the host could not take back", frozenset({broken}))
        engine._layer_failed(host, error, host.ProtocolTerminateOffloadComplete, (None, root))
        assert engine.layer_errors == 1
        failed = await asyncio.wait_for(asyncio.gather(reads[broken], return_exceptions=True), 5.0)
        assert isinstance(failed[0], EngineError) and failed[0].code is ErrorCode.INTERNAL, failed
        assert not reads[healthy].done(), reads[healthy]  # the host's still
        assert await asyncio.wait_for(engine.send(healthy, b"hello"), 5.0) == 5
        assert await asyncio.wait_for(reads[healthy], 5.0) == b"hello"
        for conn in (broken, healthy):
            await asyncio.wait_for(engine.close(conn), 5.0)
        assert engine._unanswered() == 0
    finally:
        report = await asyncio.wait_for(engine.shutdown(2.0), 10.0)
    assert report["left_over"] == {}, report
