"""The echo section's floor proxy keeps the contract the section relies on: bytes echoed in
order, `tcp.send` answered only once the peer acknowledged them, `tcp.recv` answering TIMEOUT
without losing what comes later, and every connection gone after `tcp.close`. A floor that
answered sends on write, or lost bytes, would flatter the figure it is the baseline of."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from bench.common import child, ports_of
from chimney_client.aio import AsyncClient
from chimney_client.errors import InvalidState, NotFound, RpcTimeout
from chimney_client.stream import PatternStream, Verifier


@pytest.fixture
def peers() -> Iterator[tuple[int, int, socket.socket]]:
    """(proxy port, echo port, a listening socket whose connections nobody reads)."""
    with ExitStack() as stack:
        ports = []
        for kind in ("rpc-proxy", "echo"):
            c = stack.enter_context(child("-m", "bench.peers", kind))
            ports.append(ports_of(c.expect("ready "))[0])
        mute = stack.enter_context(socket.socket())
        mute.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # inherited on accept
        mute.bind(("127.0.0.1", 0))
        mute.listen(1)
        yield ports[0], ports[1], mute


@pytest.mark.timeout(60)
async def test_echo_in_order_and_timeouts_lose_nothing(
    peers: tuple[int, int, socket.socket],
) -> None:
    proxy, echo, _ = peers
    client = await AsyncClient.connect(f"127.0.0.1:{proxy}", call_timeout=20)
    try:
        cid = await client.tcp_connect("127.0.0.1", echo)
        assert (await client.tcp_info(cid))["state"] == "proxied"
        with pytest.raises(RpcTimeout):
            await client.tcp_recv(cid, 100, 50)  # nothing sent yet
        stream, verifier = PatternStream(7), Verifier(7)
        for size in (1, 16 * 1024, 300_000):
            assert await client.tcp_send(cid, stream.read(size)) == size
            got = 0
            while got < size:
                chunk = await client.tcp_recv(cid, 10_000, 5000)
                assert chunk and verifier.check(chunk) is None, verifier.first_error
                got += len(chunk)
        assert got == size and verifier.offset == 1 + 16 * 1024 + 300_000
        assert (await client.stack_stats())["connections"] == 1
        assert await client.tcp_close(cid) is True
        assert (await client.stack_stats())["connections"] == 0
        with pytest.raises(NotFound):
            await client.tcp_send(cid, b"x")
    finally:
        await client.close()


@pytest.mark.timeout(60)
async def test_a_send_waits_for_the_peers_acknowledgement(
    peers: tuple[int, int, socket.socket],
) -> None:
    """A peer that never reads: its receive window fills, the kernel stops acknowledging, and
    a send bigger than both sockets' buffers must stay unanswered."""
    proxy, _, mute = peers
    client = await AsyncClient.connect(f"127.0.0.1:{proxy}", call_timeout=20)
    try:
        cid = await client.tcp_connect("127.0.0.1", mute.getsockname()[1])
        held, _ = mute.accept()  # kept open, never read
        assert await client.tcp_send(cid, b"a" * 1000) == 1000  # acknowledged into its window
        big = asyncio.ensure_future(client.tcp_send(cid, b"b" * (32 << 20)))
        done, _ = await asyncio.wait([big], timeout=1.0)
        assert not done, "a send the peer cannot have acknowledged was answered"
        await client.tcp_close(cid)
        with pytest.raises(InvalidState):  # the proxy fails it when the connection goes
            await asyncio.wait_for(big, 10)
        held.close()
    finally:
        await client.close()
