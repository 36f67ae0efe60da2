"""A read waiting on a connection a layer below leaves out of its terminate's or initiate's
completion (lost below, spec §6.3 [EMU]) gets the answer a later read gets: the host's
`NDIS_STATUS` error naming "lost below" (docs/rpc.md `TcpIndicateAbort` `path: "lost"`: "its
reads and writes fail naming lost below"). The host answers it itself, one inbox round later
(behind bytes that may still come); the engine, told the connection could not be settled
(`SettledThenRaised`), leaves its reads to the host. Before, the engine answered the read
first, with `INTERNAL` ("tcpip failed in ProtocolTerminateOffloadComplete ...")."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from tests.integration.support import EngineFactory, eventually, fail_next, topology
from tests.integration.test_lost_below import (
    _accept_the_broken_contract,
    _DropsTheBlock,
    _peer_reset,
)


def _lost_below_answer(got: list[Any]) -> EngineError:
    """The one answer in `got` (a `gather` with exceptions), which must be the host's."""
    err = got[0]
    assert isinstance(err, EngineError), got
    assert err.code is ErrorCode.NDIS_STATUS, f"answered {err.code.name}: {err}"
    assert "lost below" in str(err), err
    return err


@pytest.mark.parametrize("ims", [0, 1])
async def test_a_read_pending_when_the_terminate_loses_the_connection_gets_lost_below(
    make_engine: EngineFactory, ims: int
) -> None:
    engine = await make_engine(topology(ims))
    accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(reader)
        await asyncio.sleep(10)  # the test ends it
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await engine.connect("127.0.0.1", port)
        peer = await asyncio.wait_for(accepted.get(), 5.0)
        assert engine.conn_info(conn)["state"] == "offloaded"
        read = asyncio.ensure_future(engine.recv(conn, 5, 10.0, True))
        await eventually(lambda: engine._unanswered() == 1, "the read pending")
        dropper = _DropsTheBlock(engine, "NdisMTerminateOffloadComplete", conn)
        engine.ndis.observer = dropper
        try:
            assert await asyncio.wait_for(engine.upload(conn), 5.0) == {"state": "host"}
        finally:
            engine.ndis.observer = dropper.checker
        assert dropper.dropped == 1
        pending = _lost_below_answer(
            await asyncio.wait_for(asyncio.gather(read, return_exceptions=True), 5.0)
        )
        later = await asyncio.wait_for(
            asyncio.gather(engine.recv(conn, 5, 5.0, True), return_exceptions=True), 10.0
        )
        assert str(_lost_below_answer(later)) == str(pending)  # the same answer
        assert await _peer_reset(peer)
        await asyncio.wait_for(engine.close(conn), 5.0)
        assert engine._unanswered() == 0
        _accept_the_broken_contract(engine)
    finally:
        server.close()


async def test_a_read_pending_when_a_refused_initiate_loses_the_connection_gets_lost_below(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(topology(1))
    conn = await engine.connect("127.0.0.1", echo_port, offload=False)
    read = asyncio.ensure_future(engine.recv(conn, 5, 10.0, True))
    await eventually(lambda: engine._unanswered() == 1, "the read pending")
    fail_next(engine, "nic0", "MiniportInitiateOffload")
    dropper = _DropsTheBlock(engine, "NdisMInitiateOffloadComplete", conn)
    engine.ndis.observer = dropper
    try:
        with pytest.raises(EngineError, match="lost below"):
            await asyncio.wait_for(engine.offload(conn), 5.0)
    finally:
        engine.ndis.observer = dropper.checker
    assert dropper.dropped == 1
    pending = _lost_below_answer(
        await asyncio.wait_for(asyncio.gather(read, return_exceptions=True), 5.0)
    )
    later = await asyncio.wait_for(
        asyncio.gather(engine.recv(conn, 5, 5.0, True), return_exceptions=True), 10.0
    )
    assert str(_lost_below_answer(later)) == str(pending)
    await asyncio.wait_for(engine.close(conn), 5.0)
    assert engine._unanswered() == 0
    _accept_the_broken_contract(engine)
