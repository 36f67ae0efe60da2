"""The codec keeps what abandoned `tcp.recv`s get (contract tcp.recv: no data is lost): the
daemon cannot withdraw a read its caller gave up on, and hands it the next bytes in stream
order; the codec gives them to the connection's next reads, in that order, with no socket."""

from __future__ import annotations

from chimney_client.errors import RpcTimeout
from chimney_client.protocol import ClientCodec, Reply
from tests.clients.scripted import RECV_TIMEOUT, replies_in, request_params, response


def test_an_abandoned_reads_bytes_go_to_the_next_read_of_its_connection() -> None:
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "abandoned")
    codec.forget(gone)  # its caller timed out or was cancelled
    assert codec.before_read((1, 100)) is None  # nothing kept yet: ask the daemon
    assert replies_in(codec, response(gone, b"hello")) == []
    assert codec.before_read((2, 100)) is None  # another connection's
    assert codec.before_read((1, 3)) == b"hel"
    assert codec.before_read((1, 100)) == b"lo"
    assert codec.before_read((1, 100)) is None
    assert (codec.kept_bytes, codec.dropped_responses) == (5, 0)


def test_a_read_already_on_its_way_gets_the_kept_bytes_at_once() -> None:
    """Asked before the kept bytes came, it was first in the daemon's queue after the abandoned
    read: the kept bytes are its own, and it gets them when they come (the daemon may have
    nothing more to give it); what its own request then gets is kept for the next read."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "abandoned")
    mine, _ = codec.request("tcp.recv", (1, 4), "mine")
    codec.forget(gone)
    (reply,) = replies_in(codec, response(gone, b"abc"))
    assert (reply.token, reply.result) == ("mine", b"abc")
    assert replies_in(codec, response(mine, b"def")) == []
    codec.forget(mine)
    assert codec.before_read((1, 100)) == b"def"


def _answered_between_two_abandoned(codec: ClientCodec[str]) -> tuple[int, Reply[str]]:
    """Three reads of connection 1, the first and last abandoned, whose answers ("1", "2",
    "3") come in one chunk: the middle read's msgid and its reply (the first one's bytes)."""
    first, _ = codec.request("tcp.recv", (1, 100), "abandoned")
    mine, _ = codec.request("tcp.recv", (1, 100), "mine")
    later, _ = codec.request("tcp.recv", (1, 100), "abandoned later")
    codec.forget(first)
    codec.forget(later)
    (reply,) = replies_in(
        codec, response(first, b"1") + response(mine, b"2") + response(later, b"3")
    )
    assert (reply.token, reply.result) == ("mine", b"1")
    return mine, reply


def test_bytes_kept_after_an_answer_decoded_stay_behind_it() -> None:
    """The answer of a read and a later abandoned read's come in one chunk: joined in wire
    order, not when the read's caller runs again."""
    codec: ClientCodec[str] = ClientCodec()
    mine, _ = _answered_between_two_abandoned(codec)
    codec.forget(mine)
    assert codec.before_read((1, 100)) == b"23"


def test_an_answer_its_caller_gave_up_on_when_it_came_is_kept_first() -> None:
    codec: ClientCodec[str] = ClientCodec()
    mine, reply = _answered_between_two_abandoned(codec)
    codec.late(reply)  # its caller was cancelled after the answer came: not delivered
    codec.forget(mine)
    assert codec.before_read((1, 100)) == b"123"


def test_a_waitall_read_asks_only_for_what_is_not_kept() -> None:
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "abandoned")
    codec.forget(gone)
    replies_in(codec, response(gone, b"abcd"))
    waitall = {"waitall": True}
    assert codec.before_read((1, 3, None, waitall)) == b"abc"  # covered: no need to ask
    assert codec.before_read((1, 10, 500, waitall)) is None
    mine, data = codec.request("tcp.recv", (1, 10, 500, waitall), "mine")
    assert request_params(data) == [1, 9, 500, waitall]
    (reply,) = replies_in(codec, response(mine, b"efghijklm"))
    assert reply.result == b"defghijklm"


