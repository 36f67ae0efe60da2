"""Update, invalidate, waitall receives and refused indications, through the whole stack."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.engine import Engine
from chimneyd.ndis.blocks import TCP_FLAG_KEEP_ALIVE_ENABLED, TCP_FLAG_NAGLING_ENABLED
from tests.integration.support import RecordingPeer, eventually


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


async def test_waitall_waits_in_the_host_over_push_receives(
    make_engine: Any, recording: Any
) -> None:
    """A waitall read is answered once whole, but over push-mode requests, each completed with
    what it holds at the next PSH (spec §4.2): no byte waits in a request the host cannot take
    back should the read time out (docs/rpc.md tcp.recv)."""
    port, peers = recording
    engine = await make_engine(trace_depth=4096)
    conn = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers)
    reader = asyncio.ensure_future(engine.recv(conn, 3000, 5.0, waitall=True))
    for i in range(3):
        await asyncio.sleep(0.02)
        assert not reader.done()
        peer.transport.write(bytes([i]) * 1000)
    assert await reader == bytes([0]) * 1000 + bytes([1]) * 1000 + bytes([2]) * 1000
    completes = [
        h for h in _calls(engine, conn, "NdisTcpOffloadReceiveComplete") if h["layer"] == "nic0"
    ]
    assert len(completes) > 1 and {h["status"] for h in completes} == {"NDIS_STATUS_SUCCESS"}


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


async def test_update_sets_the_real_sockets_options(make_engine: Any, recording: Any) -> None:
    """Keepalive, Nagle, TTL, TOS and the receive window reach the kernel (spec §3.4)."""
    port, peers = recording
    engine = await make_engine(user_timeout_ms=2500)
    conn = await engine.connect("127.0.0.1", port)
    await _peer(peers)
    sock = socket.socket(fileno=engine.sockets.wire_of(conn)._fd)
    try:
        tcp = socket.IPPROTO_TCP
        assert sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == 2500  # engine.user_timeout_ms
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        assert sock.getsockopt(tcp, socket.TCP_NODELAY) == 1
        cached = {
            "Flags": TCP_FLAG_KEEP_ALIVE_ENABLED | TCP_FLAG_NAGLING_ENABLED,
            "KaTimeout": 30_000,
            "KaInterval": 2_000,
            "KaProbeCount": 3,
            "TtlOrHopLimit": 17,
            "TosOrTrafficClass": 0x20,
            "InitialRcvWnd": 65536,
        }
        assert await engine.update(conn, cached) == {"status": "NDIS_STATUS_SUCCESS"}
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(tcp, socket.TCP_KEEPIDLE) == 30
        assert sock.getsockopt(tcp, socket.TCP_KEEPINTVL) == 2
        assert sock.getsockopt(tcp, socket.TCP_KEEPCNT) == 3
        assert sock.getsockopt(tcp, socket.TCP_NODELAY) == 0
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TTL) == 17
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 0x20
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 65536  # Linux doubles
        # the delegated keepalive timer reads the socket the update configured
        q = await engine.query(conn)
        assert 0 < q["KeepAliveTimeoutDelta"] <= 30_000
        # at upload the host carries on with the kernel's own retransmission limit
        await engine.upload(conn)
        assert sock.getsockopt(tcp, socket.TCP_USER_TIMEOUT) == 0
    finally:
        sock.detach()


async def test_a_waitall_read_survives_an_indication_crossing_its_post(
    make_engine: Any, echo_port: int
) -> None:
    """Small indications (RcvIndicationSize 100) race the waitall request the host posts for
    the bytes still missing; the host must leave the crossing indication's bytes to that
    request, or the read waits forever for bytes it already holds (spec §4.4)."""
    engine = await make_engine(trace_depth=4096)
    conn = await engine.connect("127.0.0.1", echo_port)
    assert await engine.update(conn, {"RcvIndicationSize": 100}) == {
        "status": "NDIS_STATUS_SUCCESS"
    }
    for size in (700, 4096, 150):
        data = bytes(i % 253 for i in range(size))
        assert await engine.send(conn, data) == size
        assert await engine.recv(conn, size, 5.0, True) == data
    refused = [
        h
        for h in _calls(engine, conn, "NdisTcpOffloadReceiveHandler:return")
        if h["status"] == "NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED"
    ]
    assert refused, "no indication crossed a post: the race this test is about did not happen"


@pytest.mark.parametrize("what", ["path", "neighbor"])
async def test_no_update_under_an_invalidated_path_or_neighbor(
    make_engine: Any, echo_port: int, what: str
) -> None:
    """An update asked for right after the connection's path or neighbor was invalidated (in
    the same turn of the host) is refused: the connection depends on an invalidated object,
    which takes no update (spec §3.1, §3.5, §9 item 7)."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    invalidated = asyncio.ensure_future(engine.invalidate(conn, what))
    updated = asyncio.ensure_future(engine.update(conn, {"RcvIndicationSize": 100}))
    assert await invalidated == {"status": "NDIS_STATUS_SUCCESS"}
    with pytest.raises(EngineError) as err:
        await updated
    assert err.value.code is ErrorCode.INVALID_STATE
    assert what in err.value.detail
    assert engine.checker is not None and engine.checker.violations == []


