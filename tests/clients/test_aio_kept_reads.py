"""AsyncClient (scripted daemon): a read cancelled after its answer came has its bytes kept
*first*, ahead of what a read made meanwhile gets."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

from chimney_client import AsyncClient
from tests.clients.scripted import HANG, address, scripted_server


class _Holding:
    """A daemon that answers nothing by itself: the test answers for it, in one write."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.transport: Any = None

    def __call__(self, t: Any, msgid: int, method: str, params: list[Any]) -> None:
        self.transport = t
        self.requests.put_nowait((msgid, method))


def _answer(msgid: int, result: Any) -> bytes:
    data: bytes = msgpack.packb([1, msgid, None, result], use_bin_type=True)
    return data


async def test_a_reader_that_takes_over_from_a_cancelled_one_reads_in_stream_order() -> None:
    """Task `boss` cancels the reading task as soon as its own call (a ping) is answered and
    reads the connection itself. The reading task's read is not sent: an abandoned read with
    no timeout waits in the daemon, and the reading task gets its answer. The ping's answer
    and the abandoned read's ("aaaabbbb", more than the reading task's max_bytes of 4) come
    in one chunk; `boss` runs first and cancels the reading task (`boss` waits for that task
    to end before it reads again): what `boss` reads is "aaaabbbb", in stream order."""
    daemon = _Holding()
    srv = await scripted_server(daemon)
    try:
        c = await AsyncClient.connect(address(srv))
        try:
            try:
                await asyncio.wait_for(c.tcp_recv(1, 100), 0.05)
                raise AssertionError("answered by nobody")
            except TimeoutError:
                pass
            gone, _ = await asyncio.wait_for(daemon.requests.get(), HANG)
            reader = asyncio.ensure_future(c.tcp_recv(1, 4))  # not sent: rides on `gone`

            async def boss() -> list[bytes]:
                await c.ping()
                reader.cancel()
                first = await c.tcp_recv(1, 100, 1000)
                await asyncio.wait({reader})  # the reading task has seen its cancellation
                return [first, await c.tcp_recv(1, 100, 1000)]

            took = asyncio.ensure_future(boss())
            ping, method = await asyncio.wait_for(daemon.requests.get(), HANG)
            assert method == "ping"  # the reading task's read was not sent before it
            daemon.transport.write(_answer(ping, "pong") + _answer(gone, b"aaaabbbb"))
            got = await asyncio.wait_for(took, HANG)
            assert reader.cancelled()
            assert b"".join(got) == b"aaaabbbb", got
        finally:
            await c.close()
    finally:
        srv.close()
