"""Status paths through the whole stack on real sockets: RST, FIN, failures, limits, faults."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
from structlog.testing import capture_logs

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import LayerConfig
from chimneyd.engine import Engine, _below
from tests.integration.support import RecordingPeer, eventually, fail_next, topology


class Events:
    def __init__(self, engine: Engine) -> None:
        self.seen: list[tuple[int, str, dict[str, Any]]] = []
        engine.subscribe(None, lambda c, e, i: self.seen.append((c, e, i)))

    def names(self, conn: int) -> list[str]:
        return [e for c, e, _ in self.seen if c == conn]

    async def wait(self, conn: int, name: str, timeout: float = 5.0) -> dict[str, Any]:
        end = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < end:
            for c, e, i in self.seen:
                if c == conn and e == name:
                    return i
            await asyncio.sleep(0.005)
        raise AssertionError(f"no {name} for {conn}: {self.names(conn)}")


async def _peer(peers: list[RecordingPeer], n: int = 1) -> RecordingPeer:
    for _ in range(500):
        if len(peers) >= n:
            return peers[n - 1]
        await asyncio.sleep(0.005)
    raise AssertionError("peer never connected")


def _rst(peer: RecordingPeer) -> None:
    sock = peer.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.transport.abort()


async def _received(peer: RecordingPeer, n: int) -> None:
    """Wait (bounded) until the peer has at least `n` bytes."""
    for _ in range(1000):
        if len(peer.received) >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the peer has {len(peer.received)} bytes, not {n}")


def _posted(engine: Engine, conn: int) -> bool:
    """The target holds a receive request of `conn` (its read went all the way down)."""
    return any(h["call"] == "MiniportTcpOffloadReceive" for h in engine.trace(conn, None))


def _resumed(engine: Engine) -> bool:
    """The host knows no target paused (spec §5.5): an offload may go down again."""
    host = next(la for la in engine.info()["layers"] if la["kind"] == "host")
    return not host["paused"]


async def _state(engine: Engine, conn: int, state: str) -> None:
    for _ in range(500):
        if engine.conn_info(conn)["state"] == state:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"connection {conn} is {engine.conn_info(conn)['state']}, not {state}")


async def test_peer_rst_aborts_outstanding_io_then_uploads(
    make_engine: Any, recording: Any
) -> None:
    port, peers = recording
    engine = await make_engine()
    events = Events(engine)
    conn = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers)
    reader = asyncio.ensure_future(engine.recv(conn, 100, 5.0))
    await eventually(lambda: _posted(engine, conn), "the read is posted down as a receive request")
    _rst(peer)  # a real RST from the peer's kernel
    with pytest.raises(EngineError) as err:
        await reader
    assert err.value.code is ErrorCode.NDIS_STATUS
    assert "NDIS_STATUS_REQUEST_ABORTED" in str(err.value)
    await events.wait(conn, "TcpIndicateAbort")
    await events.wait(conn, "uploaded")  # the host answers an abort with a terminate (spec §5.1)
    with pytest.raises(EngineError) as err:
        await engine.send(conn, b"late")
    assert "NDIS_STATUS_REQUEST_ABORTED" in str(err.value)
    # the receive request went down and came back aborted through every layer
    trace = engine.trace(conn, None)
    aborted = [h for h in trace if h["call"] == "ProtocolTcpOffloadReceiveComplete"]
    assert aborted and aborted[-1]["status"] == "NDIS_STATUS_REQUEST_ABORTED"


async def test_injected_peer_reset_fails_sends_in_flight(make_engine: Any, recording: Any) -> None:
    port, peers = recording
    engine = await make_engine()
    events = Events(engine)
    conn = await engine.connect("127.0.0.1", port)
    await _peer(peers)
    # hold the NIC's send so it is outstanding when the RST arrives
    engine.fault_inject(
        {"kind": "delay", "layer": "im0", "call": "MiniportTcpOffloadSend", "ms": 300}
    )
    sending = asyncio.ensure_future(engine.send(conn, b"x" * 1000))
    await eventually(
        lambda: any(
            h["layer"] == "im0" and h["call"] == "MiniportTcpOffloadSend"
            for h in engine.trace(conn, None)
        ),
        "im0 holds the send",
    )
    fid = engine.fault_inject({"kind": "peer_reset", "conn": conn})
    assert fid > 0
    await events.wait(conn, "TcpIndicateAbort")
    with pytest.raises(EngineError) as err:
        await sending
    # the held send reached the NIC after the RST: aborted, nothing of it acknowledged
    assert err.value.code is ErrorCode.NDIS_STATUS
    assert "NDIS_STATUS_REQUEST_ABORTED" in str(err.value)
    assert str(err.value).endswith("acknowledged 0 bytes")
    engine.fault_clear(None)


async def test_peer_fin_after_data_then_half_close_send(make_engine: Any, recording: Any) -> None:
    port, peers = recording
    engine = await make_engine()
    events = Events(engine)
    conn = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers)
    peer.transport.write(b"last words")
    peer.transport.write_eof()
    got = b""
    while len(got) < 10:
        got += await engine.recv(conn, 100, 5.0)
    assert got == b"last words"
    assert await engine.recv(conn, 100, 5.0) == b""  # end of stream, after the data
    info = await events.wait(conn, "TcpIndicateDisconnect")
    assert info == {}
    assert engine.conn_info(conn)["state"] == "offloaded"
    # the send half stays usable after the peer's FIN (spec §5.1)
    assert await engine.send(conn, b"reply") == 5
    await _received(peer, 5)
    assert bytes(peer.received) == b"reply"
    assert await engine.disconnect(conn, False) == "NDIS_STATUS_SUCCESS"


async def test_a_socket_reset_after_the_peers_fin_is_logged_with_who_is_told(
    make_engine: Any, recording: Any
) -> None:
    """After the peer's FIN nothing reads the socket, so the daemon learns of a later RST only
    by the failed write, or by the kernel's state while a send waits. Either way the socket
    goes without the daemon closing it: a `wire_lost` line says so and names the layer told
    (here the NIC carrying the connection), so that a wait that never ends can be traced."""
    port, peers = recording
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers)
    peer.transport.write_eof()
    assert await engine.recv(conn, 100, 5.0) == b""  # end of stream
    with capture_logs() as logs:
        sock = peer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.transport.abort()  # RST
        with pytest.raises(EngineError):
            for _ in range(50):  # until the reset is known: the send fails
                await engine.send(conn, b"x" * 1000)
        await eventually(lambda: any(e["event"] == "wire_lost" for e in logs))
    lost = [e for e in logs if e["event"] == "wire_lost"]
    assert [(e["how"], e["owner"]) for e in lost] == [("reset", "nic0")]
    assert lost[0]["local"] == engine.conn_info(conn)["local"]


async def test_graceful_and_abortive_disconnect(make_engine: Any, recording: Any) -> None:
    port, peers = recording
    engine = await make_engine()
    a = await engine.connect("127.0.0.1", port)
    pa = await _peer(peers, 1)
    await engine.send(a, b"before fin")
    assert await engine.disconnect(a, False) == "NDIS_STATUS_SUCCESS"
    await eventually(lambda: pa.eof, "the peer saw the FIN")
    assert bytes(pa.received) == b"before fin"
    trace = engine.trace(a, None)
    assert [h["call"] for h in trace if "Disconnect" in h["call"]][:2] == [
        "NdisOffloadTcpDisconnect",
        "MiniportTcpOffloadDisconnect",
    ]
    b = await engine.connect("127.0.0.1", port)
    pb = await _peer(peers, 2)
    assert await engine.disconnect(b, True) == "NDIS_STATUS_SUCCESS"
    exc = await asyncio.wait_for(pb.lost, 5.0)
    assert isinstance(exc, ConnectionResetError)  # the RST went out


async def test_target_failure_uploads_everything_and_resume(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine()
    events = Events(engine)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(5)]
    assert all(engine.conn_info(c)["state"] == "offloaded" for c in conns)
    fid = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    for c in conns:
        await events.wait(c, "uploaded")
        await _state(engine, c, "host")
    assert engine.info()["layers"][2]["state"] == "failed"
    # connections go on in the host stack, nothing lost
    for c in conns:
        await engine.send(c, b"still here")
        assert await engine.recv(c, 100, 5.0) == b"still here"
    with pytest.raises(EngineError) as err:
        await engine.offload(conns[0])
    assert err.value.code is ErrorCode.NDIS_STATUS and "PAUSE" in str(err.value)
    engine.fault_clear(fid)
    await eventually(lambda: _resumed(engine), "RESUME reached the host")
    assert (await engine.offload(conns[0]))["state"] == "offloaded"


async def test_im_cannot_relay_send_host_sends_after_upload(
    make_engine: Any, recording: Any
) -> None:
    port, peers = recording
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers)
    engine.fault_inject(
        {
            "kind": "fail_next",
            "layer": "im0",
            "call": "MiniportTcpOffloadSend",
            "status": "NDIS_STATUS_UPLOAD_IN_PROGRESS",
        }
    )
    assert await engine.send(conn, b"relayed by the host") == 19
    await _state(engine, conn, "host")
    trace = engine.trace(conn, None)
    assert any(h["status"] == "NDIS_STATUS_REQUEST_UPLOAD" for h in trace)
    await _received(peer, 19)
    assert bytes(peer.received) == b"relayed by the host"
    # exactly once: a duplicate would be on the wire before the bytes of a later send
    assert await engine.send(conn, b"|") == 1
    await _received(peer, 20)
    assert bytes(peer.received) == b"relayed by the host|"


async def test_hardware_corruption_on_query(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine()
    events = Events(engine)
    conn = await engine.connect("127.0.0.1", echo_port)
    good = await engine.query(conn)
    assert good["State"] == "TcpConnectionEstablished"
    engine.fault_inject(
        {
            "kind": "fail_next",
            "layer": "nic0",
            "call": "MiniportQueryOffload",
            "status": "NDIS_STATUS_FAILURE",
        }
    )
    with pytest.raises(EngineError) as err:
        await engine.query(conn)
    assert "NDIS_STATUS_FAILURE" in str(err.value)
    retrieve = await events.wait(conn, "TcpIndicateRetrieve")
    assert retrieve["reason"] == "HardwareFailure" and retrieve["mandatory"]
    await events.wait(conn, "TcpIndicateAbort")
    await events.wait(conn, "uploaded")
    assert engine.conn_info(conn)["delegated"]["State"] == "TcpConnectionClosed"


@pytest.mark.parametrize("second", ["query", "update", "invalidate"])
async def test_a_state_operation_overlapping_a_corruption_is_answered(
    make_engine: Any, echo_port: int, second: str
) -> None:
    """The host issues a second query, update or invalidate before it has heard that the first
    query found the hardware state corrupt (spec §3.1: they may overlap). The target meets a
    failed connection then: it completes that block with NDIS_STATUS_FAILURE (the state is
    still corrupt, spec §3.7), and the connection is uploaded as after any corruption. The
    engine fixture fails the test on any layer error or invariant violation."""
    engine = await make_engine()
    events = Events(engine)
    conn = await engine.connect("127.0.0.1", echo_port)
    fail_next(engine, "nic0", "MiniportQueryOffload")
    first = asyncio.ensure_future(engine.query(conn))
    if second == "query":
        other = asyncio.ensure_future(engine.query(conn))
    elif second == "update":
        other = asyncio.ensure_future(engine.update(conn, {"KaTimeout": 3000}))
    else:
        other = asyncio.ensure_future(engine.invalidate(conn, "tcp"))
    for op in (first, other):
        with pytest.raises(EngineError) as err:
            await asyncio.wait_for(op, 5.0)
        assert "NDIS_STATUS_FAILURE" in str(err.value)
    await events.wait(conn, "TcpIndicateAbort")
    await events.wait(conn, "uploaded")
    assert engine.conn_info(conn)["state"] == "host"
    assert engine.layer_errors == 0


async def test_updates_asked_together_reach_the_nic_one_at_a_time(
    make_engine: Any, echo_port: int
) -> None:
    """At most one update in flight per object (spec §3.1): a second update the application
    asks for while the first is down waits for the first's completion, then goes down with
    the cached state the first left; the NIC ends with both changes."""
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    before = len(engine.trace(conn, None))
    first = asyncio.ensure_future(engine.update(conn, {"KaTimeout": 3000}))
    second = asyncio.ensure_future(engine.update(conn, {"KaInterval": 700}))
    assert await first == await second == {"status": "NDIS_STATUS_SUCCESS"}
    at_host = [
        h["call"]
        for h in engine.trace(conn, None)[before:]
        if h["layer"] == "tcpip" and "UpdateOffload" in h["call"]
    ]
    assert at_host == ["NdisUpdateOffload", "ProtocolUpdateOffloadComplete"] * 2
    nic = dict(_below(engine.host.tcbs[conn]))["nic0"]
    assert (nic.cached.KaTimeout, nic.cached.KaInterval) == (3000, 700)


async def test_terminate_reports_corruption_then_second_terminate(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine()
    events = Events(engine)
    conn = await engine.connect("127.0.0.1", echo_port)
    engine.fault_inject(
        {
            "kind": "fail_next",
            "layer": "nic0",
            "call": "MiniportTerminateOffload",
            "status": "NDIS_STATUS_FAILURE",
        }
    )
    up = asyncio.ensure_future(engine.upload(conn))
    await events.wait(conn, "TcpIndicateAbort")
    assert (await asyncio.wait_for(up, 5.0))["state"] == "host"
    calls = [h["call"] for h in engine.trace(conn, None) if h["layer"] == "tcpip"]
    assert calls.count("NdisTerminateOffload") == 2  # spec §3.7 step 4: a further terminate


async def test_capacity_limit_keeps_connection_in_host_mode(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine((*topology(1)[:-1], LayerConfig("nic0", "target", (), 2)))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(3)]
    states = [engine.conn_info(c)["state"] for c in conns]
    assert states == ["offloaded", "offloaded", "host"]
    with pytest.raises(EngineError) as err:
        await engine.offload(conns[2])
    assert "NDIS_STATUS_OFFLOAD_TCP_ENTRIES" in str(err.value)
    await engine.send(conns[2], b"host mode works")
    assert await engine.recv(conns[2], 100, 5.0) == b"host mode works"


async def test_query_reports_delegated_state_from_real_bytes(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    start = await engine.query(conn)
    await engine.send(conn, b"y" * 5000)
    got = b""
    while len(got) < 5000:
        got += await engine.recv(conn, 10000, 5.0)
    after = await engine.query(conn)
    assert (after["SndNxt"] - start["SndNxt"]) % (1 << 32) == 5000
    assert (after["SndUna"] - start["SndUna"]) % (1 << 32) == 5000
    assert (after["RcvNxt"] - start["RcvNxt"]) % (1 << 32) == 5000
    # the kernel's state in the spec's units: loopback's µs RTT is not truncated to 0 (spec §8)
    assert after["SRtt"] > 0 and after["RttVar"] > 0
    assert after["CWnd"] > 0 and after["SndWnd"] > 0 and 0 < after["SsThresh"] <= 0xFFFFFFFF
    assert after["RetransmitTimeoutDelta"] == -1  # everything acknowledged: not running


async def test_many_connections_share_neighbor_and_path(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine()
    conns = await asyncio.gather(*(engine.connect("127.0.0.1", echo_port) for _ in range(100)))
    assert len(set(conns)) == 100
    stats = engine.stats()["layers"]
    # 100 TCP objects, one path and one neighbor at every layer
    assert stats["tcpip"]["offloads_active"] == 102
    assert stats["im0"]["handles"] == 102 and stats["nic0"]["handles"] == 102
    payloads = {c: bytes([c % 256]) * 3000 for c in conns}
    await asyncio.gather(*(engine.send(c, p) for c, p in payloads.items()))

    async def read(c: int) -> bytes:
        got = b""
        while len(got) < 3000:
            got += await engine.recv(c, 4000, 5.0)
        return got

    results = await asyncio.gather(*(read(c) for c in conns))
    assert results == [payloads[c] for c in conns]
    initiates = engine.stats()["layers"]["tcpip"]["calls"]["NdisInitiateOffload"]
    assert initiates < 100  # connections offloaded together share initiate trees


async def test_listener_accepts_and_offloads(make_engine: Any) -> None:
    engine = await make_engine()
    lid = await engine.listen("127.0.0.1", 0)
    port = engine.listener_info(lid)["port"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = await engine.accept(lid, 5.0)
    await _state(engine, conn, "offloaded")
    writer.write(b"to the accepted side")
    got = b""
    while len(got) < 20:
        got += await engine.recv(conn, 100, 5.0)
    assert got == b"to the accepted side"
    await engine.send(conn, b"back")
    assert await reader.readexactly(4) == b"back"
    with pytest.raises(EngineError) as err:
        await engine.accept(lid, 0.05)
    assert err.value.code is ErrorCode.TIMEOUT
    writer.close()
    await engine.close_listener(lid)


async def test_recv_timeout_loses_nothing(make_engine: Any, recording: Any) -> None:
    port, peers = recording
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", port)
    peer = await _peer(peers)
    for _ in range(5):
        with pytest.raises(EngineError) as err:
            await engine.recv(conn, 100, 0.01)
        assert err.value.code is ErrorCode.TIMEOUT
    peer.transport.write(b"after the timeouts")
    got = b""
    while len(got) < 18:
        got += await engine.recv(conn, 100, 5.0)
    assert got == b"after the timeouts"


async def test_host_event_uploads_and_withholds_until_cleared(
    make_engine: Any, echo_port: int
) -> None:
    """The `host_event` fault: the host's own reasons to upload (spec §6.2)."""
    engine = await make_engine()
    events = Events(engine)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(3)]
    for conn in conns:
        assert await engine.send(conn, b"before") == 6
    fid = engine.fault_inject({"kind": "host_event", "layer": "nic0", "event": "power_down"})
    for conn in conns:
        assert (await events.wait(conn, "uploaded")) == {"reason": "power_down"}
        await _state(engine, conn, "host")
    assert engine.layers["nic0"].describe()["tcp"] == 0  # type: ignore[attr-defined]
    # once the path and neighbor, terminated after the connections in a call of their own,
    # are gone too (spec §6.2)
    await eventually(lambda: engine.host.withheld["nic0"].power_complete, "the power change")
    with pytest.raises(EngineError) as err:
        await engine.offload(conns[0])
    assert err.value.code is ErrorCode.INVALID_STATE and "power_down" in str(err.value)
    assert await engine.send(conns[0], b"after") == 5  # in the host stack, nothing lost
    got = b""
    while len(got) < 11:
        got += await engine.recv(conns[0], 100, 5.0)
    assert got == b"beforeafter"
    assert engine.fault_list() == [
        {"id": fid, "kind": "host_event", "layer": "nic0", "event": "power_down"}
    ]
    engine.fault_clear(fid)
    await eventually(lambda: _resumed(engine), "RESUME reached the host")
    assert (await engine.offload(conns[0]))["state"] == "offloaded"
    with pytest.raises(EngineError) as err:
        engine.fault_inject({"kind": "host_event", "layer": "im0", "event": "power_down"})
    assert err.value.code is ErrorCode.INVALID_PARAMS  # a target, not an IM


