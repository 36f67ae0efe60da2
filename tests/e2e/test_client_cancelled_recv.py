"""A `tcp.recv` or `tcp.accept` the caller cancels (`asyncio.wait_for`, `asyncio.timeout`, a
task cancelled) loses nothing: the daemon's wait cannot be withdrawn and still takes the next
bytes (connection), so the client keeps what its answer carries for the next read of that
connection (accept of that listener) (contract tcp.recv: no data is lost)."""

from __future__ import annotations

import asyncio
import contextlib
import random

from chimney_client import PeerServer
from tests.e2e.support import (
    HOST,
    Daemon,
    assert_a_lost_accept_loses_no_connection,
    assert_a_lost_read_loses_no_bytes,
)


async def test_a_cancelled_recv_loses_no_bytes(daemon: Daemon, echo_peer: PeerServer) -> None:
    c = await daemon.aclient(call_timeout=None)
    await assert_a_lost_read_loses_no_bytes(
        c, echo_peer.port, lambda cid: asyncio.wait_for(c.tcp_recv(cid, 100), 0.3), TimeoutError
    )


async def test_a_cancelled_accept_loses_no_connection(daemon: Daemon) -> None:
    c = await daemon.aclient(call_timeout=None)
    await assert_a_lost_accept_loses_no_connection(
        c, lambda lid: asyncio.wait_for(c.tcp_accept(lid), 0.3), TimeoutError
    )


async def test_reads_cancelled_at_any_moment_keep_the_stream_whole(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    """Reads cancelled before they are sent, while they wait, or as their answer comes: the
    bytes read are the bytes sent, in order, none lost or doubled."""
    rng = random.Random(7)
    c = await daemon.aclient(call_timeout=None)
    try:
        cid = await c.tcp_connect(HOST, echo_peer.port)
        sent, got = bytearray(), bytearray()
        for _ in range(150):
            chunk = rng.randbytes(rng.randint(1, 3000))
            assert await c.tcp_send(cid, chunk) == len(chunk)
            sent += chunk
            wait = rng.choice([0.0, 0.0005, 0.002, 0.01, 1.0])
            with contextlib.suppress(TimeoutError):
                got += await asyncio.wait_for(c.tcp_recv(cid, rng.randint(1, 4000)), wait)
        while len(got) < len(sent):
            got += await c.tcp_recv(cid, 65536, 5000)
        assert len(got) == len(sent) and got == sent
        await c.tcp_close(cid)
    finally:
        await c.close()
