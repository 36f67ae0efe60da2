"""A connection whose block a layer below left out of a terminate or initiate completion (spec
§9 item 8) on a running engine with real sockets: the host takes it as lost below (spec §6.3
[EMU]): it resets it (the peer's socket sees the RST), answers its upload or offload and the
read waiting on it, and a write after fails; its close answers, and every table drains. Before,
the connection stayed TERMINATING (or OFFLOADING) for good: the engine failed the requests
waiting then, but its `tcp.close` never answered and the tables never drained."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.engine import Engine
from chimneyd.ndis.blocks import OffloadBlock, walk
from chimneyd.ndis.broker import Layer
from chimneyd.ndis.handles import NdisOffloadHandle
from tests.integration.support import EngineFactory, eventually, fail_next, topology


class _DropsTheBlock:
    """The broker's observer, and a layer below that breaks the contract: once the invariant
    checker has seen `call`'s completion to the host, the block of connection `conn` in it
    names a handle the host has let go instead (the block is left out as far as the host can
    tell)."""

    def __init__(self, engine: Engine, call: str, conn: int) -> None:
        self.checker = engine.ndis.observer
        self.host = engine.host
        self.call = call
        self.conn = conn
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.checker, name)

    def on_state_complete(self, layer: Layer, call: str, root: OffloadBlock) -> None:
        self.checker.on_state_complete(layer, call, root)
        tcb = self.host.tcbs.get(self.conn)
        if call != self.call or tcb is None:
            return
        for block in walk(root):
            if block.offload_handle is not None and block.offload_handle is tcb.handle:
                block.offload_handle = NdisOffloadHandle(self.host.name, None, tcb.trace)
                self.dropped += 1


def _accept_the_broken_contract(engine: Engine) -> None:
    """The host's one error (counted, and a violation) is the test's: cleared for teardown."""
    assert engine.layer_errors == 1
    assert engine.checker is not None and len(engine.checker.violations) == 1
    engine.checker.violations.clear()
    engine.layer_errors = 0


async def _peer_reset(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(reader.read(), 5.0)
    except ConnectionResetError:
        return True
    return False


@pytest.mark.parametrize("ims", [0, 1])
async def test_a_connection_left_out_of_its_terminate_completion_is_reset_and_freed(
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
        # the read waiting then: the host answers it one inbox round later (behind bytes that
        # may still come, `disconnect.timeout_after_bytes`), as a later read, "lost below"
        # (tests/integration/test_lost_below_pending_read.py)
        failed = await asyncio.wait_for(asyncio.gather(read, return_exceptions=True), 5.0)
        assert isinstance(failed[0], EngineError), failed
        assert failed[0].code is ErrorCode.NDIS_STATUS and "lost below" in str(failed[0]), failed
        with pytest.raises(EngineError, match="lost below"):  # a read after: the host's answer
            await asyncio.wait_for(engine.recv(conn, 5, 5.0, True), 10.0)
        assert await _peer_reset(peer)  # the peer hears the connection is gone
        with pytest.raises(EngineError):
            await asyncio.wait_for(engine.send(conn, b"hello"), 5.0)
        await asyncio.wait_for(engine.close(conn), 5.0)
        assert engine._unanswered() == 0
        _accept_the_broken_contract(engine)
    finally:
        server.close()


async def test_a_connection_left_out_of_a_refused_initiate_completion_is_reset_and_freed(
    make_engine: EngineFactory, echo_port: int
) -> None:
    """The NIC refused the offload (its handle's context cell stays empty) and the layer left
    the connection's failed block out: what the host handed down is gone with it."""
    engine = await make_engine(topology(1))
    conn = await engine.connect("127.0.0.1", echo_port, offload=False)
    fail_next(engine, "nic0", "MiniportInitiateOffload")
    dropper = _DropsTheBlock(engine, "NdisMInitiateOffloadComplete", conn)
    engine.ndis.observer = dropper
    try:
        with pytest.raises(EngineError, match="lost below"):
            await asyncio.wait_for(engine.offload(conn), 5.0)
    finally:
        engine.ndis.observer = dropper.checker
    assert dropper.dropped == 1
    assert engine.conn_info(conn)["state"] == "host"
    with pytest.raises(EngineError):
        await asyncio.wait_for(engine.recv(conn, 5, 5.0, True), 10.0)
    await asyncio.wait_for(engine.close(conn), 5.0)
    assert engine._unanswered() == 0
    _accept_the_broken_contract(engine)
