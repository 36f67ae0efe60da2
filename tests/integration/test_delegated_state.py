"""The delegated state on real loopback sockets: what goes down at offload and comes back in a
query or an upload is the kernel's TCP state, in the spec's units (spec §2.2, §3.3, §3.6.3, §8)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chimneyd.drivers import delegated as dl
from chimneyd.drivers.wire import TcpInfo
from chimneyd.engine import Engine
from chimneyd.ndis.blocks import BlockKind, walk

ULONG = 0xFFFFFFFF
NOT_RUNNING = -1


async def _echo(engine: Engine, conn: int, n: int) -> None:
    await engine.send(conn, b"d" * n)
    got = 0
    while got < n:
        got += len(await engine.recv(conn, n, 5.0))


def _kernel(engine: Engine, conn: int) -> TcpInfo:
    return engine.host.tcbs[conn].wire.tcp_info()


def _sock(engine: Engine, conn: int) -> Any:
    transport = engine.host.tcbs[conn].wire.transport  # type: ignore[attr-defined]
    return transport.get_extra_info("socket")


def _assert_runnable(d: dict[str, Any]) -> None:
    """What a real target needs to carry on: windows, RTT and thresholds the kernel has."""
    assert d["CWnd"] > 0 and d["SndWnd"] > 0
    assert d["MaxSndWnd"] >= d["SndWnd"]
    assert d["SRtt"] > 0 and d["RttVar"] > 0  # loopback's µs RTT is not rounded to 0
    assert 0 < d["SsThresh"] <= ULONG
    assert d["SendWL1"] == d["RcvNxt"]
    assert d["TsTime"] > 0


async def test_offload_hands_the_target_the_kernels_state(make_engine: Any, echo_port: int) -> None:
    got: list[dict[str, Any]] = []
    engine = await make_engine()
    handlers = engine.driver_layer("nic0").chimney_handlers  # what NDIS dispatches by
    initiate = handlers["MiniportInitiateOffload"]

    def record(root: Any) -> None:
        got.extend(b.delegated.as_map() for b in walk(root) if b.kind is BlockKind.TCP)
        initiate(root)

    handlers["MiniportInitiateOffload"] = record
    conn = await engine.connect("127.0.0.1", echo_port, offload=False)
    await _echo(engine, conn, 5000)  # an RTT sample, a grown window
    await engine.offload(conn)
    assert len(got) == 1
    down = got[0]
    _assert_runnable(down)
    kernel = _kernel(engine, conn)
    assert down["SsThresh"] == dl.ssthresh_bytes(kernel)
    # everything sent was acknowledged: no retransmit timer; keepalive is off
    assert down["SndUna"] == down["SndMax"]
    assert down["RetransmitTimeoutDelta"] == NOT_RUNNING
    assert down["KeepAliveTimeoutDelta"] == NOT_RUNNING
    info = engine.conn_info(conn)
    assert info["delegated"] == down  # tcp.info shows what went down, and says so
    assert info["delegated_source"] == "offload"


async def test_offload_at_connect_is_runnable_too(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    # the handshake gave the kernel its first RTT sample
    _assert_runnable(engine.conn_info(conn)["delegated"])


async def test_query_after_traffic_reports_srtt_in_8x_ticks(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    await _echo(engine, conn, 20_000)
    before = _kernel(engine, conn)
    q = await engine.query(conn)
    after = _kernel(engine, conn)
    assert q["SRtt"] > 0
    bounds = sorted((dl.srtt_x8(before.rtt_us), dl.srtt_x8(after.rtt_us)))
    assert bounds[0] <= q["SRtt"] <= bounds[1]
    bounds = sorted((dl.rttvar_x4(before.rttvar_us), dl.rttvar_x4(after.rttvar_us)))
    assert bounds[0] <= q["RttVar"] <= bounds[1]
    assert after.snd_wnd is None or q["SndWnd"] == dl.snd_wnd_bytes(after)
    assert q["RetransmitTimeoutDelta"] == NOT_RUNNING  # all acknowledged
    assert q["TsRecent"] == 0 and q["TsRecentAge"] >= 0


PAYLOAD = 512 * 1024  # more than the peer's receive buffer and our send buffer hold


@pytest.fixture
async def silent_listener() -> AsyncIterator[socket.socket]:
    """A peer's listening socket whose connections read nothing until told to. Its receive
    buffer is set before listen, so the window it offers is bounded from the first SYN, yet
    wider than loopback's MSS (narrower, the kernel would send only when a probe timer fires)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    yield sock
    sock.close()


