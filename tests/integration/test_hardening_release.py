"""Faults whose effects must not outlive them: every duration is bounded, and clearing a fault
releases at once, in order, everything it holds (issue: faults whose effects outlive them)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.drivers.target.contexts import TcpContext
from chimneyd.faults import KINDS, MAX_FAULT_MS
from chimneyd.ndis.lifecycle import TcpState
from tests.integration.support import RecordingPeer, eventually

pytestmark = pytest.mark.timeout(60, method="thread")

#: far longer than any wait below: what it holds is released only by clearing it
HOUR_MS = MAX_FAULT_MS
#: a released call must be answered well within this
SOON_S = 2.0


async def _peer(peers: list[RecordingPeer], n: int) -> RecordingPeer:
    for _ in range(500):
        if len(peers) >= n:
            return peers[n - 1]
        await asyncio.sleep(0.005)
    raise AssertionError("peer never connected")


@pytest.mark.parametrize("kind", ["delay", "stall_peer"])
def test_every_duration_has_an_upper_bound(kind: str) -> None:
    ms = KINDS[kind].keys["ms"]
    assert ms.high == MAX_FAULT_MS
    assert ms.low >= 1


@pytest.mark.parametrize("ms", [0, -1, MAX_FAULT_MS + 1, 3_600_000])
async def test_a_duration_past_the_bound_is_refused(make_engine: Any, ms: int) -> None:
    engine = await make_engine()
    spec = {"kind": "delay", "layer": "nic0", "call": "MiniportTcpOffloadSend", "ms": ms}
    with pytest.raises(EngineError) as err:
        engine.fault_inject(spec)
    assert err.value.code is ErrorCode.INVALID_PARAMS
    assert "'ms'" in err.value.detail
    assert engine.fault_list() == []


async def test_clearing_a_delay_releases_held_sends_at_once_in_order(
    make_engine: Any, recording: Any
) -> None:
    """Sends from two connections and a disconnect, all held by a delay at the NIC: cleared,
    every one completes at once, and each peer has its bytes in the order they were sent."""
    port, peers = recording
    engine = await make_engine()
    a = await engine.connect("127.0.0.1", port)
    b = await engine.connect("127.0.0.1", port)
    peer_a, peer_b = await _peer(peers, 1), await _peer(peers, 2)
    fid = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportTcpOffloadSend", "ms": HOUR_MS}
    )
    chunks = [bytes([i]) * (1000 + i) for i in range(20)]
    sends = [asyncio.ensure_future(engine.send(c, chunk)) for chunk in chunks for c in (a, b)]
    # the disconnect queues behind the held sends: a delay reorders nothing
    bye = asyncio.ensure_future(engine.disconnect(a, False))
    await asyncio.sleep(0.2)
    assert not any(s.done() for s in sends) and not bye.done()
    assert bytes(peer_a.received) == b""
    engine.fault_clear(fid)
    done = await asyncio.wait_for(asyncio.gather(*sends), SOON_S)
    assert done == [len(chunk) for chunk in chunks for _ in (a, b)]
    assert await asyncio.wait_for(bye, SOON_S) == "NDIS_STATUS_SUCCESS"
    for _ in range(200):
        if peer_a.eof and len(peer_b.received) == sum(map(len, chunks)):
            break
        await asyncio.sleep(0.01)
    assert bytes(peer_a.received) == b"".join(chunks) and peer_a.eof
    assert bytes(peer_b.received) == b"".join(chunks)
    assert engine.fault_list() == []
    for conn in (a, b):
        await engine.close(conn)


async def test_clearing_one_delay_keeps_anothers(make_engine: Any, recording: Any) -> None:
    """Two delays on one layer: clearing the first releases what it held, and the order of
    calls is still kept behind what the other holds (a delay changes timing, never order)."""
    port, peers = recording
    engine = await make_engine()
    a = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers, 1)
    sends_held = engine.fault_inject(
        {"kind": "delay", "layer": "im0", "call": "MiniportTcpOffloadSend", "ms": HOUR_MS}
    )
    queries_held = engine.fault_inject(
        {"kind": "delay", "layer": "im0", "call": "MiniportQueryOffload", "ms": HOUR_MS}
    )
    first = asyncio.ensure_future(engine.send(a, b"first "))
    query = asyncio.ensure_future(engine.query(a))
    second = asyncio.ensure_future(engine.send(a, b"second"))
    await asyncio.sleep(0.1)
    engine.fault_clear(sends_held)
    # the first send runs; the query is still held, and the second send waits behind it
    assert await asyncio.wait_for(first, SOON_S) == 6
    await asyncio.sleep(0.1)
    assert not query.done() and not second.done()
    engine.fault_clear(queries_held)
    assert (await asyncio.wait_for(query, SOON_S))["State"] == "TcpConnectionEstablished"
    assert await asyncio.wait_for(second, SOON_S) == 6
    for _ in range(200):
        if len(peer.received) == 12:
            break
        await asyncio.sleep(0.01)
    assert bytes(peer.received) == b"first second"
    await engine.close(a)


async def test_clearing_a_stall_releases_the_peer_at_once(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    fid = engine.fault_inject({"kind": "stall_peer", "conn": conn, "ms": HOUR_MS})
    sent = asyncio.ensure_future(engine.send(conn, b"held by the stall"))
    await asyncio.sleep(0.2)
    assert not sent.done()  # no ACK news while the peer is stalled
    assert [f["id"] for f in engine.fault_list()] == [fid]
    engine.fault_clear(fid)
    assert await asyncio.wait_for(sent, SOON_S) == 17
    got = await asyncio.wait_for(engine.recv(conn, 17, SOON_S, True), SOON_S)
    assert got == b"held by the stall"
    assert engine.fault_list() == []
    await engine.close(conn)


async def test_closing_a_connection_held_by_a_delay_is_answered(
    make_engine: Any, echo_port: int
) -> None:
    """A close behind held calls waits for them (order), and clearing releases all of it."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    fid = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportTerminateOffload", "ms": HOUR_MS}
    )
    closing = asyncio.ensure_future(engine.close(conn))
    await asyncio.sleep(0.1)
    assert not closing.done()
    engine.fault_clear(fid)
    await asyncio.wait_for(closing, SOON_S)
    assert engine.conn_ids() == []