def test_a_timeout_is_no_answer_when_bytes_were_kept() -> None:
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "abandoned")
    mine, _ = codec.request("tcp.recv", (1, 100), "mine")
    codec.forget(gone)
    (reply,) = replies_in(codec, response(gone, b"xy") + response(mine, error=RECV_TIMEOUT))
    assert (reply.error, reply.result) == (None, b"xy")
    waitall, _ = codec.request("tcp.recv", (1, 100, 50, {"waitall": True}), "waitall")
    gone2, _ = codec.request("tcp.recv", (1, 100), "abandoned")
    codec.forget(mine)
    codec.forget(gone2)
    replies_in(codec, response(gone2, b"z"))
    (reply,) = replies_in(codec, response(waitall, error=RECV_TIMEOUT))
    assert isinstance(reply.error, RpcTimeout)  # a waitall read is not answered short


def test_errors_and_ends_of_stream_are_not_kept_and_a_close_drops_the_rest() -> None:
    codec: ClientCodec[str] = ClientCodec()
    ids = [codec.request("tcp.recv", (1, 100), "abandoned")[0] for _ in range(3)]
    for msgid in ids:
        codec.forget(msgid)
    replies_in(codec, response(ids[0], error=RECV_TIMEOUT) + response(ids[1], b""))
    assert codec.before_read((1, 100)) is None  # the daemon answers them again
    assert codec.dropped_responses == 2
    replies_in(codec, response(ids[2], b"left"))
    close, _ = codec.request("tcp.close", (1,), "close")
    replies_in(codec, response(close, True))  # dropped when the daemon closed it, not before
    assert codec.before_read((1, 100)) is None
    other, _ = codec.request("tcp.send", (1, b"x"), "send")
    codec.forget(other)
    assert replies_in(codec, response(other, 1)) == [] and codec.dropped_responses == 3


# -- tcp.accept: an abandoned accept takes the listener's next connection ------------------------
def test_an_abandoned_accepts_connection_goes_to_the_next_accept_of_its_listener() -> None:
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.accept", (5,), "abandoned")
    codec.forget(gone)
    assert codec.kept_answer("tcp.accept", (5,)) is None
    assert replies_in(codec, response(gone, 17)) == []
    assert codec.kept_answer("tcp.accept", (6, 100)) is None  # another listener's
    assert codec.kept_answer("tcp.accept", (5, 100)) == 17
    assert codec.kept_answer("tcp.accept", (5, 100)) is None


def test_an_accept_on_its_way_gets_the_kept_connection_first_or_instead_of_a_timeout() -> None:
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.accept", (5,), "abandoned")
    mine, _ = codec.request("tcp.accept", (5, 100), "mine")
    codec.forget(gone)
    (reply,) = replies_in(codec, response(gone, 17))  # `mine` was asked first: it is its own
    assert (reply.token, reply.result) == ("mine", 17)
    assert replies_in(codec, response(mine, 18)) == []  # kept for the next accept
    codec.forget(mine)
    again, _ = codec.request("tcp.accept", (5, 100), "again")
    (reply,) = replies_in(codec, response(again, error=[7, "TIMEOUT: no connection on listener 5"]))
    assert (reply.error, reply.result) == (None, 18)


def test_an_accepted_connection_its_caller_gave_up_on_is_kept_first_and_a_close_drops_it() -> None:
    codec: ClientCodec[str] = ClientCodec()
    mine, _ = codec.request("tcp.accept", (5,), "cancelled after its answer came")
    later, _ = codec.request("tcp.accept", (5,), "abandoned later")
    codec.forget(later)
    (reply,) = replies_in(codec, response(mine, 17) + response(later, 18))
    codec.late(reply)
    codec.forget(mine)
    close, _ = codec.request("tcp.close", (17,), "the caller found it in tcp.list and closed it")
    replies_in(codec, response(close, True))
    assert codec.kept_answer("tcp.accept", (5,)) == 18


