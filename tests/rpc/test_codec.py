"""The sans-IO msgpack-RPC codec: framing, shapes, limits; no sockets."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimneyd.rpc.codec import (
    Decoder,
    Encoder,
    Notification,
    ProtocolError,
    Request,
    bytes_response_head,
    parse_message,
    raw_bytes,
)

LIMIT = 4096


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def feed_all(chunks: list[bytes], limit: int = LIMIT) -> list[Any]:
    d = Decoder(limit)
    out: list[Any] = []
    for chunk in chunks:
        out += d.feed(chunk)
    return out


def test_request_with_str_and_bin_method_names() -> None:
    out = feed_all([pack([0, 1, "ping", []]) + pack([0, 2, b"tcp.info", [7]])])
    assert out == [Request(1, "ping", []), Request(2, "tcp.info", [7])]


def test_feed_raw_leaves_each_request_as_its_array() -> None:
    """The server's path: a request is the decoded array itself, its method a str even when
    sent as bin; anything else is the same object `feed` gives."""
    d = Decoder(LIMIT)
    frames = pack([0, 1, "ping", []]) + pack([0, 2, b"tcp.info", [7]]) + pack([2, "n", []])
    out = d.feed_raw(frames + b"\xc1")
    assert out[:3] == [[0, 1, "ping", []], [0, 2, "tcp.info", [7]], Notification("n", [])]
    assert [type(m) for m in out] == [list, list, Notification, ProtocolError]
    assert d.feed_raw(pack([0, 3, "ping", []])) == []  # dead, as with `feed`


def test_notification() -> None:
    assert feed_all([pack([2, b"hello", [1, "x"]])]) == [Notification("hello", [1, "x"])]


STREAM = (
    pack([0, 1, "ping", []])
    + pack([2, "note", [None]])
    + pack([0, 4294967295, "tcp.send", [3, b"\x00\xff" * 40, "text"]])
)
EXPECTED = [
    Request(1, "ping", []),
    Notification("note", [None]),
    Request(4294967295, "tcp.send", [3, b"\x00\xff" * 40, "text"]),
]


@pytest.mark.parametrize("cut", range(len(STREAM) + 1))
def test_pipelined_frames_split_at_every_boundary(cut: int) -> None:
    assert feed_all([STREAM[:cut], STREAM[cut:]]) == EXPECTED


def test_pipelined_frames_byte_by_byte() -> None:
    assert feed_all([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_str_payload_keeps_its_raw_bytes() -> None:
    """A raw-mode client's str that is not UTF-8 comes back as the very bytes it sent."""
    payload = b"\xff\xfe\x80abc\xed\xa0\x80"  # invalid UTF-8, and an encoded surrogate
    frame = b"\x94\x00\x09\xa8tcp.send\x92\x01" + bytes([0xA0 | len(payload)]) + payload
    [req] = feed_all([frame])
    assert isinstance(req, Request)
    data = req.params[1]
    assert isinstance(data, str)
    assert raw_bytes(data) == payload
    assert raw_bytes(b"\x00bin") == b"\x00bin"


def test_not_msgpack() -> None:
    [err] = feed_all([b"\xc1"])
    assert isinstance(err, ProtocolError) and err.msgid is None
    assert "not msgpack" in err.reason


def test_messages_before_a_bad_frame_are_kept_and_the_decoder_stays_dead() -> None:
    d = Decoder(LIMIT)
    out = d.feed(pack([0, 1, "ping", []]) + b"\xc1" + pack([0, 2, "ping", []]))
    assert out[0] == Request(1, "ping", [])
    assert isinstance(out[1], ProtocolError) and len(out) == 2
    assert d.feed(pack([0, 3, "ping", []])) == []


@pytest.mark.parametrize(
    "obj",
    [
        {"a": 1},
        [],
        None,
        42,
        "ping",
        b"\x00",
        [0, 1],
        [0, 1, "ping"],
        [0, 1, "ping", [], 5],
        [1, 1, None, "pong"],  # a response is not something a client sends the server
        [2, "x"],
        [3, 1, "ping", []],
        ["0", 1, "ping", []],
        [False, 1, "ping", []],
        [True, "x", []],
        [0.0, 1, "ping", []],
        [2.0, "x", []],
    ],
    ids=repr,
)
def test_wrong_shape(obj: Any) -> None:
    [err] = feed_all([pack(obj)])
    assert isinstance(err, ProtocolError), err
    assert err.msgid is None