async def test_peer_fin_while_our_disconnect_is_held(make_engine: Any, recording: Any) -> None:
    """Our FIN held at the NIC while the peer's arrives, then a close: the host saw FIN_WAIT_1
    then CLOSING, the target CLOSE_WAIT then LAST_ACK. Both say the same (both FINs out, ours
    unacknowledged); the upload must not take them for a contradiction (it raised, and the
    close was answered INTERNAL)."""
    port, peers = recording
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers, 1)
    engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportTcpOffloadDisconnect", "ms": 300}
    )
    bye = asyncio.ensure_future(engine.disconnect(conn, False))
    await asyncio.sleep(0.1)
    peer.transport.write_eof()
    await asyncio.sleep(0.05)
    closing = asyncio.ensure_future(engine.close(conn))
    # closed before it completed: the disconnect is aborted, the close answered
    assert await asyncio.wait_for(bye, SOON_S) in (
        "NDIS_STATUS_SUCCESS",
        "NDIS_STATUS_REQUEST_ABORTED",
    )
    await asyncio.wait_for(closing, SOON_S)
    assert engine.layer_errors == 0


@pytest.mark.parametrize("how", ["abortive_disconnect", "peer_reset"])
async def test_sends_acknowledged_before_an_abort_complete_successfully(
    make_engine: Any, echo_port: int, how: str
) -> None:
    """Sends the peer acknowledged whole but the NIC had not yet heard of (a stalled peer
    holds the news) when the connection is aborted: each completes SUCCESS. They completed
    REQUEST_ABORTED with every byte transferred: several partial NBLs in one completion
    (spec §9 item 3), and a client told its acknowledged bytes were dropped."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    engine.fault_inject({"kind": "stall_peer", "conn": conn, "ms": HOUR_MS})
    sends = [asyncio.ensure_future(engine.send(conn, bytes([i]) * 1000)) for i in range(5)]
    await asyncio.sleep(0.2)  # the kernel has them acknowledged; the NIC has not heard
    if how == "peer_reset":
        engine.fault_inject({"kind": "peer_reset", "conn": conn})
    else:
        assert await engine.disconnect(conn, True) == "NDIS_STATUS_SUCCESS"
    assert await asyncio.wait_for(asyncio.gather(*sends), SOON_S) == [1000] * 5
    assert engine.checker.violations == []
    engine.fault_clear(None)
    await engine.close(conn)


@pytest.mark.parametrize(
    "status",
    ["NDIS_STATUS_FAILURE", "NDIS_STATUS_REQUEST_ABORTED", "NDIS_STATUS_UPLOAD_IN_PROGRESS"],
)
async def test_a_refused_disconnect_never_overtakes_earlier_sends(
    make_engine: Any, echo_port: int, status: str
) -> None:
    """A disconnect the NIC refuses while earlier sends wait for their ACK completes after
    them (spec §9 item 2); it completed at once, before them."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    engine.fault_inject(
        {
            "kind": "fail_next",
            "layer": "nic0",
            "call": "MiniportTcpOffloadDisconnect",
            "status": status,
        }
    )
    stall = engine.fault_inject({"kind": "stall_peer", "conn": conn, "ms": 300})
    sent = asyncio.ensure_future(engine.send(conn, b"before the disconnect" * 100))
    bye = asyncio.ensure_future(engine.disconnect(conn, False))
    answers = await asyncio.wait_for(asyncio.gather(sent, bye), SOON_S)
    assert answers[0] == 2100
    assert engine.checker.violations == []
    engine.fault_clear(stall)
    await engine.close(conn)


