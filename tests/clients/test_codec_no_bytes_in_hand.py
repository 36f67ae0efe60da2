"""A read answered with no bytes (an error, the end of stream) puts nothing in its caller's
hands that `late` could give back, so no later read of its connection waits behind it
(`ClientCodec._in_hand`). A waitall read that timed out short of the bytes kept for its
connection was the exception: the codec marked that read itself 'in hand' while it offered
the kept bytes to the next read, so the next read was answered only once the timed-out
read's caller had run again."""

from __future__ import annotations

from chimney_client.protocol import ClientCodec, Reply
from tests.clients.scripted import RECV_TIMEOUT, response


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