@pytest.mark.parametrize("msgid", ["1", None, -1, 1 << 32, 1.5, True, b"\x01", [1]], ids=repr)
def test_wrong_msgid_type(msgid: Any) -> None:
    [err] = feed_all([pack([0, msgid, "ping", []])])
    assert isinstance(err, ProtocolError) and err.msgid is None
    assert "msgid" in err.reason


@pytest.mark.parametrize("method", [None, 42, [b"ping"], {"m": 1}, 1.5], ids=repr)
def test_method_not_str_or_bin_is_answered_then_closed(method: Any) -> None:
    [err] = feed_all([pack([0, 77, method, []])])
    assert err == ProtocolError("method must be str or bin", 77)


@pytest.mark.parametrize("params", [None, {}, "x", 3, b"ab"], ids=repr)
def test_params_not_array(params: Any) -> None:
    [err] = feed_all([pack([0, 78, "ping", params])])
    assert err == ProtocolError("params must be an array", 78)
    [err] = feed_all([pack([2, "note", params])])
    assert isinstance(err, ProtocolError) and err.msgid is None


def test_long_method_name_is_a_request_not_a_protocol_error() -> None:
    [req] = feed_all([pack([0, 5, "m" * 3000, []])])
    assert req == Request(5, "m" * 3000, [])


def test_frame_at_the_limit_then_another_frame() -> None:
    """No false alarm: a frame of exactly the limit followed by more frames is fine, however the
    bytes are cut."""
    head = pack([0, 1, "tcp.send", [1, b""]])
    size = LIMIT - len(head) - 1  # a bin16 header is 1 byte longer than an empty bin8
    frame = pack([0, 1, "tcp.send", [1, b"x" * size]])
    assert len(frame) == LIMIT
    stream = frame + pack([0, 2, "ping", []]) + frame
    for cut in (1, LIMIT - 1, LIMIT, LIMIT + 3, len(stream) - 5):
        out = feed_all([stream[:cut], stream[cut:]])
        assert [type(m) for m in out] == [Request, Request, Request], (cut, out[-1])


def test_frame_over_the_limit_by_declared_length() -> None:
    """A bin declaring more than the limit is refused once the frame passes the limit, without
    waiting for (or holding) the rest of it."""
    frame = pack([0, 1, "tcp.send", [1, b"x" * (10 * LIMIT)]])
    d = Decoder(LIMIT)
    fed = 0
    out: list[Any] = []
    while not out:
        out = d.feed(frame[fed : fed + 100])
        fed += 100
    [err] = out
    assert isinstance(err, ProtocolError) and err.limit
    assert fed <= LIMIT + 100


def test_array_header_over_the_limit() -> None:
    """An array header declaring more items than the limit fails at the header."""
    [err] = Decoder(LIMIT).feed(b"\x94\x00\x01\xa4ping\xdd\x00\x01\x00\x00")
    assert isinstance(err, ProtocolError)


def test_frame_over_the_limit_streamed_in_small_pieces() -> None:
    """An array of many small items never fills the Unpacker's buffer; the frame size is
    counted anyway and the frame refused once it passes the limit."""
    d = Decoder(LIMIT)
    assert d.feed(b"\x94\x00\x01\xa4ping\xdc\x0f\xa0") == []  # params: array of 4000 items
    fed = 11
    out: list[Any] = []
    while not out:
        out = d.feed(b"\xa1x" * 64)  # 64 one-char strings at a time
        fed += 128
        assert fed < 4 * LIMIT, "the endless frame was never refused"
    [err] = out
    assert isinstance(err, ProtocolError) and err.limit
    assert fed <= 2 * LIMIT  # refused within one slice of passing the limit


