"""The blocking client's `notifications` list is bounded: a subscriber that only uses handlers
(and never takes from the list) does not grow without end; what is dropped is counted."""

from __future__ import annotations

import socket
from typing import Any

import msgpack

from chimney_client import Client
from tests.clients.scripted import ThreadServer, reply

#: the documented default bound of `Client.notifications`
DEFAULT_BOUND = 10_000


def _events_then_answer(count: int) -> ThreadServer:
    """A server that answers every request after sending `count` `tcp.event` notifications."""

    def on_request(conn: socket.socket, msgid: int, method: str, params: list[Any]) -> None:
        conn.sendall(
            b"".join(msgpack.packb([2, "tcp.event", [i, "offloaded", {}]]) for i in range(count))
        )
        reply(conn, msgid, result="pong")

    return ThreadServer(on_request)


def test_the_oldest_notifications_are_dropped_past_the_default_bound_and_counted() -> None:
    srv = _events_then_answer(DEFAULT_BOUND + 50)
    try:
        with Client.connect(srv.address, call_timeout=10) as c:
            seen: list[Any] = []
            c.on_notification("tcp.event", seen.append)
            assert c.ping() == "pong"
            assert len(seen) == DEFAULT_BOUND + 50  # handlers get every one
            assert len(c.notifications) == DEFAULT_BOUND
            assert c.dropped_notifications == 50
            assert c.notifications[0].params[0] == 50  # the newest are kept
            assert c.notifications[-1].params[0] == DEFAULT_BOUND + 49
    finally:
        srv.close()


def test_the_bound_is_the_callers() -> None:
    srv = _events_then_answer(5)
    try:
        with Client.connect(srv.address, call_timeout=10, max_notifications=3) as c:
            c.ping()
            assert [n.params[0] for n in c.notifications] == [2, 3, 4]
            assert c.dropped_notifications == 2
            c.notifications.clear()  # taking them is still the caller's
            c.ping()
            assert [n.params[0] for n in c.notifications] == [2, 3, 4]
            assert c.dropped_notifications == 4
    finally:
        srv.close()
