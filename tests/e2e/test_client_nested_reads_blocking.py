"""Against a real daemon: a blocking client's notification handler that reads the connection
whose read the running call was just answered from is not held behind that answer.

The blocking client calls handlers inside the call that read the notification, before that
call returns its own answer. A read of the same connection made by the handler used to wait
behind that answer (`ClientCodec` holds a read's answer while an earlier read's bytes are in
their caller's hands, for stream order): its caller is the very thread running the handler,
so the handler's read waited for its whole timeout (for ever with none), though the daemon had
answered it. Here the peer sends "hello" and its FIN; a handler of `TcpIndicateDisconnect`
reads what is left (the end of stream) while the read that got "hello" has not returned yet.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from typing import Any, cast

import msgpack
import pytest

from chimney_client.blocking import Client
from tests.e2e.support import HOST, Daemon

#: seconds within which what a step waits for comes (a real daemon on loopback)
WAIT = 5.0
#: the handler's read's timeout: the daemon answers it at once (the end of stream)
NESTED_TIMEOUT = 2.0


class _Interrupted(Exception):
    """What a signal handler raises in the middle of a blocked call (as Ctrl-C does)."""


class _GatedSocket:
    """The client's socket. `interrupt_after`: the next `recv` that finds nothing within that
    many seconds raises `_Interrupted` (a read abandoned where a signal finds a waiting
    client). `gated`: the next `recv` first waits until a response and a `tcp.event`
    `TcpIndicateDisconnect` are both in the socket's buffer, so that one read of the client
    decodes both (a call's answer and a notification read with it, as a busy daemon sends)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.interrupt_after: float | None = None
        self.gated = False

    def recv(self, size: int) -> bytes:
        if self.interrupt_after is not None:
            wait, self.interrupt_after = self.interrupt_after, None
            if not select.select([self.sock], [], [], wait)[0]:
                raise _Interrupted
        if self.gated:
            self.gated = False
            deadline = time.monotonic() + WAIT
            while not _answer_and_disconnect(self.sock.recv(1 << 20, socket.MSG_PEEK)):
                assert time.monotonic() < deadline, "no answer and event from the daemon"
                select.select([], [], [], 0.001)  # polled: more bytes come in their own time
        return self.sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def _answer_and_disconnect(data: bytes) -> bool:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    kinds = set()
    for obj in unpacker:
        if obj[0] == 1:
            kinds.add("response")
        elif obj[0] == 2 and obj[1] == "tcp.event" and obj[2][1] == "TcpIndicateDisconnect":
            kinds.add("event")
    return kinds == {"response", "event"}


@contextlib.contextmanager
def _client(daemon: Daemon) -> Iterator[tuple[Client, _GatedSocket]]:
    sock = socket.create_connection((HOST, int(daemon.address.rsplit(":", 1)[1])), timeout=WAIT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    gated = _GatedSocket(sock)
    with Client(cast(socket.socket, gated), daemon.address, call_timeout=None) as c:
        yield c, gated


@pytest.mark.parametrize("kept", [False, True], ids=["answered", "answered from kept bytes"])
def test_a_handler_reading_the_connection_of_the_running_read_is_answered(
    daemon: Daemon, kept: bool
) -> None:
    """`kept`: the running read rides on a read abandoned before (interrupted while it waited,
    no timeout_ms): it is answered from the bytes that read got (`ClientCodec._serve`)."""
    with _client(daemon) as (c, gated):
        lid = c.tcp_listen(HOST, 0)
        port = c.tcp_listener_info(lid)["port"]
        with socket.create_connection((HOST, port), timeout=WAIT) as peer:
            cid = c.tcp_accept(lid, int(WAIT * 1000))
            assert c.events_subscribe(cid) is True
            nested: list[Any] = []

            def on_event(params: list[Any]) -> None:
                if params[:2] != [cid, "TcpIndicateDisconnect"]:
                    return
                try:
                    nested.append(c.call("tcp.recv", cid, 100, timeout=NESTED_TIMEOUT))
                except Exception as exc:  # recorded: the handler's exception is only logged
                    nested.append(exc)

            c.on_notification("tcp.event", on_event)
            if kept:
                gated.interrupt_after = 0.05
                with pytest.raises(_Interrupted):
                    c.tcp_recv(cid, 100)  # abandoned: it stays in the daemon
            peer.sendall(b"hello")
            peer.shutdown(socket.SHUT_WR)
            gated.gated = True
            assert c.tcp_recv(cid, 100) == b"hello"
            # the daemon answered the handler's read at once (the end of stream); held, it
            # waited out its limit: CallTimeout
            assert nested == [b""], nested
            assert c.tcp_close(cid) is True
