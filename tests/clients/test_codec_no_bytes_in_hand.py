"""A read answered with no bytes (an error, the end of stream) puts nothing in its caller's
hands that `late` could give back, so no later read of its connection waits behind it
(`ClientCodec._in_hand`). A waitall read that timed out short of the bytes kept for its
connection was the exception: the codec marked that read itself 'in hand' while it offered
the kept bytes to the next read, so the next read was answered only once the timed-out
read's caller had run again. And a read behind an abandoned waitall read never got the bytes
kept ahead of both: nothing offered them to it once the waitall read was abandoned. And a
refusal parked behind a read riding on an abandoned one (`_ride`) never reached its caller
once the rider got its end (a rider's end is decoded as the abandoned read's answer) or its
NOT_FOUND (the connection's tcp.close succeeded)."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.protocol import ClientCodec, Reply
from tests.clients.scripted import RECV_TIMEOUT, response
from tests.clients.test_kept_reads_sequences import CLOSED, LIMIT, RESET, KeptReads


def _kept_codec(data: bytes) -> ClientCodec[str]:
    """A codec holding `data` for connection 1: an abandoned read of it got them."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100, None), "gone")
    codec.forget(gone)
    assert codec.receive(response(gone, data)) == []
    return codec


def test_a_waitall_read_timed_out_short_of_kept_bytes_hands_them_to_the_next_read_at_once() -> None:
    """Two bytes are kept; a waitall read of 5 (sent for the 3 they do not cover) and a plain
    read after it wait in the daemon. The waitall read times out: the kept bytes stay, and
    the plain read, which they answer (docs/rpc.md tcp.recv: 1..max_bytes), gets them with
    the same chunk, after the TIMEOUT. Nothing is in anyone's hands but those bytes."""
    codec = _kept_codec(b"ab")
    waitall, _ = codec.request("tcp.recv", (1, 5, 1000, {"waitall": True}), "waitall")
    plain, _ = codec.request("tcp.recv", (1, 10, 1000), "plain")
    got = [e for e in codec.receive(response(waitall, None, RECV_TIMEOUT)) if isinstance(e, Reply)]
    assert [(r.token, type(r.error).__name__, r.result) for r in got] == [
        ("waitall", "RpcTimeout", None),
        ("plain", "NoneType", b"ab"),
    ]
    assert waitall not in codec._in_hand, "a TIMEOUT (no bytes) is in its caller's hands"
    codec.forget(waitall)
    codec.forget(plain)
    assert codec.take_ready() == []
    assert not codec._in_hand and not codec._reads and not codec._parked


def test_the_blocking_clients_taken_on_such_a_timeout_changes_nothing() -> None:
    """As the blocking client delivers: `taken` on the TIMEOUT's msgid, then `forget`; the
    plain read had its bytes already and nothing is left in hand or pending but its own
    request, still in the daemon (what it gets is kept)."""
    codec = _kept_codec(b"ab")
    waitall, _ = codec.request("tcp.recv", (1, 5, 1000, {"waitall": True}), "waitall")
    plain, _ = codec.request("tcp.recv", (1, 10, 1000), "plain")
    got = [e for e in codec.receive(response(waitall, None, RECV_TIMEOUT)) if isinstance(e, Reply)]
    for reply in got:
        codec.taken(reply.msgid)
    assert codec.take_ready() == []
    assert [r.token for r in got] == ["waitall", "plain"]
    assert waitall not in codec._taken
    codec.forget(waitall)
    codec.forget(plain)
    assert codec.pending == 0 and not codec._in_hand and not codec._taken
    # the plain read's own request is answered later: its bytes are kept for the next read
    assert codec.receive(response(plain, b"c")) == []
    assert codec.before_read((1, 10)) == b"c"


def test_a_read_behind_an_abandoned_waitall_read_gets_the_bytes_kept_ahead_of_both() -> None:
    """An abandoned read got "4567" (kept); a waitall read of 5, which they do not cover, and a
    read with no timeout_ms behind it wait in the daemon, which has no bytes. The waitall
    read is abandoned, then times out in the daemon: nothing ahead of the read behind it wants
    the kept bytes any more, and it gets them (docs/rpc.md tcp.recv: a read waiting in the
    daemon behind an abandoned one gets them as soon as they come). It waited for ever (until
    the peer sent more), with "4567" in the client."""
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 4, 1000), "gone")
    codec.forget(gone)
    waitall, _ = codec.request("tcp.recv", (1, 5, 1000, {"waitall": True}), "waitall")
    last, _ = codec.request("tcp.recv", (1, 4, None), "last")
    assert codec.receive(response(gone, b"4567")) == []  # not enough for the waitall read
    codec.forget(waitall)  # its caller gives up on it (its own limit, cancelled)
    got = codec.take_ready()
    got += [e for e in codec.receive(response(waitall, None, RECV_TIMEOUT)) if isinstance(e, Reply)]
    got += codec.take_ready()
    assert [(r.token, r.result) for r in got] == [("last", b"4567")]
    codec.forget(last)
    # the read's own request, still in the daemon, gets the next bytes: kept for the next read
    assert codec.receive(response(last, b"89")) == []
    assert codec.before_read((1, 10)) == b"89"


