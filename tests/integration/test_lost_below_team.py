"""A connection lost below (spec §6.3 [EMU]) on the teaming topology of deploy/teaming.toml
(the host over a filter IM over a MUX over three NICs), real loopback sockets: a connection a
layer left out of its terminate's completion, or of a refused initiate's completion, is reset
(the peer sees the RST), its requests answered, its close frees it, and every layer drains;
one left out of an initiate the team took (its context cell filled) carries on offloaded, and
its close drains everything. With a send in flight when its block is lost, that send is
answered and the host's NBL gauge drains too."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.api import EngineError
from chimneyd.config import LayerConfig
from tests.integration.support import EngineFactory, drained, eventually, fail_next
from tests.integration.test_lost_below import (
    _accept_the_broken_contract,
    _DropsTheBlock,
    _peer_reset,
)

NICS = ("nic0", "nic1", "nic2")


def _teaming() -> tuple[LayerConfig, ...]:
    """deploy/teaming.toml's layers."""
    return (
        LayerConfig("tcpip", "host", ("filter0",)),
        LayerConfig("filter0", "passthrough", ("team0",)),
        LayerConfig("team0", "mux", NICS, policy="least-loaded"),
        *(LayerConfig(n, "target") for n in NICS),
    )


def _clean(stats: dict[str, Any]) -> None:
    for name, s in stats.items():
        for gauge in ("offloads_active", "handles", "outstanding_nbls"):
            assert s[gauge] == 0, f"{name}.{gauge} = {s[gauge]}"


async def _peer(engine: Any) -> tuple[int, asyncio.StreamReader, asyncio.Server]:
    accepted: asyncio.Queue[asyncio.StreamReader] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.put_nowait(reader)
        await asyncio.sleep(10)  # the test ends it
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = await engine.connect("127.0.0.1", port)
    peer = await asyncio.wait_for(accepted.get(), 5.0)
    return conn, peer, server


async def test_a_connection_left_out_of_its_terminate_completion_through_a_team(
    make_engine: EngineFactory,
) -> None:
    engine = await make_engine(_teaming())
    conn, peer, server = await _peer(engine)
    try:
        assert engine.conn_info(conn)["state"] == "offloaded"
        dropper = _DropsTheBlock(engine, "NdisMTerminateOffloadComplete", conn)
        engine.ndis.observer = dropper
        try:
            assert await asyncio.wait_for(engine.upload(conn), 5.0) == {"state": "host"}
        finally:
            engine.ndis.observer = dropper.checker
        assert dropper.dropped == 1
        with pytest.raises(EngineError, match="lost below"):
            await asyncio.wait_for(engine.recv(conn, 5, 5.0, True), 10.0)
        assert await _peer_reset(peer)
        await asyncio.wait_for(engine.close(conn), 5.0)
        assert engine._unanswered() == 0
        _clean(await drained(engine))
        _accept_the_broken_contract(engine)
    finally:
        server.close()


async def test_a_connection_left_out_of_a_refused_initiate_completion_through_a_team(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(_teaming())
    conn = await engine.connect("127.0.0.1", echo_port, offload=False)
    for nic in NICS:  # whichever NIC the team picks refuses it
        fail_next(engine, nic, "MiniportInitiateOffload")
    dropper = _DropsTheBlock(engine, "NdisMInitiateOffloadComplete", conn)
    engine.ndis.observer = dropper
    try:
        with pytest.raises(EngineError, match="lost below"):
            await asyncio.wait_for(engine.offload(conn), 5.0)
    finally:
        engine.ndis.observer = dropper.checker
    assert dropper.dropped == 1
    assert engine.conn_info(conn)["state"] == "host"
    await asyncio.wait_for(engine.close(conn), 5.0)
    assert engine._unanswered() == 0
    _clean(await drained(engine))
    _accept_the_broken_contract(engine)


async def test_a_connection_left_out_of_an_initiate_completion_the_team_took(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(_teaming())
    conn = await engine.connect("127.0.0.1", echo_port, offload=False)
    dropper = _DropsTheBlock(engine, "NdisMInitiateOffloadComplete", conn)
    engine.ndis.observer = dropper
    try:
        await asyncio.wait_for(engine.offload(conn), 5.0)
    finally:
        engine.ndis.observer = dropper.checker
    assert dropper.dropped == 1
    assert engine.conn_info(conn)["state"] == "offloaded"
    assert await asyncio.wait_for(engine.send(conn, b"hello"), 5.0) == 5
    assert await asyncio.wait_for(engine.recv(conn, 5, 5.0, True), 5.0) == b"hello"
    await asyncio.wait_for(engine.close(conn), 5.0)
    assert engine._unanswered() == 0
    _clean(await drained(engine))
    _accept_the_broken_contract(engine)


async def test_a_send_in_flight_when_its_connection_is_lost_below_is_answered_and_drains(
    make_engine: EngineFactory,
) -> None:
    """The peer reads nothing: a large send stays below, unacknowledged, when the connection's
    block is left out of its terminate's completion. The send is answered, the peer sees the
    reset, and after the close every gauge is back to zero (`tcpip.outstanding_nbls` too)."""
    engine = await make_engine(_teaming())
    conn, peer, server = await _peer(engine)
    try:
        # more than the peer's kernel takes unread (engine.max_queued_send_bytes is 16 MiB)
        sent = asyncio.ensure_future(engine.send(conn, b"x" * (15 << 20)))
        await eventually(
            lambda: engine.ndis.stats()["tcpip"]["outstanding_nbls"] >= 1, "the send below"
        )
        assert not sent.done()
        dropper = _DropsTheBlock(engine, "NdisMTerminateOffloadComplete", conn)
        engine.ndis.observer = dropper
        try:
            assert await asyncio.wait_for(engine.upload(conn), 5.0) == {"state": "host"}
        finally:
            engine.ndis.observer = dropper.checker
        assert dropper.dropped == 1
        failed = await asyncio.wait_for(asyncio.gather(sent, return_exceptions=True), 5.0)
        assert isinstance(failed[0], EngineError), failed
        assert await _peer_reset(peer)
        await asyncio.wait_for(engine.close(conn), 5.0)
        assert engine._unanswered() == 0
        _clean(await drained(engine))
        _accept_the_broken_contract(engine)
    finally:
        server.close()
