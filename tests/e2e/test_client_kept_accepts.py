"""Against a real daemon: an accept loop of short client-side waits (`asyncio.wait_for`) on a
client with no call_timeout holds one `tcp.accept` in the daemon, not one per turn."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from tests.e2e.support import HOST, Daemon, wait_until


async def test_an_accept_loop_of_short_waits_does_not_fill_the_daemons_limit(
    daemon: Daemon,
) -> None:
    """`wait_for(c.tcp_accept(lid), t)` with no call_timeout sends no timeout_ms: each accept
    it gives up on stays in the daemon. Past the daemon's 256 requests in flight (docs/rpc.md
    "Limits") every call was answered LIMIT. An accept of a listener with such an accept
    waiting is not sent (it gets that accept's answer): 300 turns leave one accept in the
    daemon, and a peer's connection is then accepted by the loop's next turn."""
    c = await daemon.aclient(call_timeout=None)
    try:
        lid = await c.tcp_listen(HOST, 0)
        port = (await asyncio.wait_for(c.tcp_listener_info(lid), 5.0))["port"]
        for _ in range(300):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.tcp_accept(lid), 0.01)
                raise AssertionError("nobody connected, yet an accept returned")
        assert await asyncio.wait_for(c.ping(), 5.0) == "pong"
        with socket.create_connection((HOST, port), timeout=5) as peer:
            cid = await asyncio.wait_for(c.tcp_accept(lid), 5.0)
            peer.sendall(b"hi")
            assert await asyncio.wait_for(c.tcp_recv(cid, 100), 5.0) == b"hi"
            await asyncio.wait_for(c.tcp_close(cid), 5.0)
    finally:
        await c.close()


async def test_listener_info_counts_the_connections_the_client_keeps(daemon: Daemon) -> None:
    """An accept given up on (`wait_for`) takes the peer's connection in the daemon; the client
    keeps it for the next accept, and the daemon's `pending` no longer counts it. The client's
    `tcp_listener_info` adds what it keeps for the listener: `pending` is what the next
    accepts return without waiting (docs/rpc.md tcp.listener_info)."""
    c = await daemon.aclient(call_timeout=None)
    try:
        lid = await c.tcp_listen(HOST, 0)
        port = (await asyncio.wait_for(c.tcp_listener_info(lid), 5.0))["port"]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(c.tcp_accept(lid), 0.05)
            raise AssertionError("nobody connected, yet an accept returned")
        with socket.create_connection((HOST, port), timeout=5):

            async def kept() -> bool:
                return bool(c._codec._accepted)

            await wait_until(kept, 5.0)
            info = await asyncio.wait_for(c.tcp_listener_info(lid), 5.0)
            assert info["pending"] == 1, info
            cid = await asyncio.wait_for(c.tcp_accept(lid), 5.0)
            info = await asyncio.wait_for(c.tcp_listener_info(lid), 5.0)
            assert info["pending"] == 0, info
            await asyncio.wait_for(c.tcp_close(cid), 5.0)
    finally:
        await c.close()
