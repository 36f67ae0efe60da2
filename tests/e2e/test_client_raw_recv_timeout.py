"""A raw `call("tcp.recv", ...)` / `call("tcp.accept", ...)` with a client-side timeout loses
nothing either (contract tcp.recv: no data is lost by a timeout): the client passes its timeout
to the daemon as `timeout_ms`, as the typed wrappers do."""

from __future__ import annotations

import asyncio
import signal

import pytest

from chimney_client import CallTimeout, PeerServer, RpcTimeout
from chimney_client.protocol import CANCELLED
from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import (
    HOST,
    Daemon,
    assert_a_blocking_lost_read_loses_no_bytes,
    assert_a_lost_accept_loses_no_connection,
    assert_a_lost_read_loses_no_bytes,
)


async def test_a_raw_recv_call_that_times_out_loses_no_bytes(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    c = await daemon.aclient(call_timeout=15.0)
    await assert_a_lost_read_loses_no_bytes(
        c, echo_peer.port, lambda cid: c.call("tcp.recv", cid, 100, timeout=0.3), CallTimeout
    )


async def test_a_raw_recv_call_of_the_blocking_client_loses_no_bytes(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    def script() -> None:
        assert_a_blocking_lost_read_loses_no_bytes(
            daemon, echo_peer.port, 0.3, lambda c, cid: c.call("tcp.recv", cid, 100)
        )

    # a thread: the echo peer runs on this loop
    await asyncio.wait_for(asyncio.to_thread(script), 30)


async def test_a_raw_accept_call_that_times_out_loses_no_connection(daemon: Daemon) -> None:
    c = await daemon.aclient(call_timeout=0.3)
    await assert_a_lost_accept_loses_no_connection(
        c, lambda lid: c.call("tcp.accept", lid), CallTimeout
    )


async def test_a_read_the_stopping_daemon_cancels_is_its_timeout_not_the_calls(
    spawn_daemon: SpawnDaemon, echo_peer: PeerServer
) -> None:
    """Guards what the client reads in the daemon's answer (protocol.CANCELLED): a wait the
    daemon cancels because it is stopping raises RpcTimeout, not the call's CallTimeout, though
    the client filled in its timeout_ms."""
    d = spawn_daemon("[rpc]\nshutdown_deadline_s = 0.3\n")
    c = await d.aclient(call_timeout=60.0)
    try:
        cid = await c.tcp_connect(HOST, echo_peer.port)
        read = asyncio.ensure_future(c.tcp_recv(cid, 100))
        assert await c.ping() == "pong"  # the read was dispatched before this answer
        d.proc.send_signal(signal.SIGTERM)
        with pytest.raises(RpcTimeout) as caught:
            await asyncio.wait_for(read, 30)
        assert not isinstance(caught.value, CallTimeout), caught.value
        assert caught.value.detail.startswith(CANCELLED), caught.value
        assert await asyncio.to_thread(d.proc.wait, 30) == 0
    finally:
        await c.close()
    d.stopped = True  # stopped here
    d.returncode = 0
