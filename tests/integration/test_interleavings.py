"""Property: random interleavings of application calls, state changes and peer events, on real
sockets through host → IM → NIC, keep every byte exactly once and in order, satisfy the spec §9
invariant checker, and leave every table at zero."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import DEFAULT_LAYERS, EngineConfig
from chimneyd.engine import start_engine
from tests.integration.support import RecordingPeer, assert_clean, drained, examples, topology

ACTIONS = st.one_of(
    st.tuples(st.just("send"), st.integers(1, 200_000)),
    st.tuples(st.just("peer_send"), st.integers(1, 200_000)),
    st.tuples(st.just("peer_fin"), st.none()),  # the peer's sends end mid-way
    st.tuples(st.just("recv"), st.integers(1, 100_000)),
    st.tuples(st.just("upload"), st.none()),
    st.tuples(st.just("offload"), st.none()),
    st.tuples(st.just("query"), st.none()),
    st.tuples(st.just("settle"), st.none()),
    st.tuples(
        st.just("delay"),
        st.sampled_from(
            [
                "MiniportTcpOffloadSend",
                "MiniportTcpOffloadReceive",
                "MiniportInitiateOffload",
                "MiniportTerminateOffload",
            ]
        ),
    ),
)
ENDINGS = st.sampled_from(["none", "peer_fin", "disconnect", "peer_rst"])


async def _scenario(actions: list[tuple[str, Any]], ending: str, n_im: int, seed: int) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    peers: list[RecordingPeer] = []
    server = await loop.create_server(lambda: RecordingPeer(peers), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = await start_engine(
        EngineConfig(invariants=True, rx_buffer_bytes=64 * 1024),
        topology(n_im) if n_im != 1 else DEFAULT_LAYERS,
    )
    try:
        conn = await engine.connect("127.0.0.1", port)
        while not peers:
            await asyncio.sleep(0.001)
        peer = peers[0]
        ours = bytearray()  # what we sent, in order
        theirs = bytearray()  # what the peer sent
        got = bytearray()  # what we read
        sends: list[asyncio.Task[int]] = []
        peer_fin = False  # the peer sent its FIN
        for action, arg in actions:
            if action == "send":
                data = rng.randbytes(arg)
                ours += data
                sends.append(asyncio.ensure_future(engine.send(conn, data)))
            elif action == "peer_send" and not peer_fin:
                data = rng.randbytes(arg)
                theirs += data
                peer.transport.write(data)
            elif action == "peer_fin" and not peer_fin:
                peer_fin = True
                peer.transport.write_eof()
            elif action == "recv":
                try:
                    got += await engine.recv(conn, arg, 0.02)
                except EngineError as err:
                    assert err.code is ErrorCode.TIMEOUT
            elif action == "upload":
                assert (await engine.upload(conn))["state"] == "host"
            elif action == "offload":
                assert (await engine.offload(conn))["state"] == "offloaded"
            elif action == "query":
                try:
                    d = await engine.query(conn)
                    assert d["State"] in ("TcpConnectionEstablished", "TcpConnectionCloseWait")
                except EngineError as err:
                    assert err.code is ErrorCode.INVALID_STATE  # not offloaded right now
            elif action == "settle":
                await asyncio.sleep(0.005)
            elif action == "delay":
                fid = engine.fault_inject({"kind": "delay", "layer": "nic0", "call": arg, "ms": 2})
                loop.call_later(0.01, engine.fault_clear, fid)
        if ending == "peer_rst":
            peer.transport.abort()  # connection_lost with an RST only if unread data; either way
            await asyncio.gather(*sends, return_exceptions=True)
        else:
            if ending == "peer_fin" and not peer_fin:
                peer_fin = True
                peer.transport.write_eof()
            sent = await asyncio.gather(*sends)
            assert sum(sent) == len(ours)
            while len(got) < len(theirs):
                chunk = await engine.recv(conn, 1 << 20, 5.0)
                assert chunk, "end of stream before every byte the peer sent"
                got += chunk
            assert bytes(got) == bytes(theirs)
            if peer_fin:
                assert await engine.recv(conn, 10, 5.0) == b""
            for _ in range(500):
                if len(peer.received) >= len(ours):
                    break
                await asyncio.sleep(0.002)
            assert bytes(peer.received) == bytes(ours)
            if ending == "disconnect":
                assert await engine.disconnect(conn, False) == "NDIS_STATUS_SUCCESS"
        await engine.close(conn)
        stats = await drained(engine)
        assert_clean(engine, stats)
    finally:
        report = await engine.shutdown(2.0)
        server.close()
        for p in peers:
            p.transport.abort()
    assert report["left_over"] == {}


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    actions=st.lists(ACTIONS, min_size=1, max_size=25),
    ending=ENDINGS,
    n_im=st.sampled_from([0, 1, 2]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_interleavings_keep_bytes_and_invariants(
    actions: list[tuple[str, Any]], ending: str, n_im: int, seed: int
) -> None:
    uvloop.run(asyncio.wait_for(_scenario(actions, ending, n_im, seed), 15))
