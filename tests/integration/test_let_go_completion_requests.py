"""A completion naming a handle the host has let go breaks the contract (spec §9 item 8): the
host settles everything else it carries and then raises (`LetGoHandles`). The engine counts
and logs the error, but fails no request for it: every request the host has not answered yet
on the connections the completion names is one the host still carries and will answer (an
answered one is no longer pending at all). Before, the engine failed every such request with
INTERNAL — a read waiting for data on a healthy connection too, withdrawn from the host — as
for a handler that gave up midway (docs/spec.md §6.3)."""

from __future__ import annotations

import asyncio

from chimneyd.config import EngineConfig
from chimneyd.engine import start_engine
from chimneyd.ndis.blocks import new_neighbor_block, new_tcp_block
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.status import NdisStatus as S
from tests.integration.support import eventually


async def test_a_let_go_handle_in_a_completion_fails_no_request_the_host_still_carries(
    echo_port: int,
) -> None:
    engine = await start_engine(EngineConfig(invariants=True))
    try:
        conn = await engine.connect("127.0.0.1", echo_port)
        # a read waiting for data on the offloaded connection: the host's to answer
        read = asyncio.ensure_future(engine.recv(conn, 5, 10.0, True))
        await eventually(lambda: engine._unanswered() == 1, "the read pending")
        host = engine.host
        tcb = host.tcbs[conn]
        binding = host.binding_for(None)
        assert binding is not None
        # a terminate completion naming a handle of this connection the host let go (an
        # earlier offload's, whose terminate completed: its owner gone, its trace kept)
        stray = new_tcp_block(NdisOffloadHandle(host.name, None, tcb.trace))
        stray.status = S.NDIS_STATUS_SUCCESS
        root = new_neighbor_block(None)
        root.add_dependent(stray)
        host.inbox.push(host.ProtocolTerminateOffloadComplete, (binding, root))
        await eventually(lambda: engine.layer_errors == 1, "the error counted")
        assert engine.checker.count == 1  # the broken contract is reported
        assert not read.done(), read  # still the host's: not failed for the error
        assert await asyncio.wait_for(engine.send(conn, b"hello"), 5.0) == 5
        assert await asyncio.wait_for(read, 5.0) == b"hello"
        await asyncio.wait_for(engine.close(conn), 5.0)
        assert engine._unanswered() == 0
    finally:
        report = await asyncio.wait_for(engine.shutdown(2.0), 10.0)
    assert report["left_over"] == {}, report
    assert engine.layer_errors == 1
