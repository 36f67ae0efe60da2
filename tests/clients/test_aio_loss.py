"""AsyncClient: when the connection goes (or is closed), every call ends, at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from chimney_client import AsyncClient
from chimney_client.errors import ConnectionLost
from tests.clients.mini_server import MiniServer
from tests.clients.scripted import HANG, address, listener_address, scripted_server, silent_listener


@pytest.fixture
async def mini() -> AsyncIterator[MiniServer]:
    srv = await MiniServer().start()
    yield srv
    await srv.close()


async def test_answer_then_garbage_in_one_chunk_ends_every_call() -> None:
    """A valid answer and bytes that are not msgpack in one chunk: the answered call ends
    with ConnectionLost (the chunk is thrown away), not waiting forever."""

    def answer_then_garbage(t: Any, msgid: int, method: str, params: list[Any]) -> None:
        t.write(msgpack.packb([1, msgid, None, "pong"]) + b"\xc1\xc1")

    srv = await scripted_server(answer_then_garbage)
    try:
        c = await AsyncClient.connect(address(srv))
        with pytest.raises(ConnectionLost, match="protocol error"):
            await asyncio.wait_for(c.call("ping"), HANG)
        assert c.pending == 0
        await c.close()
    finally:
        srv.close()


async def test_close_ends_when_the_daemon_does_not_read() -> None:
    """close() fails pending calls with ConnectionLost at once and returns, even when the daemon
    has stopped reading and the write buffer cannot drain."""
    lst = silent_listener()
    try:
        c = await AsyncClient.connect(listener_address(lst))
        big = asyncio.ensure_future(c.call("tcp.send", 1, b"x" * (32 << 20)))
        paused = asyncio.ensure_future(c.call("ping"))  # waits for the full buffer
        while c._write_paused is None:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(c.close(), HANG)
        for call in (big, paused):
            assert call.done()
            assert isinstance(call.exception(), ConnectionLost)
        assert c.closed
    finally:
        lst.close()


async def test_use_after_loss_raises_fresh_exceptions(mini: MiniServer) -> None:
    """Each failed call raises its own ConnectionLost: re-raising one stored instance chains
    every raise's traceback onto it (memory grows with retries) and shares it across tasks."""
    c = await AsyncClient.connect(mini.address)
    await c.close()
    seen = []
    for _ in range(50):
        try:
            await c.ping()
        except ConnectionLost as exc:
            seen.append(exc)
    depth, tb = 0, seen[-1].__traceback__
    while tb is not None:
        depth, tb = depth + 1, tb.tb_next
    assert len(seen) == 50 and len({id(e) for e in seen}) == 50
    assert depth < 10, f"traceback depth {depth}"


async def test_pending_calls_each_get_their_own_loss_chained_from_the_cause(
    mini: MiniServer,
) -> None:
    c = await AsyncClient.connect(mini.address)
    calls = [asyncio.ensure_future(c.call("test.delay", 5, i)) for i in range(3)]
    await asyncio.sleep(0.05)
    with pytest.raises(ConnectionLost):
        await c.call("test.garbage")
    errors = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(e, ConnectionLost) for e in errors)
    assert len({id(e) for e in errors}) == 3
    assert all(e.__cause__ is not None for e in errors)  # the ProtocolError
    await c.close()
