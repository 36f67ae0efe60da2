"""An empty tcp.send is answered with 0 at once, also after earlier sends (rpc-contract
tcp.send: the result is len(data)), through a real daemon, offloaded and in host mode."""

from __future__ import annotations

import asyncio

import pytest

from chimney_client import AsyncClient, PeerServer
from tests.e2e.support import HOST, Daemon


@pytest.mark.parametrize("offload", [True, False])
async def test_empty_send_after_a_send_is_answered(
    daemon: Daemon, echo_peer: PeerServer, offload: bool
) -> None:
    c = await AsyncClient.connect(daemon.address, call_timeout=15.0)
    try:
        conn = await c.tcp_connect(HOST, echo_peer.port, offload=offload)
        assert await c.tcp_send(conn, b"") == 0  # the first empty send is answered
        assert await c.tcp_send(conn, b"x") == 1
        assert await c.tcp_recv(conn, 1, 5000) == b"x"
        async with asyncio.timeout(5):  # docs/rpc.md: the result is len(data)
            assert await c.tcp_send(conn, b"") == 0
        await c.tcp_close(conn)
    finally:
        await c.close()
