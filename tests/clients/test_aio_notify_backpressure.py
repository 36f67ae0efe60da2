"""`AsyncClient.notify` and the write buffer: a flood of notifications to a daemon that stops
reading waits, as calls do (docs/rpc.md: a client that stops reading is paused), instead of
buffering without bound in the client."""

from __future__ import annotations

import asyncio

import pytest

from chimney_client import AsyncClient
from chimney_client.errors import ConnectionLost
from tests.clients.scripted import HANG, listener_address, silent_listener

PAYLOAD = b"n" * 1024
#: notifications in the flood: 64 MiB if nothing held them back
FLOOD = 64 * 1024


def _buffered(c: AsyncClient) -> int:
    assert c._transport is not None
    return c._transport.get_write_buffer_size() + sum(map(len, c._out))


async def test_a_flood_of_notifications_waits_while_the_daemon_does_not_read() -> None:
    lst = silent_listener()
    try:
        c = await AsyncClient.connect(listener_address(lst))
        sent = 0

        async def flood() -> None:
            nonlocal sent
            for _ in range(FLOOD):
                await c.notify("log", PAYLOAD)
                sent += 1

        task = asyncio.ensure_future(flood())
        done, _ = await asyncio.wait([task], timeout=1.0)
        assert not done, f"all {FLOOD} notifications went into the buffers"
        assert c._write_paused is not None and sent < FLOOD
        assert _buffered(c) < 4 << 20, f"{_buffered(c)} bytes buffered in the client"
        await c.close(timeout=0)
        with pytest.raises(ConnectionLost):  # the waiting notify ends with the connection
            await asyncio.wait_for(task, HANG)
    finally:
        lst.close()


async def test_notify_not_awaited_still_sends() -> None:
    """Not awaiting what notify() returns is fine: the notification is queued all the same."""
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.set_result(await r.read(100))
        w.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        port = srv.sockets[0].getsockname()[1]
        c = await AsyncClient.connect(f"127.0.0.1:{port}")
        c.notify("hello", 1)
        assert await asyncio.wait_for(got, HANG) == b"\x93\x02\xa5hello\x91\x01"
        await c.close()
    finally:
        srv.close()
