"""What abandoned `tcp.recv`s and `tcp.accept`s get is kept, and handed on in stream order.

Each test drives `ClientCodec` as the shells do (request, forget on abandon, receive the
daemon's answers in the order a daemon sends them) and states what the contract asks
(rpc-contract.md `tcp.recv`: bytes in stream order, none lost; `tcp.close`; docs/rpc.md
`tcp.recv`: a reset connection's reads return the bytes sent before the RST, then
`NDIS_STATUS_REQUEST_ABORTED`).
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest

from chimney_client.blocking import Client
from chimney_client.errors import CallTimeout
from chimney_client.protocol import ClientCodec, server_wait
from tests.clients.scripted import RECV_TIMEOUT, replies_in, request_params, response

RESET = [5, "NDIS_STATUS: NDIS_STATUS_REQUEST_ABORTED (0xC023000C)"]


def test_a_read_waiting_in_the_daemon_gets_bytes_kept_after_it_was_sent() -> None:
    """A read cancelled (no answer yet), then the next read of the connection sent at once (as
    any reading loop does after `wait_for` gave up): the daemon hands the peer's next bytes to
    the abandoned read, the codec keeps them, and the read on its way goes on waiting in the
    daemon for bytes that may never come (a request/response peer waits for our answer): the
    bytes are kept, the caller is blocked (without a timeout: for ever)."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "cancelled")
    codec.forget(gone)
    codec.request("tcp.recv", (1, 100), "waiting")
    replies = replies_in(codec, response(gone, b"hello"))
    assert [(r.token, r.result) for r in replies] == [("waiting", b"hello")]


def test_bytes_kept_ahead_of_a_reset_come_before_the_reset() -> None:
    """The peer sent "abc" then reset: the abandoned read got "abc" (kept), the read on its way
    the reset. Stream order is "abc" then NDIS_STATUS_REQUEST_ABORTED; the codec raises the
    reset first and hands "abc" to the read after it (a caller stops reading at the reset)."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "cancelled")
    mine, _ = codec.request("tcp.recv", (1, 100), "mine")
    codec.forget(gone)
    (reply,) = replies_in(codec, response(gone, b"abc") + response(mine, None, RESET))
    codec.forget(mine)
    after = codec.before_read((1, 100))
    assert (reply.error, reply.result, after) == (None, b"abc", None)


def test_a_waitall_read_that_times_out_gets_the_bytes_kept_meanwhile() -> None:
    """2 bytes kept; a waitall read of 4 asks the daemon for the 2 missing; a read abandoned
    before it (still unanswered) takes the last 2 the peer sent, which are kept: the client then
    holds all 4, but the daemon's waitall wait sees nothing more and answers TIMEOUT, which the
    codec raises, though what it holds covers the read."""
    codec: ClientCodec[str] = ClientCodec()
    first, _ = codec.request("tcp.recv", (1, 100), "cancelled")
    codec.forget(first)
    assert replies_in(codec, response(first, b"ab")) == []
    second, _ = codec.request("tcp.recv", (1, 100), "cancelled too")
    codec.forget(second)
    waitall, data = codec.request("tcp.recv", (1, 4, 1000, {"waitall": True}), "waitall")
    assert request_params(data)[1] == 2  # asks only what the kept bytes do not cover
    (reply,) = replies_in(codec, response(second, b"cd") + response(waitall, None, RECV_TIMEOUT))
    assert (reply.error, reply.result) == (None, b"abcd")


def test_bytes_kept_for_a_connection_closed_meanwhile_are_not_kept() -> None:
    """An abandoned read's answer comes after `tcp.close` of its connection was sent (the
    daemon answered the read before it ran the close): its bytes are kept for a connection
    that has no next read (ids are never reused) — kept for the client's life, and a read of
    the closed connection is answered with them instead of the daemon's error."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "cancelled")
    codec.forget(gone)
    close, _ = codec.request("tcp.close", (1,), "close")
    replies = replies_in(codec, response(gone, b"x" * 1000) + response(close, True))
    assert [r.token for r in replies] == ["close"]
    assert codec.before_read((1, 100)) is None  # the daemon answers: the connection is closed


def test_a_read_cancelled_after_its_answer_does_not_come_after_later_bytes() -> None:
    """Two reads of one connection in flight behind an abandoned one: "aaaa" goes to the
    first; what is left ("bbbb") is taken by a read made before the first's caller runs again
    and sees its cancellation (a task woken earlier in the same loop turn); the cancelled
    read's "aaaa" is then kept *first*, and handed after "bbbb": the caller reads
    "bbbb", "aaaa"."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "abandoned")
    first, _ = codec.request("tcp.recv", (1, 4), "cancelled after its answer came")
    codec.forget(gone)
    (reply,) = replies_in(codec, response(gone, b"aaaa") + response(first, b"bbbb"))
    assert reply.result == b"aaaa"
    taken = [codec.before_read((1, 100))]  # a read made before `first`'s caller resumes
    codec.late(reply)  # its caller resumes, cancelled: `call()` keeps its bytes
    codec.forget(first)
    taken.append(codec.before_read((1, 100)))
    assert b"".join(t or b"" for t in taken) == b"aaaabbbb"


def test_a_call_timeout_over_an_hour_is_not_cut_to_the_daemons_hour() -> None:
    """`call_timeout=7200` bounds a call at two hours (Client docstring); a `tcp.recv` sent it
    as an hour's `timeout_ms` raises `CallTimeout` after one hour."""
    wait = server_wait("tcp.recv", [1, 100], 7200.0)
    assert wait.limit is not None and wait.limit >= 7200.0


