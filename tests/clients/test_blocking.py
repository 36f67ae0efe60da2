"""The blocking Client against the mini server running on a thread."""

from __future__ import annotations

import pytest

from chimney_client import Client
from chimney_client.errors import CallTimeout, ConnectionLost, NotFound
from tests.clients.mini_server import MiniServer, mini_server_in_thread


def test_calls_and_errors(server: MiniServer) -> None:
    with Client.connect(server.address, timeout=5) as c:
        assert c.ping() == "pong"
        cid = c.tcp_connect("127.0.0.1", 9000)
        assert c.tcp_send(cid, b"abc") == 3
        assert c.tcp_recv(cid, 10, timeout_ms=100) == b"abc"
        with pytest.raises(NotFound):
            c.tcp_close(99)
        assert c.stack_info()["contract"] == 1


def test_notifications_collected_while_waiting(server: MiniServer) -> None:
    with Client.connect(server.address) as c:
        seen: list[object] = []
        c.on_notification("tcp.event", seen.append)
        c.on_notification("tcp.event", lambda p: 1 / 0)  # logged, never loses a reply
        assert c.events_subscribe("*") is True
        note = c.wait_notification(timeout=5)
        assert note is not None and note.params[1] == "offloaded"
        assert seen == [note.params]
        c.call("test.notify", "other", [1])
        assert [n.method for n in c.notifications] == ["other"]
        assert c.wait_notification(timeout=5) is not None
        assert c.wait_notification(timeout=0.01) is None


def test_timeout_then_late_response_dropped(server: MiniServer) -> None:
    with Client.connect(server.address) as c:
        with pytest.raises(CallTimeout):
            c.call("test.delay", 0.2, "late", timeout=0.01)
        assert c.call("test.delay", 0.4, "mine") == "mine"


def test_drop_is_connection_lost(server: MiniServer) -> None:
    c = Client.connect(server.address)
    with pytest.raises(ConnectionLost):
        c.call("test.drop")
    with pytest.raises(ConnectionLost):
        c.ping()
    c.close()


def test_connect_refused() -> None:
    with mini_server_in_thread() as srv:
        address = srv.address
    with pytest.raises(ConnectionLost, match="cannot connect"):
        Client.connect(address, timeout=5)