async def _drain(peer: socket.socket, n: int) -> None:
    loop = asyncio.get_running_loop()
    while n > 0:
        data = await loop.sock_recv(peer, 65536)
        assert data, "the connection closed early"
        n -= len(data)


async def test_retransmit_timer_runs_while_the_peer_holds_data_back(
    make_engine: Any, silent_listener: socket.socket
) -> None:
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", silent_listener.getsockname()[1])
    peer, _ = await asyncio.get_running_loop().sock_accept(silent_listener)
    try:
        assert (await engine.query(conn))["RetransmitTimeoutDelta"] == NOT_RUNNING
        sending = asyncio.ensure_future(engine.send(conn, b"s" * PAYLOAD))
        for _ in range(500):  # until the peer's window is shut and bytes wait
            k = _kernel(engine, conn)
            if (k.unacked or k.notsent_bytes) and k.snd_wnd in (0, None):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"the peer's window never closed: {_kernel(engine, conn)}")
        deltas = []
        for _ in range(5):
            q = await engine.query(conn)
            assert (q["SndMax"] - q["SndUna"]) % (1 << 32) > 0  # data outstanding
            assert q["SndWnd"] == 0 or k.snd_wnd is None  # the peer's window, shut
            deltas.append(q["RetransmitTimeoutDelta"])
            if deltas[-1] > 0:
                break
            await asyncio.sleep(0.01)
        # ticks left (0 only if it was just firing), never -1, never past Linux's longest timer
        assert all(0 <= d <= dl.TCP_RTO_MAX_MS for d in deltas), deltas
        assert deltas[-1] > 0, deltas
        assert not sending.done()
        await asyncio.wait_for(asyncio.gather(sending, _drain(peer, PAYLOAD)), 10.0)
        assert sending.result() == PAYLOAD
        q = await engine.query(conn)
        assert q["SndUna"] == q["SndMax"] and q["RetransmitTimeoutDelta"] == NOT_RUNNING
    finally:
        peer.close()


async def test_keepalive_timer_follows_the_socket(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    q = await engine.query(conn)
    assert (q["KeepAliveTimeoutDelta"], q["KeepAliveProbeCount"]) == (NOT_RUNNING, 0)
    sock = _sock(engine, conn)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
    q = await engine.query(conn)
    assert 0 < q["KeepAliveTimeoutDelta"] <= 30_000  # ticks (ms) left of the 30 s idle time
    assert q["KeepAliveProbeCount"] == 0
    await engine.upload(conn)  # terminate hands the running timer back too (spec §3.6.3)
    info = engine.conn_info(conn)
    assert info["delegated_source"] == "upload"
    assert 0 < info["delegated"]["KeepAliveTimeoutDelta"] <= 30_000


async def test_tcp_info_says_what_its_delegated_block_is(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    first = engine.conn_info(conn)
    assert first["delegated_source"] == "offload"
    assert first["delegated_age_ms"] >= 0
    await _echo(engine, conn, 1000)
    live = await engine.query(conn)
    assert "delegated_source" not in live  # the query answer is the delegated state alone
    second = engine.conn_info(conn)
    assert second["delegated_source"] == "query"
    assert second["delegated"] == live
    assert second["delegated_at_ms"] >= first["delegated_at_ms"]
    await engine.upload(conn)
    third = engine.conn_info(conn)
    assert third["delegated_source"] == "upload" and third["state"] == "host"
    assert third["delegated_at_ms"] >= second["delegated_at_ms"]
