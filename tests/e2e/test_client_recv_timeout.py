"""Both clients against a real daemon: a call_timeout on tcp.recv / tcp.accept without
timeout_ms loses nothing (contract: no data is lost by a timeout)."""

from __future__ import annotations

import asyncio

from chimney_client import CallTimeout, PeerServer
from tests.e2e.support import (
    Daemon,
    assert_a_blocking_lost_read_loses_no_bytes,
    assert_a_lost_accept_loses_no_connection,
    assert_a_lost_read_loses_no_bytes,
)


async def test_async_client_timeout_on_recv_loses_no_bytes(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    c = await daemon.aclient(call_timeout=0.5)
    await assert_a_lost_read_loses_no_bytes(
        c, echo_peer.port, lambda cid: c.tcp_recv(cid, 100), CallTimeout
    )


async def test_blocking_client_timeout_on_recv_loses_no_bytes(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    def script() -> None:
        assert_a_blocking_lost_read_loses_no_bytes(
            daemon, echo_peer.port, 0.5, lambda c, cid: c.tcp_recv(cid, 100)
        )

    # a thread: the echo peer runs on this loop
    await asyncio.wait_for(asyncio.to_thread(script), 30)


async def test_async_client_timeout_on_accept_loses_no_connection(daemon: Daemon) -> None:
    c = await daemon.aclient(call_timeout=0.5)
    await assert_a_lost_accept_loses_no_connection(c, c.tcp_accept, CallTimeout)
