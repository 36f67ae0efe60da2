"""AsyncClient: a `tcp.recv` its caller abandons (cancelled, even after its answer came) loses
no bytes: the next read of the connection gets them (contract tcp.recv: no data is lost); an
abandoned `tcp.accept`'s connection goes to the next accept of the listener."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from chimney_client import AsyncClient
from tests.clients.scripted import HANG, address, answer, response, scripted_server


class _Holding:
    """A daemon that answers nothing by itself: the test answers for it."""

    def __init__(self) -> None:
        self.reads: asyncio.Queue[int] = asyncio.Queue()
        self.transport: Any = None

    def __call__(self, t: Any, msgid: int, method: str, params: list[Any]) -> None:
        self.transport = t
        self.reads.put_nowait(msgid)

    def answer(self, msgid: int, data: bytes) -> None:
        answer(self.transport, msgid, data)


@contextlib.asynccontextmanager
async def _holding() -> AsyncIterator[tuple[_Holding, AsyncClient]]:
    """A client of a `_Holding` daemon; the client is closed and the server too."""
    daemon = _Holding()
    srv = await scripted_server(daemon)
    try:
        c = await AsyncClient.connect(address(srv))
        try:
            yield daemon, c
        finally:
            await c.close()
    finally:
        srv.close()


async def test_a_cancelled_reads_bytes_go_to_the_next_read() -> None:
    async with _holding() as (daemon, c):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.tcp_recv(1, 100), 0.05)
        abandoned = await daemon.reads.get()
        # the abandoned read waits in the daemon with no timeout: the next read is not sent,
        # it is answered with what the abandoned one gets (one read in the daemon, not two)
        next_read = asyncio.ensure_future(c.tcp_recv(1, 100))
        ping = asyncio.ensure_future(c.ping())  # written after the next read, if it were sent
        daemon.answer(await asyncio.wait_for(daemon.reads.get(), HANG), b"pong")
        await asyncio.wait_for(ping, HANG)  # the first request the daemon got was the ping
        assert daemon.reads.empty()
        daemon.answer(abandoned, b"hello")  # the daemon's read went on: first in its queue
        assert await asyncio.wait_for(next_read, HANG) == b"hello"  # at once
        # nothing abandoned waits any more: the read after is sent, and gets what comes next
        after = asyncio.ensure_future(c.tcp_recv(1, 100))
        msgid = await asyncio.wait_for(daemon.reads.get(), HANG)
        daemon.answer(msgid, b" world")
        assert await asyncio.wait_for(after, HANG) == b" world"


async def test_a_read_cancelled_after_its_answer_came_loses_no_bytes() -> None:
    async with _holding() as (daemon, c):
        read = asyncio.ensure_future(c.tcp_recv(1, 100))
        msgid = await asyncio.wait_for(daemon.reads.get(), HANG)
        # the answer arrives and, before the read's task runs again, it is cancelled
        c._data_received(response(msgid, b"hello"))
        read.cancel()
        with pytest.raises(asyncio.CancelledError):
            await read
        assert await asyncio.wait_for(c.tcp_recv(1, 3), HANG) == b"hel"  # kept: not asked
        assert await asyncio.wait_for(c.tcp_recv(1, 100), HANG) == b"lo"
        assert daemon.reads.empty()


async def test_a_cancelled_accepts_connection_goes_to_the_next_accept() -> None:
    async with _holding() as (daemon, c):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.tcp_accept(5), 0.05)
        # the daemon's accept went on and took a connection; its answer arrives
        c._data_received(response(await asyncio.wait_for(daemon.reads.get(), HANG), 17))
        assert await asyncio.wait_for(c.tcp_accept(5), HANG) == 17
        assert daemon.reads.empty()  # answered from what was kept: not asked
