"""The blocking client runs notification handlers inside the call that read the notification,
before that call returns. A `tcp.recv` a handler makes of a connection whose read that call
(or one further out) was answered must not wait behind that answer (`ClientCodec` holds a
read's answer while an earlier read's bytes are in their caller's hands, for stream order):
their caller is the thread running the handler. It used to wait for its whole timeout (for
ever with none), though the daemon had answered it (`ClientCodec.taken`)."""

from __future__ import annotations

import socket
from typing import Any

import msgpack

from chimney_client import Client
from chimney_client.errors import CallTimeout
from chimney_client.protocol import ClientCodec
from tests.clients.scripted import HANG, ThreadServer, replies_in, reply, response

#: the handler's read: answered at once by the server; held, it waits out this limit
NESTED = 0.5


def test_a_handlers_read_answered_with_the_outer_reads_answer_is_not_held() -> None:
    """The outer read is on its way when a notification comes; its handler reads the same
    connection. The server answers both reads in one chunk, the outer's first: the handler's
    read gets its own answer, the outer read its own, in stream order."""
    outer: list[int] = []

    def on_request(conn: socket.socket, msgid: int, method: str, params: list[Any]) -> None:
        if method != "tcp.recv":
            reply(conn, msgid, True)
        elif not outer:
            outer.append(msgid)
            conn.sendall(msgpack.packb([2, "tick", [1]]))  # the outer read waits
        else:
            conn.sendall(response(outer[0], b"first") + response(msgid, b"second"))

    srv = ThreadServer(on_request)
    try:
        with Client.connect(srv.address, call_timeout=HANG) as c:
            nested: list[Any] = []

            def handler(params: list[Any]) -> None:
                try:
                    nested.append(c.call("tcp.recv", 1, 100, timeout=NESTED))
                except CallTimeout as exc:
                    nested.append(exc)

            c.on_notification("tick", handler)
            assert c.call("tcp.recv", 1, 100, timeout=HANG) == b"first"
            assert nested == [b"second"], nested
    finally:
        srv.close()


def test_taken_lets_a_later_reads_answer_through_and_late_still_gives_back() -> None:
    """Codec: read `a` is answered "x" and its caller has it (`taken`) but has not returned;
    read `b` of the connection is answered "y" at once, not held behind "x". If `a`'s caller
    is then interrupted (`late`), "x" is kept for the next read, not lost."""
    codec: ClientCodec[str] = ClientCodec()
    a, _ = codec.request("tcp.recv", (1, 100), "a")
    (reply_a,) = replies_in(codec, response(a, b"x"))
    codec.taken(a)
    assert codec.take_ready() == []
    b, _ = codec.request("tcp.recv", (1, 100), "b")
    got = [(r.token, r.result) for r in replies_in(codec, response(b, b"y"))]
    assert got == [("b", b"y")], got
    codec.forget(b)
    codec.late(reply_a)
    codec.forget(a)
    assert codec.before_read((1, 100)) == b"x"
    assert not codec._taken and not codec._reads and not codec._in_hand


def test_taken_hands_out_what_waited_behind_it() -> None:
    """Read `h` answered "ab" while `b` is on its way: `b`'s answer "cd" is parked behind
    "ab" (in `h`'s caller's hands). `taken(h)` lets it through."""
    codec: ClientCodec[str] = ClientCodec()
    h, _ = codec.request("tcp.recv", (1, 100), "h")
    b, _ = codec.request("tcp.recv", (1, 100), "b")
    got = [(r.token, r.result) for r in replies_in(codec, response(h, b"ab") + response(b, b"cd"))]
    assert got == [("h", b"ab")], got
    codec.taken(h)
    assert [(r.token, r.result) for r in codec.take_ready()] == [("b", b"cd")]
    codec.forget(b)
    codec.forget(h)
    assert not codec._taken and not codec._reads and not codec._in_hand and not codec._kept
