"""Against a real daemon: a read made right after a cancelled one gets the bytes the client kept
from the cancelled read, not a wait in the daemon; bytes kept ahead of a reset come first."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from chimney_client import PeerServer
from chimney_client.errors import InvalidParams, NdisStatusError
from tests.e2e.support import HOST, Daemon, wait_until


async def test_a_read_sent_after_a_cancelled_one_gets_the_bytes_that_came(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    """A reading loop whose read was cancelled (`wait_for`) reads again at once, then the peer
    answers (here: an echo of what we send). The daemon gives the echo to the cancelled read,
    whose answer the client keeps; the new read, already queued in the daemon behind it, waits
    for more — which a request/response peer never sends. Without a timeout it waits for ever
    while the client holds its bytes."""
    c = await daemon.aclient(call_timeout=None)
    try:
        cid = await c.tcp_connect(HOST, echo_peer.port)
        try:
            await asyncio.wait_for(c.tcp_recv(cid, 100), 0.3)
            raise AssertionError("the echo peer sent something unasked")
        except TimeoutError:
            pass
        reader = asyncio.ensure_future(c.tcp_recv(cid, 100))  # the loop's next read
        while c.pending == 0:  # its request is queued before the send's
            await asyncio.sleep(0)
        assert await c.tcp_send(cid, b"hello") == 5
        done, _ = await asyncio.wait({reader}, timeout=5.0)
        held = c._codec.kept_bytes  # what the client kept meanwhile (for the message)
        reader.cancel()
        assert done, f"the read still waits after 5 s; the client kept {held} bytes meanwhile"
        assert reader.result() == b"hello"
        await c.tcp_close(cid)
    finally:
        await c.close()


async def test_bytes_sent_before_a_reset_are_read_before_it(daemon: Daemon) -> None:
    """docs/rpc.md `tcp.accept`/`tcp.recv`: a reset connection's reads return the bytes the peer
    sent before its RST, then `NDIS_STATUS_REQUEST_ABORTED`. After a cancelled read (whose
    answer the client keeps) the read on its way gets the reset first: the caller sees the
    error, and "hello" only from a read after it (one a caller that stops at a reset never
    makes)."""
    c = await daemon.aclient(call_timeout=None)
    try:
        lid = await c.tcp_listen(HOST, 0)
        port = (await c.tcp_listener_info(lid))["port"]
        with socket.create_connection((HOST, port), timeout=5) as peer:
            cid = await c.tcp_accept(lid, 5000)
            try:
                await asyncio.wait_for(c.tcp_recv(cid, 100), 0.3)
                raise AssertionError("the peer sent something unasked")
            except TimeoutError:
                pass
            reader = asyncio.ensure_future(c.tcp_recv(cid, 100))
            while c.pending == 0:
                await asyncio.sleep(0)
            peer.sendall(b"hello")

            # the cancelled read took them: the client keeps them
            async def kept() -> bool:
                return c._codec.kept_bytes == 5

            await wait_until(kept, 5.0)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        first: bytes | BaseException
        try:
            first = await asyncio.wait_for(reader, 5.0)
        except NdisStatusError as exc:
            first = exc
        after: bytes | BaseException
        try:
            after = await c.tcp_recv(cid, 100, 2000)
        except NdisStatusError as exc:
            after = exc
        assert first == b"hello", (first, after)
        await c.tcp_close(cid)
    finally:
        await c.close()


async def test_a_polling_loop_of_short_waits_does_not_fill_the_daemons_limit(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    """A loop of `wait_for(c.tcp_recv(...), t)` on a client with no call_timeout sends no
    timeout_ms: each read it gives up on stays in the daemon. Past the daemon's 256 requests in
    flight (docs/rpc.md "Limits") every call was answered LIMIT. A read of a connection with
    such a read waiting is not sent (it gets that read's answer): 300 turns leave one read in
    the daemon, and a send and a read still work."""
    c = await daemon.aclient(call_timeout=None)
    try:
        cid = await c.tcp_connect(HOST, echo_peer.port)
        for _ in range(300):
            try:
                await asyncio.wait_for(c.tcp_recv(cid, 100), 0.001)
                raise AssertionError("the echo peer sent something unasked")
            except TimeoutError:
                pass
        assert await asyncio.wait_for(c.tcp_send(cid, b"hello"), 5.0) == 5
        assert await asyncio.wait_for(c.tcp_recv(cid, 100), 5.0) == b"hello"
        await asyncio.wait_for(c.tcp_close(cid), 5.0)
    finally:
        await c.close()


async def test_a_read_the_daemon_refuses_is_refused_with_bytes_kept(
    daemon: Daemon, echo_peer: PeerServer
) -> None:
    """docs/rpc.md "Limits": `max_bytes` is 1 to 8 MiB, INVALID_PARAMS past it. A read of 16 MiB
    made while the client keeps bytes of the connection (a cancelled read got them) is refused
    as the daemon refuses it, not served from them; the next read gets them."""
    c = await daemon.aclient(call_timeout=None)
    try:
        cid = await c.tcp_connect(HOST, echo_peer.port)
        reader = asyncio.ensure_future(c.tcp_recv(cid, 100))
        while c.pending == 0:
            await asyncio.sleep(0)
        reader.cancel()
        assert await asyncio.wait_for(c.tcp_send(cid, b"hello"), 5.0) == 5

        async def kept() -> bool:
            return c._codec.kept_bytes == 5

        await wait_until(kept, 5.0)
        with pytest.raises(InvalidParams):
            await asyncio.wait_for(c.tcp_recv(cid, 16 * 1024 * 1024), 5.0)
        assert await asyncio.wait_for(c.tcp_recv(cid, 100), 5.0) == b"hello"
        await asyncio.wait_for(c.tcp_close(cid), 5.0)
    finally:
        await c.close()