async def test_an_invalidated_connection_stays_so_when_its_nic_asks_for_everything(
    make_engine: Any, echo_port: int
) -> None:
    """The host invalidates a connection, and its NIC fails (UPLOAD_ALL) before that
    invalidate has completed, so the host's terminate waits for it (spec §3.1). The connection
    is still invalidated: the spec's `invalid` is a flag beside the upload request (§3.9). A
    second invalidate asked meanwhile (invalidates do not wait behind other state operations,
    as updates and queries do) is refused by the host. It used to go down to the IM, whose
    entry was invalidated: an IllegalTransition there, a §9 violation, the request answered
    INTERNAL, and the connection never uploaded."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    delay = {"kind": "delay", "layer": "nic0", "call": "MiniportInvalidateOffload", "ms": 300}
    engine.fault_inject(delay)  # the NIC holds the invalidate: it is pending at the host
    first = asyncio.ensure_future(engine.invalidate(conn, "tcp"))
    tcb = engine.host.tcbs[conn]
    await eventually(lambda: tcb.pending_ops, "the host sent its invalidate down")
    failure = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    await eventually(lambda: engine.host.paused, "the host heard the NIC's UPLOAD_ALL")
    assert not first.done()  # the window: invalidated, asked up, not yet terminated
    with pytest.raises(EngineError) as err:
        await asyncio.wait_for(engine.invalidate(conn, "tcp"), 5.0)
    assert err.value.code is ErrorCode.INVALID_STATE, err.value
    assert "invalidated" in err.value.detail
    assert await asyncio.wait_for(first, 5.0) == {"status": "NDIS_STATUS_SUCCESS"}
    engine.fault_clear(failure)
    assert engine.layer_errors == 0
    assert engine.checker is not None and engine.checker.violations == []
    # uploaded for the failure, offloaded again at RESUME: it still carries bytes
    assert await asyncio.wait_for(engine.send(conn, b"still here"), 5.0) == 10
    assert await _read(engine, conn, 10) == b"still here"


@pytest.mark.parametrize("window", [1, 2, 3, 1000])
async def test_the_smallest_receive_windows_still_move_data(
    make_engine: Any, echo_port: int, window: int
) -> None:
    """An update to a tiny InitialRcvWnd (1 is legal, spec §2.2) bounds what the target holds
    to that. It stops reading the socket at the bound and starts again below half of it: at a
    bound of 1 "below half" was below 0, so the first byte stopped the connection for ever."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "offloaded"
    assert await engine.update(conn, {"InitialRcvWnd": window}) == {"status": "NDIS_STATUS_SUCCESS"}
    data = bytes(i % 251 for i in range(100_000))
    assert await engine.send(conn, data) == len(data)  # the echo waits in the sockets
    assert await _read(engine, conn, len(data)) == data


@pytest.mark.parametrize("offload", [False, True], ids=["host", "offloaded"])
async def test_the_smallest_receive_buffer_still_moves_data(
    make_engine: Any, echo_port: int, offload: bool
) -> None:
    """`engine.rx_buffer_bytes` = 1, the smallest the configuration takes: the host (and the
    target, bounded by it) stops reading at every byte held and must read again once it is
    taken."""
    engine = await make_engine(rx_buffer_bytes=1)
    conn = await engine.connect("127.0.0.1", echo_port, offload)
    assert engine.conn_info(conn)["state"] == ("offloaded" if offload else "host")
    for i in range(10):  # each echo arrives while nobody reads: held, and reading stops
        data = bytes((i + j) % 251 for j in range(10_000))
        assert await engine.send(conn, data) == len(data)
        await asyncio.sleep(0.05)
        assert await _read(engine, conn, len(data)) == data
