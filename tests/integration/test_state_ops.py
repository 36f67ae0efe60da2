"""Update, invalidate, non-push receives and refused indications, through the whole stack."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.engine import Engine
from tests.integration.support import RecordingPeer


async def _peer(peers: list[RecordingPeer]) -> RecordingPeer:
    for _ in range(500):
        if peers:
            return peers[-1]
        await asyncio.sleep(0.005)
    raise AssertionError("peer never connected")


async def _read(engine: Engine, conn: int, n: int) -> bytes:
    got = b""
    while len(got) < n:
        got += await engine.recv(conn, n - len(got), 5.0)
    return got


def _calls(engine: Engine, conn: int, call: str) -> list[dict[str, Any]]:
    return [h for h in engine.trace(conn, None) if h["call"] == call]


async def test_update_changes_cached_state_at_the_target(make_engine: Any, recording: Any) -> None:
    port, peers = recording
    engine = await make_engine(trace_depth=4096)
    conn = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers)
    assert await engine.update(conn, {"RcvIndicationSize": 100}) == {
        "status": "NDIS_STATUS_SUCCESS"
    }
    assert [h["layer"] for h in _calls(engine, conn, "MiniportUpdateOffload")] == ["im0", "nic0"]
    # the target honours the new indication size hint: 1000 bytes arrive as 100-byte indications
    peer.transport.write(bytes(range(200)) * 5)
    await asyncio.sleep(0.05)
    assert await _read(engine, conn, 1000) == bytes(range(200)) * 5
    indications = _calls(engine, conn, "NdisTcpOffloadReceiveHandler")
    assert len([h for h in indications if h["layer"] == "nic0"]) >= 10
    with pytest.raises(EngineError) as err:
        await engine.update(conn, {"NoSuchVariable": 1})
    assert err.value.code is ErrorCode.INVALID_PARAMS


async def test_invalidated_neighbor_uploads_every_dependent(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine()
    seen: list[tuple[int, str, dict[str, Any]]] = []
    engine.subscribe(None, lambda c, e, i: seen.append((c, e, i)))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(4)]
    assert await engine.invalidate(conns[0], "neighbor") == {"status": "NDIS_STATUS_SUCCESS"}
    for _ in range(500):
        if all(engine.conn_info(c)["state"] == "host" for c in conns):
            break
        await asyncio.sleep(0.01)
    assert all(engine.conn_info(c)["state"] == "host" for c in conns)
    reasons = [i["reason"] for c, e, i in seen if e == "TcpIndicateRetrieve"]
    assert reasons.count("InvalidState") == 4  # mandatory: the target stops sending (spec §5.2)
    # nothing lost, and the stack offloads again once the stale neighbor is gone
    for c in conns:
        await engine.send(c, b"after invalidate")
        assert await _read(engine, c, 16) == b"after invalidate"
        assert (await engine.offload(c))["state"] == "offloaded"
    stats = engine.stats()["layers"]
    assert stats["nic0"]["handles"] == 6  # a fresh neighbor and path, four connections


async def test_waitall_posts_a_non_push_receive(make_engine: Any, recording: Any) -> None:
    port, peers = recording
    engine = await make_engine(trace_depth=4096)
    conn = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers)
    reader = asyncio.ensure_future(engine.recv(conn, 3000, 5.0, waitall=True))
    for i in range(3):
        await asyncio.sleep(0.02)
        assert not reader.done()  # a non-push request completes only when full (spec §4.2)
        peer.transport.write(bytes([i]) * 1000)
    assert await reader == bytes([0]) * 1000 + bytes([1]) * 1000 + bytes([2]) * 1000
    completes = [
        h for h in _calls(engine, conn, "NdisTcpOffloadReceiveComplete") if h["layer"] == "nic0"
    ]
    assert len(completes) == 1 and completes[0]["status"] == "NDIS_STATUS_SUCCESS"


async def test_refused_indications_resume_after_a_post(make_engine: Any, recording: Any) -> None:
    port, peers = recording
    engine = await make_engine(rx_buffer_bytes=4096, trace_depth=100_000)
    conn = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers)
    data = bytes(i % 251 for i in range(200_000))
    peer.transport.write(data)
    await asyncio.sleep(0.1)  # the host's buffer fills and it refuses further indications
    returns = [h["status"] for h in _calls(engine, conn, "NdisTcpOffloadReceiveHandler:return")]
    assert {
        "NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED",
        "NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED",
    } & set(returns)
    got = b""
    while len(got) < len(data):
        got += await engine.recv(conn, 1000, 5.0)  # small reads: the host re-enables with posts
    assert got == data
    posts = _calls(engine, conn, "NdisOffloadTcpReceive")
    assert posts, "indications were never re-enabled by a receive post"
