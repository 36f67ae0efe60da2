"""A raw `call("tcp.recv", ...)` / `call("tcp.accept", ...)` with a client-side timeout loses
nothing either (contract tcp.recv: no data is lost by a timeout): the client passes its timeout
to the daemon as `timeout_ms`, as the typed wrappers do."""

from __future__ import annotations

import asyncio
import signal

import pytest

from chimney_client import CallTimeout, Client, PeerServer, RpcTimeout
from chimney_client.protocol import CANCELLED
from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import HOST, Daemon


async def test_a_raw_recv_call_that_times_out_loses_no_bytes(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    c = await daemon.aclient(call_timeout=15.0)
    try:
        cid = await c.tcp_connect(HOST, echo_peer.port)
        with pytest.raises(CallTimeout):
            await c.call("tcp.recv", cid, 100, timeout=0.3)
        assert await c.tcp_send(cid, b"hello") == 5
        got = b""
        while len(got) < 5:
            got += await c.tcp_recv(cid, 100, 2000)
        assert got == b"hello", f"{got!r}; dropped responses: {c._codec.dropped_responses}"
        await c.tcp_close(cid)
    finally:
        await c.close()


async def test_a_raw_recv_call_of_the_blocking_client_loses_no_bytes(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    def script() -> bytes:
        token = daemon.admin_token or daemon.token or None
        with Client.connect(daemon.address, token=token, call_timeout=0.3) as c:
            cid = c.tcp_connect(HOST, echo_peer.port)
            with pytest.raises(CallTimeout):
                c.call("tcp.recv", cid, 100)
            assert c.tcp_send(cid, b"hello") == 5
            got = b""
            while len(got) < 5:
                got += c.tcp_recv(cid, 100, 2000)
            c.tcp_close(cid)
            return got

    # a thread: the echo peer runs on this loop
    assert await asyncio.wait_for(asyncio.to_thread(script), 30) == b"hello"


async def test_a_raw_accept_call_that_times_out_loses_no_connection(daemon: Daemon) -> None:
    c = await daemon.aclient(call_timeout=0.3)
    try:
        lid = await c.tcp_listen(HOST, 0)
        port = (await c.tcp_listener_info(lid))["port"]
        with pytest.raises(CallTimeout):
            await c.call("tcp.accept", lid)
        _reader, writer = await asyncio.open_connection(HOST, port)
        try:
            cid = await c.tcp_accept(lid, 2000)
            assert cid in await c.tcp_list()
            await c.tcp_close(cid)
        finally:
            writer.close()
    finally:
        await c.close()


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