@pytest.mark.parametrize("acked", [False, True], ids=["fin_unacked", "fin_acked"])
@pytest.mark.parametrize("end", ["upload", "close"])
async def test_peer_fin_held_behind_unread_data_while_we_disconnect(
    make_engine: Any, recording: Any, end: str, acked: bool
) -> None:
    """The peer's data fills the host's receive buffer and its FIN follows: the target holds
    the FIN's indication behind the bytes it keeps (spec §5.1). Our disconnect sends our FIN
    meanwhile: the host is FIN_WAIT_1 (or FIN_WAIT_2 once ours is acknowledged) and the target
    LAST_ACK (or, acknowledged, CLOSED). An upload or close hands that back, and the host must
    take the peer's FIN from it. LAST_ACK was taken for a contradiction (answered INTERNAL),
    CLOSED for a reset: the application read "connection reset" where the stream had ended."""
    port, peers = recording
    engine = await make_engine(rx_buffer_bytes=4096)
    conn = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers, 1)
    data = bytes(range(256)) * 22  # more than the host holds unread, less than both layers
    peer.transport.write(data)
    peer.transport.write_eof()
    tcb = engine.host.tcbs[conn]
    (ctx,) = [c for c in engine.target_layer("nic0").table if isinstance(c, TcpContext)]
    await eventually(
        lambda: ctx.rx.fin is not None and ctx.buffered_bytes > 0,
        "the target holds bytes with the peer's FIN behind them",
    )
    if acked:
        assert (
            await asyncio.wait_for(engine.disconnect(conn, False), SOON_S) == "NDIS_STATUS_SUCCESS"
        )
        assert tcb.lifecycle.tcp is TcpState.FIN_WAIT_2
        assert ctx.lifecycle.tcp is TcpState.CLOSED
        bye = None
    else:
        # a stalled peer: the target hears of no ACK, so our FIN stays unacknowledged
        engine.fault_inject({"kind": "stall_peer", "conn": conn, "ms": HOUR_MS})
        bye = asyncio.ensure_future(engine.disconnect(conn, False))
        await eventually(lambda: ctx.lifecycle.tcp is TcpState.LAST_ACK, "our FIN left")
        assert tcb.lifecycle.tcp is TcpState.FIN_WAIT_1
    if end == "close":
        await asyncio.wait_for(engine.close(conn), SOON_S)
        if bye is not None:
            assert await asyncio.wait_for(bye, SOON_S) in (
                "NDIS_STATUS_SUCCESS",
                "NDIS_STATUS_REQUEST_ABORTED",
            )
    else:
        await asyncio.wait_for(engine.upload(conn), SOON_S)
        # CLOSING, or TIME_WAIT once our FIN is acknowledged (the host carries it again)
        assert tcb.lifecycle.tcp in (TcpState.CLOSING, TcpState.TIME_WAIT)
        assert not tcb.reset
        got = b""
        while chunk := await engine.recv(conn, 65536, SOON_S):
            got += chunk
        assert got == data  # every byte once, in order, then the end of the stream
        engine.fault_clear(None)
        if bye is not None:
            assert await asyncio.wait_for(bye, SOON_S) == "NDIS_STATUS_SUCCESS"
    assert engine.layer_errors == 0
    assert engine.checker.violations == []