def test_the_kept_reads_machine_sequence_of_an_abandoned_waitall_read() -> None:
    """The same in the kept-reads machine (found by uniform random walks over its rules): a
    read with no timeout behind an abandoned waitall read never got the bytes kept ahead of
    them, and what the callers took stopped short of the stream."""
    machine = KeptReads()
    machine.read(conn=1, max_bytes=4, waitall=False, forever=False)
    machine.cancel_waiting(index=3)
    machine.read(conn=1, max_bytes=4, waitall=False, forever=True)
    machine.peer_sends(conn=1, data=b"\x00\x00\x00\x00")
    machine.read(conn=1, max_bytes=5, waitall=True, forever=False)
    machine.blocking_delivery()
    machine.read(conn=1, max_bytes=4, waitall=False, forever=True)
    machine.peer_sends(conn=1, data=b"\x00\x00\x00\x00")
    machine.cancel_waiting(index=0)
    machine.taken_is_a_prefix_of_the_stream()
    machine.indexes_agree_with_what_they_index()
    machine.teardown()


@pytest.mark.parametrize("end", [b"", RESET], ids=["end-of-stream", "reset"])
def test_a_refusal_parked_behind_a_read_riding_reaches_its_caller_after_the_riders_end(
    end: Any,
) -> None:
    """A read with no timeout_ms is abandoned behind a read still in the daemon, which is then
    answered "abc" (not yet taken by its caller). The next read rides on the abandoned one
    (not sent, `_ride`); a read after it is sent and refused LIMIT, parked behind "abc". When
    "abc" is taken, the rider is ahead of the refusal, waiting. The abandoned read then ends
    (the end of stream, a reset): the rider gets that end, and the refusal then reaches its
    caller. It waited for ever: as 4c5cade's read ended with an error, but a rider's end is
    decoded as the abandoned read's answer, which served nothing parked."""
    codec: ClientCodec[str] = ClientCodec()
    first, _ = codec.request("tcp.recv", (1, 3, 1000), "first")
    gone, _ = codec.request("tcp.recv", (1, 3, None), "gone")
    codec.forget(gone)
    assert [r.token for r in _replies(codec.receive(response(first, b"abc")))] == ["first"]
    _, data = codec.request("tcp.recv", (1, 6, None), "rider")
    assert data == b""  # rides on the abandoned read with no timeout
    refused, data = codec.request("tcp.recv", (1, 6, None), "refused")
    assert data  # a read is on its way (the rider): this one is sent
    assert _replies(codec.receive(response(refused, None, LIMIT))) == []  # behind "abc"
    codec.forget(first)
    assert codec.take_ready() == []  # the rider is ahead of the refusal, waiting
    frame = response(gone, b"") if end == b"" else response(gone, None, end)
    got = _replies(codec.receive(frame)) + codec.take_ready()
    assert [(r.token, type(r.error).__name__) for r in got] == [
        ("rider", "NoneType" if end == b"" else "NdisStatusError"),
        ("refused", "LimitError"),
    ], got
    for reply in got:
        codec.forget(reply.msgid)
    assert codec.pending == 0 and not codec._parked and not codec._reads


def test_a_refusal_parked_behind_a_read_riding_reaches_its_caller_when_the_connection_closes() -> (
    None
):
    """As above, but the connection's tcp.close succeeds while the rider waits: the rider gets
    NOT_FOUND at once (nothing comes for it now, `_closed`), and the refusal parked behind
    it then reaches its caller. It waited for ever: the abandoned read's own answer (the
    connection closed) is dropped, as nothing of it is read any more."""
    codec: ClientCodec[str] = ClientCodec()
    first, _ = codec.request("tcp.recv", (1, 3, 1000), "first")
    gone, _ = codec.request("tcp.recv", (1, 3, None), "gone")
    codec.forget(gone)
    assert [r.token for r in _replies(codec.receive(response(first, b"abc")))] == ["first"]
    _, data = codec.request("tcp.recv", (1, 6, None), "rider")
    assert data == b""
    refused, _ = codec.request("tcp.recv", (1, 6, None), "refused")
    assert _replies(codec.receive(response(refused, None, LIMIT))) == []
    codec.forget(first)
    assert codec.take_ready() == []
    close, _ = codec.request("tcp.close", (1,), "close")
    got = _replies(codec.receive(response(close, True))) + codec.take_ready()
    got += _replies(codec.receive(response(gone, None, CLOSED))) + codec.take_ready()
    assert [(r.token, type(r.error).__name__) for r in got] == [
        ("close", "NoneType"),
        ("rider", "NotFound"),
        ("refused", "LimitError"),
    ], got
    for reply in got:
        codec.forget(reply.msgid)
    assert codec.pending == 0 and not codec._parked and not codec._reads


def _replies(events: list[Any]) -> list[Reply[str]]:
    return [e for e in events if isinstance(e, Reply)]