def test_a_read_answered_but_not_yet_taken_by_its_caller_leaves_the_rest_to_the_next() -> None:
    """The answer of a read on its way took the kept bytes before it when it was decoded; a
    read asked before its caller runs again waits (its caller may give them back, cancelled:
    they come before the rest), then gets what is left."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "abandoned")
    mine, _ = codec.request("tcp.recv", (1, 2), "mine")
    codec.forget(gone)
    (reply,) = replies_in(codec, response(gone, b"abc") + response(mine, b"d"))
    assert reply.result == b"ab"  # decoded; `mine` has not run again, so not forgotten yet
    assert codec.kept_answer("tcp.recv", (1, 100)) is None
    codec.forget(mine)
    assert codec.kept_answer("tcp.recv", (1, 100)) == b"cd"


def _first_given_the_kept_a(
    codec: ClientCodec[str], seconds_answer: bytes
) -> tuple[int, int, Reply[str]]:
    """Reads `first` and `second` of connection 1 behind an abandoned one; the answers "a",
    "b" and `seconds_answer` come in one chunk: `first` is given the kept "a" at once, and
    nothing else is. Their msgids and `first`'s reply."""
    gone, _ = codec.request("tcp.recv", (1, 100), "abandoned")
    first, _ = codec.request("tcp.recv", (1, 100), "first")
    second, _ = codec.request("tcp.recv", (1, 100), "second")
    codec.forget(gone)
    replies = replies_in(
        codec, response(gone, b"a") + response(first, b"b") + response(second, seconds_answer)
    )
    assert [(r.token, r.result) for r in replies] == [("first", b"a")]
    return first, second, replies[0]


def test_a_reads_own_answer_waits_while_an_earlier_read_is_in_its_callers_hands() -> None:
    """`first` got the kept "a" at once; its own answer "b" and `second`'s "c" come in the same
    chunk. `second` must not take "bc" before `first`'s caller has taken "a": cancelled, it
    gives "a" back, which comes before them (spec §4.4: bytes in stream order)."""
    codec: ClientCodec[str] = ClientCodec()
    first, second, given = _first_given_the_kept_a(codec, b"c")
    codec.late(given)  # `first`'s caller was cancelled before it ran again
    codec.forget(first)
    (reply,) = codec.take_ready()
    assert (reply.token, reply.result) == ("second", b"a")
    codec.forget(second)
    assert codec.before_read((1, 100)) == b"bc"
    assert codec.pending == 0 and not codec._orphans  # nothing waits for an answer that came


def test_a_reads_own_end_of_stream_waits_behind_the_bytes_before_it() -> None:
    """As above, `second` is answered with the end of stream: it gets the bytes kept before it
    once `first` is taken; the end of stream is the daemon's answer to the read after."""
    codec: ClientCodec[str] = ClientCodec()
    first, _, _ = _first_given_the_kept_a(codec, b"")
    codec.forget(first)
    (reply,) = codec.take_ready()
    assert (reply.token, reply.result) == ("second", b"b")


def test_a_parked_waitall_timeout_is_no_short_answer() -> None:
    """A waitall read answered TIMEOUT while an earlier read is in its caller's hands raises
    TIMEOUT once that one is taken, when what is kept does not cover it; the bytes stay."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "abandoned")
    first, _ = codec.request("tcp.recv", (1, 100), "first")
    waitall, _ = codec.request("tcp.recv", (1, 10, 50, {"waitall": True}), "waitall")
    codec.forget(gone)
    chunk = response(gone, b"a") + response(first, b"b") + response(waitall, error=RECV_TIMEOUT)
    assert [r.result for r in replies_in(codec, chunk)] == [b"a"]
    codec.forget(first)
    (reply,) = codec.take_ready()
    assert (reply.token, isinstance(reply.error, RpcTimeout)) == ("waitall", True)
    codec.forget(waitall)
    assert codec.before_read((1, 100)) == b"b"
