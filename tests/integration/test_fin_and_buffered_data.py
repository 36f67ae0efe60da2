"""The peer's FIN known to the host while unread bytes go down as `BufferedData` and come back
at an upload (spec §3.2.3, §3.6.3, §5.1): every byte is read once, in order, then the end of
stream; the FIN is indicated once; the spec §9 checker sees nothing wrong."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import uvloop

from chimneyd.config import DEFAULT_LAYERS, EngineConfig
from chimneyd.engine import start_engine
from tests.integration.support import RecordingPeer, assert_clean, drained, topology


async def _scenario(n_im: int, read_first: int, moves: int, offloaded_fin: bool) -> None:
    loop = asyncio.get_running_loop()
    peers: list[RecordingPeer] = []
    server = await loop.create_server(lambda: RecordingPeer(peers), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = await start_engine(
        # offloaded, a small host buffer leaves the unread bytes with the target
        EngineConfig(invariants=True, rx_buffer_bytes=(16 if offloaded_fin else 256) * 1024),
        topology(n_im) if n_im != 1 else DEFAULT_LAYERS,
    )
    try:
        conn = await engine.connect("127.0.0.1", port)
        while not peers:
            await asyncio.sleep(0.001)
        peer = peers[0]
        events: list[tuple[str, dict[str, Any]]] = []
        engine.subscribe(conn, lambda _c, ev, info: events.append((ev, info)))
        if not offloaded_fin:
            assert (await engine.upload(conn))["state"] == "host"
        data = random.Random(n_im * 1000 + read_first).randbytes(100_000)
        peer.transport.write(data)
        got = bytearray()
        while len(got) < read_first:
            got += await engine.recv(conn, read_first - len(got), 5.0)
        peer.transport.write_eof()
        # offloaded, the target indicates the FIN only once every byte before it was taken
        expected = not offloaded_fin or read_first == len(data)
        for _ in range(500 if expected else 30):
            if any(ev == "TcpIndicateDisconnect" for ev, _ in events):
                break
            await asyncio.sleep(0.01)
        assert any(ev == "TcpIndicateDisconnect" for ev, _ in events) is expected
        for _ in range(moves):
            # the unread bytes go down with the connection and come back with it
            assert (await engine.offload(conn))["state"] == "offloaded"
            assert (await engine.upload(conn))["state"] == "host"
        while len(got) < len(data):
            chunk = await engine.recv(conn, 1 << 20, 5.0)
            assert chunk, "end of stream before every byte the peer sent"
            got += chunk
        assert bytes(got) == data
        assert await engine.recv(conn, 10, 5.0) == b""
        assert [ev for ev, _ in events].count("TcpIndicateDisconnect") == 1
        await engine.close(conn)
        stats = await drained(engine)
        assert_clean(engine, stats)
    finally:
        await engine.shutdown(2.0)
        server.close()
        for p in peers:
            p.transport.abort()


@pytest.mark.parametrize("n_im", [0, 1, 2])
@pytest.mark.parametrize("read_first", [0, 40_000, 100_000])
@pytest.mark.parametrize("moves", [1, 3])
def test_fin_known_to_the_host_survives_offload_and_upload(
    n_im: int, read_first: int, moves: int
) -> None:
    uvloop.run(asyncio.wait_for(_scenario(n_im, read_first, moves, False), 20))


@pytest.mark.parametrize("read_first", [0, 40_000, 100_000])
def test_fin_the_target_received_survives_uploads(read_first: int) -> None:
    uvloop.run(asyncio.wait_for(_scenario(1, read_first, 2, True), 20))


async def _waitall_after_the_fin(n_im: int) -> None:
    loop = asyncio.get_running_loop()
    peers: list[RecordingPeer] = []
    server = await loop.create_server(lambda: RecordingPeer(peers), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = await start_engine(
        EngineConfig(invariants=True), topology(n_im) if n_im != 1 else DEFAULT_LAYERS
    )
    try:
        conn = await engine.connect("127.0.0.1", port)
        while not peers:
            await asyncio.sleep(0.001)
        events: list[str] = []
        engine.subscribe(conn, lambda _c, ev, _info: events.append(ev))
        assert (await engine.upload(conn))["state"] == "host"
        data = random.Random(n_im).randbytes(30_000)
        peers[0].transport.write(data)
        peers[0].transport.write_eof()
        for _ in range(500):  # the host has read every byte and the FIN: CLOSE_WAIT
            if "TcpIndicateDisconnect" in events:
                break
            await asyncio.sleep(0.01)
        assert "TcpIndicateDisconnect" in events
        # the bytes go down with the connection; a read for more than they are, made while
        # the initiate is below, ends at the FIN the target was told of, with all of them
        # (spec §3.2.3, §4.2, §5.1)
        held = engine.fault_inject(
            {"kind": "delay", "layer": "nic0", "call": "MiniportInitiateOffload", "ms": 100}
        )
        offload = asyncio.ensure_future(engine.offload(conn))
        while engine.conn_info(conn)["state"] != "offloading":
            await asyncio.sleep(0.001)
        got = await engine.recv(conn, 1 << 20, 5.0, waitall=True)
        assert (await offload)["state"] == "offloaded"
        engine.fault_clear(held)
        assert got == data
        assert await engine.recv(conn, 10, 5.0) == b""
        await engine.close(conn)
        stats = await drained(engine)
        assert_clean(engine, stats)
    finally:
        await engine.shutdown(2.0)
        server.close()
        for p in peers:
            p.transport.abort()


@pytest.mark.parametrize("n_im", [0, 1, 2])
def test_a_waitall_read_after_an_offload_in_close_wait_ends_at_the_fin(n_im: int) -> None:
    uvloop.run(asyncio.wait_for(_waitall_after_the_fin(n_im), 20))
