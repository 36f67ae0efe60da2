"""A graceful disconnect refused (a `fail_next` status) behind sends the peer has not yet
acknowledged, then an upload: the terminate completes the disconnect with its own status and
hands the sends back after it (spec §3.6.3). Every byte still reaches the peer once, in order,
and the spec §9 checker sees nothing wrong."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvloop

from chimneyd.config import EngineConfig
from chimneyd.engine import start_engine
from tests.integration.support import RecordingPeer, assert_clean, drained, topology


async def _scenario(n_im: int, status: str) -> None:
    loop = asyncio.get_running_loop()
    peers: list[RecordingPeer] = []
    server = await loop.create_server(lambda: RecordingPeer(peers), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = await start_engine(EngineConfig(invariants=True), topology(n_im))
    try:
        conn = await engine.connect("127.0.0.1", port)
        while not peers:
            await asyncio.sleep(0.001)
        peer = peers[0]
        peer.transport.pause_reading()  # the peer's window closes: the sends stay unacked
        data = bytes(range(256)) * 4096 * 8  # 8 MiB
        sends = [
            asyncio.ensure_future(engine.send(conn, data[i : i + (1 << 20)]))
            for i in range(0, len(data), 1 << 20)
        ]
        await asyncio.sleep(0.3)
        engine.fault_inject(
            {
                "kind": "fail_next",
                "layer": "nic0",
                "call": "MiniportTcpOffloadDisconnect",
                "status": status,
                "count": 1,
            }
        )
        disc = asyncio.ensure_future(engine.disconnect(conn, False))
        await asyncio.sleep(0.2)
        up = asyncio.ensure_future(engine.upload(conn))
        await asyncio.sleep(0.2)
        peer.transport.resume_reading()
        results: list[Any] = await asyncio.gather(*sends, disc, up, return_exceptions=True)
        # refused with UPLOAD_IN_PROGRESS, the host sends the FIN itself after the upload;
        # refused with a failure, the disconnect failed and no FIN goes out (spec §4.5)
        redone = status == "NDIS_STATUS_UPLOAD_IN_PROGRESS"
        assert results[-2:] == ["NDIS_STATUS_SUCCESS" if redone else status, {"state": "host"}]
        assert sum(results[:-2]) == len(data)
        for _ in range(500):
            if len(peer.received) >= len(data) and peer.eof is redone:
                break
            await asyncio.sleep(0.01)
        assert bytes(peer.received) == data
        assert peer.eof is redone
        await engine.close(conn)
        stats = await drained(engine)
        assert engine.checker is not None
        assert engine.checker.violations == []
        assert_clean(engine, stats)
    finally:
        await engine.shutdown(2.0)
        server.close()
        for p in peers:
            p.transport.abort()


@pytest.mark.parametrize("n_im", [0, 1])
@pytest.mark.parametrize("status", ["NDIS_STATUS_FAILURE", "NDIS_STATUS_UPLOAD_IN_PROGRESS"])
def test_refused_disconnect_then_upload(n_im: int, status: str) -> None:
    uvloop.run(asyncio.wait_for(_scenario(n_im, status), 30))