@pytest.mark.parametrize("piece", [1, 7, 100, LIMIT])
def test_a_request_over_the_limit_keeps_its_msgid(piece: int) -> None:
    """So the client can be told LIMIT for that request before the close, however the frame's
    first bytes were cut."""
    frame = pack([0, 4242, "tcp.send", [1, b"x" * (2 * LIMIT)]])
    d = Decoder(LIMIT)
    out: list[Any] = d.feed(pack([0, 1, "ping", []]) + frame[:3])  # a frame, then a head
    for start in range(3, len(frame), piece):
        out += d.feed(frame[start : start + piece])
        if len(out) > 1:
            break
    assert out[0] == Request(1, "ping", [])
    assert out[1] == ProtocolError(f"a message is larger than {LIMIT} bytes", 4242, True)


@pytest.mark.parametrize(
    "frame",
    [
        [2, "tcp.event", [b"x" * (2 * LIMIT)]],  # a notification: no msgid
        [0, "7", "ping", [b"x" * (2 * LIMIT)]],  # a msgid that is not one
        [0, 1 << 40, "ping", [b"x" * (2 * LIMIT)]],
        [b"x" * (2 * LIMIT)],
    ],
    ids=["notification", "str-msgid", "msgid-too-big", "no-msgid"],
)
def test_a_frame_over_the_limit_with_no_msgid(frame: list[Any]) -> None:
    [err] = Decoder(LIMIT).feed(pack(frame))
    assert err == ProtocolError(f"a message is larger than {LIMIT} bytes", None, True)


def test_partial_counts_the_frame_under_way() -> None:
    d = Decoder(LIMIT)
    frame = pack([0, 1, "tcp.send", [1, b"x" * 1000]])
    assert d.partial == 0
    assert d.feed(frame[:600]) == []
    assert d.partial == 600
    assert d.feed(frame[600:] + frame[:10]) == [Request(1, "tcp.send", [1, b"x" * 1000])]
    assert d.partial == 10
    [err] = d.feed(pack([b"x" * (2 * LIMIT)]))  # too big: the decoder is dead, holds nothing
    assert isinstance(err, ProtocolError)
    assert d.partial == 0


def test_big_feed_is_sliced_and_limit_applies() -> None:
    big = pack([0, 1, "tcp.send", [1, b"y" * (3 * LIMIT)]])
    out = Decoder(LIMIT).feed(big)
    assert len(out) == 1 and isinstance(out[0], ProtocolError)


@pytest.mark.parametrize(
    "data",
    [
        b"\x91" * 5000,  # nesting deeper than the unpacker allows
        b"\x81\x90\x01",  # a map with an array key (unhashable in Python)
        b"\xd6\xff\x01",  # a timestamp ext with a truncated body
        b"\xd4\xff\x01",  # timestamp ext of a size msgpack does not define
    ],
    ids=["deep", "unhashable-key", "short-ext", "bad-timestamp"],
)
def test_odd_msgpack_is_a_protocol_error_or_waits(data: bytes) -> None:
    out = Decoder(1 << 20).feed(data)
    assert all(isinstance(m, ProtocolError) for m in out)


def test_parse_message_direct() -> None:
    assert parse_message([0, 0, "ping", []]) == Request(0, "ping", [])
    assert isinstance(parse_message((0, 1, "ping", [])), ProtocolError)  # tuples never decode


def test_encoder_shapes() -> None:
    e = Encoder()
    assert msgpack.unpackb(e.response(3, None, "pong")) == [1, 3, None, "pong"]
    assert msgpack.unpackb(e.response(4, [3, "NOT_FOUND: no connection 9"], None)) == [
        1,
        4,
        [3, "NOT_FOUND: no connection 9"],
        None,
    ]
    note = msgpack.unpackb(e.notification("tcp.event", [1, "closed", {}]), raw=True)
    assert note == [2, b"tcp.event", [1, b"closed", {}]]  # str on the wire, not bin
    assert msgpack.unpackb(e.response(5, None, b"\x00"), raw=True)[3] == b"\x00"