async def test_an_ignored_optional_retrieve_keeps_the_connection_offloaded(
    make_engine: Any, echo_port: int
) -> None:
    """`engine.honor_optional_retrieve = false`: the target carries on (spec §5.2)."""
    engine = await make_engine(honor_optional_retrieve=False)
    events = Events(engine)
    conn = await engine.connect("127.0.0.1", echo_port)
    engine.fault_inject({"kind": "retrieve", "conn": conn, "reason": "LowActivity"})
    info = await events.wait(conn, "TcpIndicateRetrieve")
    assert info == {"reason": "LowActivity", "mandatory": False, "honored": False}
    assert await engine.send(conn, b"still offloaded") == 15
    got = b""
    while len(got) < 15:
        got += await engine.recv(conn, 100, 5.0)
    assert got == b"still offloaded"
    assert engine.conn_info(conn)["state"] == "offloaded" and "uploaded" not in events.names(conn)
    trace = engine.trace(conn, None)
    assert any(h["call"] == "MiniportTcpOffloadSend" for h in trace[-30:])  # through the chimney


async def test_tcp_info_phases_show_where_an_upload_is_held(
    make_engine: Any, recording: Any
) -> None:
    """`tcp.info`'s `phases`: each layer's phase of the connection. While a delay holds the
    terminate at the NIC, the host and the IM are terminating and the NIC still carries the
    connection; after the upload only the host is left."""
    port, peers = recording
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", port)
    await _peer(peers)
    assert engine.conn_info(conn)["phases"] == {
        "tcpip": "OFFLOADED",
        "im0": "OFFLOADED",
        "nic0": "OFFLOADED",
    }
    fid = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportTerminateOffload", "ms": 5000}
    )
    uploading = asyncio.ensure_future(engine.upload(conn))
    await eventually(
        lambda: engine.conn_info(conn)["phases"].get("im0") == "TERMINATING", "im0 terminating"
    )
    assert engine.conn_info(conn)["phases"] == {
        "tcpip": "TERMINATING",
        "im0": "TERMINATING",
        "nic0": "OFFLOADED",
    }
    engine.fault_clear(fid)  # releases the held terminate
    await asyncio.wait_for(uploading, 5)
    assert engine.conn_info(conn)["phases"] == {"tcpip": "IDLE"}
