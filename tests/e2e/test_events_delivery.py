"""Which `tcp.event` notifications a client gets, against a real daemon: a connection accepted
on its listener is its own from its first event (docs/rpc.md, `tcp.accept`), and an event comes
once however many of the client's subscriptions cover it."""

from __future__ import annotations

import socket
import time
from typing import Any

from tests.e2e.support import Daemon


def _events(c: Any) -> list[tuple[int, str]]:
    """The `tcp.event` notifications the client has had: (conn id, event), in order."""
    time.sleep(0.3)  # the daemon sends events after the answer that caused them
    c.poll()
    out = [(n.params[0], n.params[1]) for n in c.notifications if n.method == "tcp.event"]
    c.notifications.clear()
    return out


def test_the_listener_owner_hears_an_accepted_connection_offloaded(daemon: Daemon) -> None:
    """A listener with offload offloads each connection before `tcp.accept` takes it: the
    listener's owner must hear that `offloaded`, or it hears `uploaded` for a connection it
    never heard was offloaded. A client that does not listen there hears none of it."""
    with daemon.client() as c, daemon.client() as stranger:
        c.events_subscribe("*")
        stranger.events_subscribe("*")
        lid = c.tcp_listen("127.0.0.1", 0, offload=True)
        port = c.tcp_listener_info(lid)["port"]
        s = socket.create_connection(("127.0.0.1", port))
        try:
            time.sleep(0.5)  # made and offloaded before the application accepts it
            conn = c.tcp_accept(lid, 5000)
            assert c.tcp_info(conn)["state"] == "offloaded"
            c.tcp_upload(conn)
            c.tcp_close(conn)
            mine = [e for cid, e in _events(c) if cid == conn]
            assert mine == ["offloaded", "uploaded", "closed"], mine
            assert _events(stranger) == []
        finally:
            s.close()


def test_an_event_comes_once_to_a_client_subscribed_by_id_and_star(daemon: Daemon) -> None:
    with daemon.client() as c:
        lid = c.tcp_listen("127.0.0.1", 0, offload=False)
        port = c.tcp_listener_info(lid)["port"]
        conn = c.tcp_connect("127.0.0.1", port)
        other = c.tcp_accept(lid, 5000)
        c.events_subscribe("*")
        c.events_subscribe(conn)
        c.tcp_upload(conn)
        mine = [e for cid, e in _events(c) if cid == conn]
        c.tcp_close(conn)
        c.tcp_close(other)
        assert mine == ["uploaded"], mine