def test_a_four_element_array_is_a_request_exactly_when_every_field_is_right() -> None:
    """The request shape is checked in one go first; whatever that lets through or not, the
    answer must be what the contract's rules say, field by field: every combination of a
    right and a wrong value of each field."""
    kinds = [0, 1, 2, False, True, 0.0]
    msgids = [0, 7, 2**32 - 1, 2**32, -1, True, False, 1.0, None, "1"]
    methods = ["ping", b"ping", "", 3, None, ["ping"]]
    params_ = [[], [1, "x"], None, {}, "x", b"", 0]
    for kind, msgid, method, params in itertools.product(kinds, msgids, methods, params_):
        got = parse_message([kind, msgid, method, params])
        right = (
            type(kind) is int
            and kind == 0
            and type(msgid) is int
            and 0 <= msgid < 2**32
            and isinstance(method, (str, bytes))
            and isinstance(params, list)
        )
        if right:
            name = method.decode() if isinstance(method, bytes) else method
            assert got == Request(msgid, name, params), (kind, msgid, method, params)
        else:
            assert not isinstance(got, Request), (kind, msgid, method, params)


# every width of msgid and bin length, at both edges of each, and anything between
_EDGES = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF]


@given(
    msgid=st.sampled_from(_EDGES) | st.integers(0, 0xFFFFFFFF),
    length=st.sampled_from([0, 1, 0xFF, 0x100, 2048, 0xFFFF, 0x10000, 0x10001])
    | st.integers(0, 0x10100),
)
def test_bytes_response_head_then_payload_is_the_packed_response(msgid: int, length: int) -> None:
    data = bytes(range(256)) * (length // 256) + bytes(length % 256)
    assert bytes_response_head(msgid, length) + data == pack([1, msgid, None, data])


def _frame_of(size: int, msgid: int = 77) -> bytes:
    """A ping of exactly `size` bytes whose params are two bins, each under the limit (so no
    declared length alone gives it away)."""
    half = size // 2
    rest = size - half
    for _ in range(3):  # the bins' headers grow with their lengths: settles within a few steps
        frame = pack([0, msgid, "ping", [b"a" * half, b"b" * rest]])
        rest += size - len(frame)
    assert len(frame) == size, (len(frame), size)
    return frame


@pytest.mark.parametrize("over", [1, 17, LIMIT // 2])
@pytest.mark.parametrize(
    "cut",
    ["whole", "before-the-last-byte", "in-the-middle", "first-slice-then-rest"],
)
def test_a_frame_just_over_the_limit_completed_in_one_read_is_refused(over: int, cut: str) -> None:
    """Whatever the reads that bring it, a frame larger than the limit is a LIMIT error (with its
    msgid), never a request: also when its last read completes it, so it was never held
    unfinished at more than the limit (rpc-contract: a frame larger than the configured limit
    closes the client's connection)."""
    frame = _frame_of(LIMIT + over)
    splits = {
        "whole": [frame],
        "before-the-last-byte": [frame[:-1], frame[-1:]],
        "in-the-middle": [frame[: LIMIT // 2], frame[LIMIT // 2 :]],
        "first-slice-then-rest": [frame[:LIMIT], frame[LIMIT:]],
    }[cut]
    d = Decoder(LIMIT)
    out: list[Any] = d.feed(pack([0, 1, "ping", []]))  # a good request first: it stays served
    for chunk in splits:
        out += d.feed(chunk)
    assert out == [
        Request(1, "ping", []),
        ProtocolError(f"a message is larger than {LIMIT} bytes", 77, True),
    ]
    assert d.partial == 0 and d.feed(pack([0, 2, "ping", []])) == []  # dead: nothing more


def test_a_frame_of_exactly_the_limit_in_pieces_after_a_partial_one() -> None:
    """The measure of a frame completed in a read counts only its own bytes: one of exactly the
    limit that began in an earlier read, after other frames, is served."""
    frame = _frame_of(LIMIT)
    small = pack([0, 1, "ping", []])
    for cut in (1, len(small) + 1, LIMIT // 2, LIMIT):
        stream = small + frame + small + frame
        d = Decoder(LIMIT)
        out = (
            d.feed(stream[:cut]) + d.feed(stream[cut : cut + LIMIT]) + d.feed(stream[cut + LIMIT :])
        )
        assert [type(m) for m in out] == [Request] * 4, (cut, out)
