"""Against a real daemon: the blocking client's polling loops hold one read (accept) in the daemon.

The blocking client sends a short call timeout to the daemon as `timeout_ms` (docs/rpc.md
"Errors"), so a loop of short timeouts abandons nothing. It abandons a read with no
`timeout_ms` only when the call is interrupted while it waits (Ctrl-C, a signal handler that
raises): then the next read of the connection rides on the abandoned one's answer
(`ClientCodec.request`), as in the asyncio client, instead of holding one more request per
turn against the daemon's 256 in flight (docs/rpc.md "Limits").
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest

from chimney_client.blocking import Client
from chimney_client.errors import CallTimeout
from tests.e2e.support import HOST, Daemon

TURNS = 300


class _Interrupted(Exception):
    """What a signal handler raises in the middle of a blocked call (as Ctrl-C does)."""


class _InterruptedWhileWaiting:
    """The client's socket, whose `recv` raises `_Interrupted` when nothing arrives within
    `wait` seconds: a call interrupted exactly where a signal finds a waiting client (blocked
    in recv), with no timer racing the client's own bookkeeping."""

    def __init__(self, sock: socket.socket, wait: float) -> None:
        self.sock = sock
        self.wait = wait
        self.armed = False

    def recv(self, size: int) -> bytes:
        if self.armed and not select.select([self.sock], [], [], self.wait)[0]:
            raise _Interrupted
        return self.sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@contextlib.contextmanager
def _accepted(c: Client) -> Iterator[tuple[int, socket.socket]]:
    """A connection of the daemon's (its id) and the plain socket at its other end: a peer
    this thread drives (an asyncio peer would not run while a blocking test does)."""
    lid = c.tcp_listen(HOST, 0)
    port = c.tcp_listener_info(lid)["port"]
    with socket.create_connection((HOST, port), timeout=5) as peer:
        yield c.tcp_accept(lid, 5000), peer


def test_a_loop_of_short_call_timeouts_does_not_fill_the_daemons_limit(daemon: Daemon) -> None:
    with Client.connect(daemon.address, call_timeout=None) as c, _accepted(c) as (cid, peer):
        for _ in range(TURNS):
            with pytest.raises(CallTimeout):
                c.call("tcp.recv", cid, 100, timeout=0.005)
        peer.sendall(b"hello")
        assert c.call("tcp.recv", cid, 100, timeout=5.0) == b"hello"
        assert c.tcp_close(cid) is True


def test_a_loop_of_interrupted_reads_does_not_fill_the_daemons_limit(daemon: Daemon) -> None:
    """300 reads with no timeout_ms, each interrupted while it waits: the first stays in the
    daemon, the others ride on it (nothing sent). A send and a read then still work (not
    `LIMIT`), and the read gets the echo the abandoned read took."""
    sock = socket.create_connection((HOST, int(daemon.address.rsplit(":", 1)[1])), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    interrupting = _InterruptedWhileWaiting(sock, 0.001)
    client = Client(cast(socket.socket, interrupting), daemon.address, call_timeout=None)
    with client as c, _accepted(c) as (cid, peer):
        interrupting.armed = True
        for turn in range(TURNS):
            try:
                c.tcp_recv(cid, 100)
                raise AssertionError(f"turn {turn}: the peer sent something unasked")
            except _Interrupted:
                pass
        interrupting.wait = 5.0  # from here, a call waiting 5 s for nothing fails the test
        assert c.ping() == "pong"  # not LIMIT
        peer.sendall(b"hello")
        # no timeout_ms: rides on the first read, which gets the bytes
        assert c.tcp_recv(cid, 100) == b"hello"
        interrupting.armed = False
        assert c.tcp_close(cid) is True


def test_a_loop_of_interrupted_accepts_does_not_fill_the_daemons_limit(daemon: Daemon) -> None:
    """The same with `tcp.accept`: the first accept stays in the daemon, the others ride on
    it; a peer's connection then goes to the next accept."""
    sock = socket.create_connection((HOST, int(daemon.address.rsplit(":", 1)[1])), timeout=5)
    interrupting = _InterruptedWhileWaiting(sock, 0.001)
    client = Client(cast(socket.socket, interrupting), daemon.address, call_timeout=None)
    with client as c:
        lid = c.tcp_listen(HOST, 0)
        port = c.tcp_listener_info(lid)["port"]
        interrupting.armed = True
        for turn in range(TURNS):
            try:
                c.tcp_accept(lid)
                raise AssertionError(f"turn {turn}: an accept returned, nobody connected")
            except _Interrupted:
                pass
        interrupting.wait = 5.0  # from here, a call waiting 5 s for nothing fails the test
        assert c.ping() == "pong"  # not LIMIT
        with socket.create_connection((HOST, port), timeout=5) as peer:
            cid = c.tcp_accept(lid)
            peer.sendall(b"hi")
            assert c.tcp_recv(cid, 100) == b"hi"
            interrupting.armed = False
            assert c.tcp_close(cid) is True
