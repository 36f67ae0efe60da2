"""A handler unsubscribed by an earlier handler of the same notification is not called for
it: `on_notification`'s unsubscriber takes effect at once, also during a dispatch (the
clients used to walk a copy of the handler list taken before the first handler ran)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import msgpack

from chimney_client import AsyncClient, Client
from tests.clients.scripted import HANG, ThreadServer, address, answer, reply, scripted_server


def _tick_then_answer(t: Any, msgid: int, method: str, params: list[Any]) -> None:
    t.write(msgpack.packb([2, "tick", [1]]))
    answer(t, msgid, "pong")


async def test_aio_a_handler_unsubscribed_by_an_earlier_one_is_not_called() -> None:
    srv = await scripted_server(_tick_then_answer)
    try:
        async with await AsyncClient.connect(address(srv)) as c:
            called: list[str] = []
            remove_second: Callable[[], None] | None = None

            def first(params: list[Any]) -> None:
                called.append("first")
                assert remove_second is not None
                remove_second()

            def second(params: list[Any]) -> None:
                called.append("second")

            c.on_notification("tick", first)
            remove_second = c.on_notification("tick", second)
            assert await asyncio.wait_for(c.call("ping"), HANG) == "pong"
            assert called == ["first"], "an unsubscribed handler was called"
    finally:
        srv.close()


def test_blocking_a_handler_unsubscribed_by_an_earlier_one_is_not_called() -> None:
    def on_request(conn: socket.socket, msgid: int, method: str, params: list[Any]) -> None:
        conn.sendall(msgpack.packb([2, "tick", [1]]))
        reply(conn, msgid, result="pong")

    srv = ThreadServer(on_request)
    try:
        with Client.connect(srv.address, call_timeout=HANG) as c:
            called: list[str] = []
            remove_second: Callable[[], None] | None = None

            def first(params: list[Any]) -> None:
                called.append("first")
                assert remove_second is not None
                remove_second()

            def second(params: list[Any]) -> None:
                called.append("second")

            c.on_notification("tick", first)
            remove_second = c.on_notification("tick", second)
            assert c.ping() == "pong"
            assert called == ["first"], "an unsubscribed handler was called"
    finally:
        srv.close()
