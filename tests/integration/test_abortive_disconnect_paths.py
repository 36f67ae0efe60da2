"""Two abortive-disconnect paths of the host (spec §4.5), on a real stack and a real peer:

* the NIC answers an abortive disconnect `NDIS_STATUS_UPLOAD_IN_PROGRESS`: the host uploads the
  connection and resets it itself, on the socket it now carries (spec §4.1, §4.5 [INF]);
* an abortive disconnect arrives while a graceful one waits behind sends still queued for
  room in the send backlog: the RST wins, the graceful one and the queued sends end aborted,
  and what did go down reached the peer once, in order (spec §4.5, §5.3).

Either way the peer sees the reset, the spec §9 checker sees nothing wrong, and every table
drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvloop

from chimneyd.config import EngineConfig
from chimneyd.engine import Engine, start_engine
from tests.integration.support import RecordingPeer, assert_clean, drained, topology

ABORTED = "NDIS_STATUS_REQUEST_ABORTED"


@asynccontextmanager
async def _connection(n_im: int) -> AsyncIterator[tuple[Engine, int, RecordingPeer]]:
    """An offloaded connection to a recording peer on host → n_im IMs → nic0, the checker on;
    on the way out it is closed, and the checker and every table must be clean."""
    loop = asyncio.get_running_loop()
    peers: list[RecordingPeer] = []
    server = await loop.create_server(lambda: RecordingPeer(peers), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = await start_engine(EngineConfig(invariants=True), topology(n_im))
    try:
        conn = await engine.connect("127.0.0.1", port)
        while not peers:
            await asyncio.sleep(0.001)
        yield engine, conn, peers[0]
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


async def _refused_abortive(n_im: int) -> None:
    async with _connection(n_im) as (engine, conn, peer):
        assert engine.conn_info(conn)["state"] == "offloaded"
        assert await engine.send(conn, b"before the reset") == 16
        engine.fault_inject(
            {
                "kind": "fail_next",
                "layer": "nic0",
                "call": "MiniportTcpOffloadDisconnect",
                "status": "NDIS_STATUS_UPLOAD_IN_PROGRESS",
                "count": 1,
            }
        )
        result = await asyncio.wait_for(engine.disconnect(conn, True), 10)
        # the host uploaded without being asked to, then reset the connection itself
        assert result == "NDIS_STATUS_SUCCESS"
        assert engine.conn_info(conn)["state"] == "host"
        lost = await asyncio.wait_for(peer.lost, 5)
        assert isinstance(lost, ConnectionResetError), lost
        assert bytes(peer.received) == b"before the reset"
        assert not peer.eof  # an RST, not a FIN


async def _abortive_over_queued_fin(n_im: int) -> None:
    async with _connection(n_im) as (engine, conn, peer):
        # the host paces its sends by the NIC's send backlog once it knows it (spec §5.3)
        await engine.query(conn)
        peer.transport.pause_reading()  # the peer's window closes: the backlog fills
        data = bytes(range(256)) * 4096 * 8  # 8 MiB, more than the send backlog takes
        sends = [
            asyncio.ensure_future(engine.send(conn, data[i : i + (1 << 20)]))
            for i in range(0, len(data), 1 << 20)
        ]
        await asyncio.sleep(0.3)
        graceful = asyncio.ensure_future(engine.disconnect(conn, False))
        await asyncio.sleep(0.1)
        assert not graceful.done()  # its FIN waits behind the queued sends
        abortive = await asyncio.wait_for(engine.disconnect(conn, True), 10)
        # the RST wins at once: the graceful disconnect is answered as the abortive one is
        # issued, not after the upload the abortive one leads to
        assert graceful.done()
        results: list[Any] = await asyncio.gather(*sends, graceful, return_exceptions=True)
        assert abortive == "NDIS_STATUS_SUCCESS"
        assert results[-1] == ABORTED
        # the graceful disconnect never went down: the one disconnect the host called is the
        # abortive one
        calls = [(h["layer"], h["call"]) for h in engine.trace(conn, None)]
        assert calls.count(("tcpip", "NdisOffloadTcpDisconnect")) == 1, calls
        failed = [r for r in results[:-1] if not isinstance(r, int)]
        assert failed, "every send went down: the test did not queue any behind the backlog"
        sent = [r for r in results[:-1] if isinstance(r, int)]
        # the sends that completed did so in order, before those the RST cut off
        assert results[: len(sent)] == sent
        peer.transport.resume_reading()
        lost = await asyncio.wait_for(peer.lost, 5)
        assert isinstance(lost, ConnectionResetError), lost
        # what reached the peer is a prefix of the stream: nothing out of order, nothing twice
        assert bytes(peer.received) == data[: len(peer.received)]
        assert not peer.eof


@pytest.mark.parametrize("n_im", [0, 1])
def test_an_abortive_disconnect_refused_with_upload_in_progress(n_im: int) -> None:
    uvloop.run(asyncio.wait_for(_refused_abortive(n_im), 30))


@pytest.mark.parametrize("n_im", [0, 1])
def test_an_abortive_disconnect_over_a_graceful_one_still_queued(n_im: int) -> None:
    uvloop.run(asyncio.wait_for(_abortive_over_queued_fin(n_im), 30))
