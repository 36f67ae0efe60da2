"""A connection the peer resets before the daemon accepts it is still accepted (rpc-contract
`tcp.accept`: "conn id of the next accepted connection"), as Linux's accept(2) returns it:
`tcp.accept` gives its id, its first read gets the bytes the peer sent before its RST and the
next one the reset, and nothing of it is left once it is closed — with and without offload
(docs/rpc.md tcp.accept).

The daemon is held stopped (SIGSTOP) while the peer connects, sends and resets, so the kernel
finishes the handshake and takes the RST with the connection still in the listener's accept
queue; the daemon accepts it only when it runs again (SIGCONT).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
from collections.abc import Iterator

import pytest

from chimney_client import RpcError
from tests.e2e.support import HOST, Daemon, settled

pytestmark = pytest.mark.timeout(120, method="thread")


@contextlib.contextmanager
def held(daemon: Daemon) -> Iterator[None]:
    """The daemon stopped for the block's length (the kernel goes on without it)."""
    os.kill(daemon.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(daemon.proc.pid, signal.SIGCONT)


def connect_send_reset(port: int, data: bytes) -> None:
    s = socket.create_connection((HOST, port), timeout=10)
    if data:
        s.sendall(data)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST


@pytest.mark.parametrize("data", [b"", b"early"], ids=["no-bytes", "bytes"])
@pytest.mark.parametrize("offload", [False, True], ids=["host", "offloaded"])
async def test_a_connection_reset_before_accept_is_accepted_and_reads_the_reset(
    daemon: Daemon, offload: bool, data: bytes
) -> None:
    c = await daemon.aclient()
    try:
        lid = await c.tcp_listen(HOST, 0, offload)
        port = (await c.tcp_listener_info(lid))["port"]
        with held(daemon):
            connect_send_reset(port, data)
        conn = await c.tcp_accept(lid, 10_000)
        if data:
            assert await c.tcp_recv(conn, 100, 5000) == data
        with pytest.raises(RpcError) as err:
            await c.tcp_recv(conn, 100, 5000)
        assert err.value.symbol == "NDIS_STATUS"
        assert "NDIS_STATUS_REQUEST_ABORTED" in err.value.message
        info = await c.tcp_info(conn)
        assert info["state"] == "host" and info["listener"] == lid, info
        assert info["bytes_received"] == len(data)
        assert (await c.tcp_listener_info(lid))["pending"] == 0
        assert await c.tcp_close(conn) is True
        stats = await settled(c.stack_stats)
        assert stats["engine"]["wires"] == 0 and stats["engine"]["accept_waiters"] == 0, stats
        # the listener goes on accepting
        with socket.create_connection((HOST, port), timeout=10) as s:
            s.sendall(b"next")
            nxt = await c.tcp_accept(lid, 10_000)
            assert await c.tcp_recv(nxt, 100, 5000) == b"next"
            await c.tcp_close(nxt)
    finally:
        await c.close()


@pytest.mark.parametrize("offload", [False, True], ids=["host", "offloaded"])
async def test_several_connections_reset_before_accept_each_read_their_own_reset(
    daemon: Daemon, offload: bool
) -> None:
    """Their peers' addresses are unknown alike (the listener's address and port, the peer's
    unknown): each is still its own connection, with its own bytes and its own reset."""
    c = await daemon.aclient()
    try:
        lid = await c.tcp_listen(HOST, 0, offload)
        port = (await c.tcp_listener_info(lid))["port"]
        sent = [b"first", b"second", b"third"]
        with held(daemon):
            for data in sent:
                connect_send_reset(port, data)
        conns = [await c.tcp_accept(lid, 10_000) for _ in sent]
        got = []
        for conn in conns:
            got.append(await c.tcp_recv(conn, 100, 5000))
            with pytest.raises(RpcError) as err:
                await c.tcp_recv(conn, 100, 5000)
            assert "NDIS_STATUS_REQUEST_ABORTED" in err.value.message
        assert sorted(got) == sorted(sent)
        for conn in conns:
            await c.tcp_close(conn)
        stats = await settled(c.stack_stats)
        assert stats["engine"]["wires"] == 0, stats
    finally:
        await c.close()