def test_an_accept_waiting_in_the_daemon_gets_a_connection_kept_after_it_was_sent() -> None:
    """As for reads: an accept cancelled, the next accept of the listener sent at once; the
    daemon's next connection goes to the cancelled one and is kept, while the accept on its way
    waits in the daemon for another connection."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.accept", (3,), "cancelled")
    codec.forget(gone)
    codec.request("tcp.accept", (3,), "waiting")
    replies = replies_in(codec, response(gone, 17))
    assert [(r.token, r.result) for r in replies] == [("waiting", 17)]


def test_bytes_kept_stay_kept_when_the_close_is_refused() -> None:
    """`_closing` drops what is kept for a connection when `tcp.close` is *sent*; the daemon may
    refuse it (`LIMIT: more than 256 requests in flight` — abandoned reads count — or a call
    the client timed out before it was written): the connection stays open and readable, the
    bytes the daemon already handed out are gone."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "cancelled")
    codec.forget(gone)
    assert replies_in(codec, response(gone, b"kept")) == []
    close, _ = codec.request("tcp.close", (1,), "close")
    (reply,) = replies_in(
        codec, response(close, None, [6, "LIMIT: more than 256 requests in flight"])
    )
    assert reply.error is not None
    codec.forget(close)
    assert codec.before_read((1, 100)) == b"kept"


def test_a_read_never_sent_is_not_waited_for() -> None:
    """Blocking client: a `tcp.recv` whose request could not be written at all (the daemon does
    not read: `CallTimeout`, "not sent", the connection stays usable) is recorded as an
    abandoned read awaiting an answer that never comes: one entry per such call, for the
    client's life."""
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # the daemon's side reads nothing: fill what the kernel holds
                ours.send(b"\0" * 65536)
        with contextlib.suppress(BlockingIOError):
            while True:
                ours.send(b"\0")
        client = Client(ours, "test", call_timeout=0.05)
        with pytest.raises(CallTimeout, match="not sent"):
            client.tcp_recv(1, 100)  # waits 5.05 s: the server-wait margin bounds sending too
        assert not client.closed
        assert client._codec._orphans == {}
    finally:
        ours.close()
        theirs.close()


def test_a_timed_abandoned_reads_timeout_is_not_the_answer_of_a_read_riding() -> None:
    """Two abandoned reads of a connection wait in the daemon: one with no timeout_ms, then
    one with a timeout_ms. A read made then rides on the first (`ClientCodec._ride`, it has no
    timeout itself). When the second's timeout_ms runs out, its TIMEOUT is not the rider's
    answer (a read with no timeout_ms never gets one from the daemon): the rider gets the
    bytes the first read then gets."""
    codec: ClientCodec[str] = ClientCodec()
    untimed, _ = codec.request("tcp.recv", (1, 100), "untimed")
    codec.forget(untimed)
    timed, _ = codec.request("tcp.recv", (1, 100, 1000), "timed")
    codec.forget(timed)
    rider, data = codec.request("tcp.recv", (1, 100), "rider")
    assert data == b""
    assert replies_in(codec, response(timed, None, RECV_TIMEOUT)) == []
    (reply,) = replies_in(codec, response(untimed, b"x"))
    assert (reply.token, reply.error, reply.result) == ("rider", None, b"x")
    codec.forget(rider)


@pytest.mark.parametrize("end", [b"", RESET], ids=["end of stream", "reset"])
def test_a_read_riding_does_not_get_the_end_before_bytes_still_in_a_callers_hands(
    end: bytes | list[Any],
) -> None:
    """Read `h` is answered "ab" and its caller has not run yet (it may be cancelled and give
    "ab" back, `late`); another task's read with no timeout is sent, then abandoned; the next
    read rides on it (`_ride`). The abandoned read gets the peer's FIN (or a reset): the
    reader riding must get it after "ab", as a read the daemon answers meanwhile waits behind
    `h` (parked), not at once (docs/rpc.md tcp.recv: the end of stream, or the reset, comes
    after the last byte; a caller stops reading there and would lose "ab")."""
    codec: ClientCodec[str] = ClientCodec()
    h, _ = codec.request("tcp.recv", (1, 100), "h")
    (reply_h,) = replies_in(codec, response(h, b"ab"))
    gone, _ = codec.request("tcp.recv", (1, 100), "cancelled")
    codec.forget(gone)
    rider, data = codec.request("tcp.recv", (1, 100), "rider")
    assert not data  # rides on the abandoned read
    frame = response(gone, b"") if end == b"" else response(gone, None, end)
    assert replies_in(codec, frame) == [], "the end handed out while 'ab' may come back"
    codec.late(reply_h)  # h's caller was cancelled before it ran again: "ab" goes back
    codec.forget(h)
    taken = [(r.token, r.error, r.result) for r in codec.take_ready()]
    assert taken == [("rider", None, b"ab")], taken
    codec.forget(rider)
    after = codec.before_read((1, 100))
    assert after is None  # the end is the daemon's to tell again: the next read is sent


def test_a_read_riding_given_up_on_while_its_end_waits_is_forgotten() -> None:
    """As above, the reader riding gives up while its end of stream waits behind "ab" (its
    own timeout): nothing of it stays in the codec (a client giving up on many reads so
    would grow without end)."""
    codec: ClientCodec[str] = ClientCodec()
    h, _ = codec.request("tcp.recv", (1, 100), "h")
    (reply_h,) = replies_in(codec, response(h, b"ab"))
    gone, _ = codec.request("tcp.recv", (1, 100), "cancelled")
    codec.forget(gone)
    rider, _ = codec.request("tcp.recv", (1, 100), "rider")
    assert replies_in(codec, response(gone, b"")) == []
    codec.forget(rider)  # gives up
    codec.forget(h)  # h's caller takes "ab"
    assert reply_h.result == b"ab"
    assert codec.take_ready() == []
    assert not codec._riding and not codec._parked and not codec._reads
