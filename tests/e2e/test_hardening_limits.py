"""Engine limits seen from a client of a real daemon (issue: memory held for clients that never
finish; limits acted on atomically)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from chimney_client import start_peer
from chimney_client.errors import InvalidParams, LimitError
from tests.e2e.support import HOST, Daemon

pytestmark = pytest.mark.timeout(180, method="thread")

MiB = 1024 * 1024


class Deaf(asyncio.Protocol):
    """A peer that accepts and never reads: nothing sent to it is acknowledged past its
    receive window."""

    transports: list[Any]

    def connection_made(self, transport: Any) -> None:
        # uvloop starts reading after connection_made returns: pausing in it does nothing
        asyncio.get_running_loop().call_soon(transport.pause_reading)
        Deaf.transports.append(transport)


async def test_sends_to_a_peer_that_never_reads_are_capped(daemon: Daemon) -> None:
    """The issue's example: 60 pipelined 8 MiB sends to a peer that never reads took the
    daemon from 37 to 538 MB. With the default cap (16 MiB per connection) two are queued, the
    rest answered LIMIT at once, and memory stays bounded; when the peer reads, the two
    complete."""
    Deaf.transports = []
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    # a small receive buffer, inherited by the accepted socket: its kernel acknowledges
    # almost nothing while the peer does not read
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind((HOST, 0))
    sock.listen(8)
    server = await loop.create_server(Deaf, sock=sock)
    port = server.sockets[0].getsockname()[1]
    c = await daemon.aclient(call_timeout=120.0)
    try:
        before = daemon.rss_kb()
        conn = await c.tcp_connect(HOST, port)
        # each send's frame just within rpc.max_message_bytes (8 MiB): the bytes and their
        # request's head
        chunk = b"\x5a" * (8 * MiB - 64)
        sends = [asyncio.ensure_future(c.tcp_send(conn, chunk)) for _ in range(60)]
        await asyncio.wait(sends, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        for _ in range(600):
            if sum(s.done() for s in sends) >= 58:
                break
            await asyncio.sleep(0.1)
        limited = [s for s in sends if s.done() and isinstance(s.exception(), LimitError)]
        assert len(limited) == 58, [s.exception() for s in sends if s.done()][:3]
        assert "max_queued_send_bytes" in str(limited[0].exception())
        grown_mb = (daemon.rss_peak_kb() - before) / 1024
        assert grown_mb < 150, f"the daemon grew by {grown_mb:.0f} MB"
        stats = await c.stack_stats()
        assert stats["engine"]["queued_send_bytes"] == 2 * len(chunk)
        for transport in Deaf.transports:
            transport.resume_reading()
        done = [s for s in sends if s not in limited]
        assert await asyncio.wait_for(asyncio.gather(*done), 60) == [len(chunk)] * 2
        assert await c.tcp_close(conn) is True
    finally:
        await c.close()
        server.close()


async def test_update_values_out_of_range_answer_invalid_params(daemon: Daemon) -> None:
    peer = await start_peer("echo", HOST, 0)
    c = await daemon.aclient()
    try:
        conn = await c.tcp_connect(HOST, peer.port)
        for changes in (
            {"RcvIndicationSize": -1},
            {"UserPriority": 8},
            {"FlowLabel": 1 << 20},
            {"Flags": 0x20},
            {"InitialRcvWnd": 0},
            {"Unknown": 1},
        ):
            with pytest.raises(InvalidParams) as err:
                await c.call("tcp.update", conn, changes)
            assert next(iter(changes)) in str(err.value)
        assert await c.tcp_send(conn, b"still fine") == 10
        assert await c.tcp_recv(conn, 10, 5000) == b"still fine"
        assert await c.tcp_close(conn) is True
    finally:
        await c.close()
        await peer.close()
