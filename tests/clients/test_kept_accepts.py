"""An accept behind an abandoned `tcp.accept` with no timeout rides on its answer (not sent).

A loop of `wait_for(c.tcp_accept(lid), t)` on a client with no call_timeout sends no timeout_ms:
each accept it gives up on stays in the daemon until a connection comes. Sending one more per
turn filled the daemon's 256 requests in flight (docs/rpc.md "Limits"); an accept of a listener
whose abandoned accept with no timeout still waits there is answered with what that one gets.
"""

from __future__ import annotations

from chimney_client.protocol import ClientCodec
from tests.clients.scripted import RECV_TIMEOUT, replies_in, response

NOT_FOUND = [3, "NOT_FOUND: listener 3 is closed"]


def test_an_accept_behind_an_abandoned_one_with_no_timeout_is_not_sent() -> None:
    codec: ClientCodec[str] = ClientCodec()
    gone, data = codec.request("tcp.accept", (3,), "cancelled")
    assert data
    codec.forget(gone)
    for turn in range(300):  # each turn gives up on its accept too
        msgid, data = codec.request("tcp.accept", (3,), f"turn {turn}")
        assert data == b"", f"turn {turn}: accept sent while one waits in the daemon"
        codec.forget(msgid)
    last, data = codec.request("tcp.accept", (3,), "last")
    assert data == b""
    assert [(r.token, r.result) for r in replies_in(codec, response(gone, 17))] == [("last", 17)]
    codec.forget(last)
    assert codec.kept_answer("tcp.accept", (3,)) is None  # nothing else kept
    assert not codec._riding_accepts and not codec._orphan_accepts


def test_a_connection_the_abandoned_accept_gets_with_no_rider_is_kept() -> None:
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.accept", (3,), "cancelled")
    codec.forget(gone)
    rider, data = codec.request("tcp.accept", (3,), "rider")
    assert data == b""
    codec.forget(rider)  # given up too: nothing was sent for it
    assert replies_in(codec, response(gone, 17)) == []
    assert codec.kept_answer("tcp.accept", (3,)) == 17


def test_a_rider_gets_the_error_of_the_accept_it_rides_on() -> None:
    """The listener closed: the abandoned accept is answered NOT_FOUND; so would the rider's
    own request have been."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.accept", (3,), "cancelled")
    codec.forget(gone)
    _, data = codec.request("tcp.accept", (3,), "rider")
    assert data == b""
    (reply,) = replies_in(codec, response(gone, None, NOT_FOUND))
    assert reply.token == "rider" and reply.error is not None and "NOT_FOUND" in str(reply.error)


def test_an_accept_with_a_timeout_or_behind_a_timed_accept_is_sent() -> None:
    """An accept with its own timeout_ms is sent (its TIMEOUT must come from the daemon); one
    behind an abandoned accept with a timeout is sent (that one ends by TIMEOUT, which is not
    this one's answer), and such a TIMEOUT is not handed to a rider."""
    codec: ClientCodec[str] = ClientCodec()
    timed, _ = codec.request("tcp.accept", (3, 1000), "timed")
    codec.forget(timed)
    sent, data = codec.request("tcp.accept", (3,), "sent")
    assert data
    codec.forget(sent)  # abandoned too: no timeout
    _, data = codec.request("tcp.accept", (3, 500), "own timeout")
    assert data
    codec2: ClientCodec[str] = ClientCodec()
    untimed, _ = codec2.request("tcp.accept", (3,), "untimed")
    codec2.forget(untimed)
    timed, _ = codec2.request("tcp.accept", (3, 1000), "timed")
    codec2.forget(timed)
    _, data = codec2.request("tcp.accept", (3,), "rider")
    assert data == b""
    assert replies_in(codec2, response(timed, None, RECV_TIMEOUT)) == []
    assert [(r.token, r.result) for r in replies_in(codec2, response(untimed, 9))] == [("rider", 9)]


def test_an_accept_is_sent_while_another_of_its_listener_is_on_its_way() -> None:
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.accept", (3,), "cancelled")
    codec.forget(gone)
    _, data = codec.request("tcp.accept", (3,), "rider")
    assert data == b""
    _, data = codec.request("tcp.accept", (3,), "second")
    assert data, "two accepts riding on one answer"
    _, data = codec.request("tcp.accept", (4,), "other listener")
    assert data


def test_listener_info_pending_counts_the_connections_kept_for_the_listener() -> None:
    """Both clients (and raw `call`s) decode through the codec: `pending` of a
    `tcp.listener_info` answer gets the connections kept for that listener added, not for
    another one; an error answer is as it came."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.accept", (3, 1000), "cancelled")
    codec.forget(gone)
    assert replies_in(codec, response(gone, 17)) == []  # kept for listener 3
    info = {"host": "127.0.0.1", "port": 5000, "pending": 2}
    mine, _ = codec.request("tcp.listener_info", (3,), "mine")
    other, _ = codec.request("tcp.listener_info", (4,), "other")
    bad, _ = codec.request("tcp.listener_info", (3,), "bad")
    replies = replies_in(
        codec, response(mine, info) + response(other, info) + response(bad, None, NOT_FOUND)
    )
    assert [r.result for r in replies] == [{**info, "pending": 3}, info, None]
    assert replies[2].error is not None
    assert codec.kept_answer("tcp.accept", (3,)) == 17
    again, _ = codec.request("tcp.listener_info", (3,), "again")
    (reply,) = replies_in(codec, response(again, info))
    assert reply.result == info
