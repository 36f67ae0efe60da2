"""The sans-IO codec and the error table, with no sockets."""

from __future__ import annotations

import msgpack
import pytest

from chimney_client.errors import (
    AddressError,
    LimitError,
    NdisStatusError,
    NotFound,
    ProtocolError,
    RpcError,
    error_from_wire,
)
from chimney_client.protocol import ClientCodec, Notification, Reply, parse_address


def _resp(msgid: int, error: object, result: object) -> bytes:
    return msgpack.packb([1, msgid, error, result], use_bin_type=True)


def test_request_encoding_uses_bin_for_bytes() -> None:
    codec: ClientCodec[str] = ClientCodec()
    msgid, data = codec.request("tcp.send", (3, b"\x00\xff"), "t")
    assert msgpack.unpackb(data, raw=True) == [0, msgid, b"tcp.send", [3, b"\x00\xff"]]
    # bin, not str: the raw type survives a raw=False unpack
    assert msgpack.unpackb(data, raw=False)[3][1] == b"\x00\xff"
    assert codec.pending == 1


def test_out_of_order_replies_match_their_tokens() -> None:
    codec: ClientCodec[str] = ClientCodec()
    ids = [codec.request("ping", (), f"call{i}")[0] for i in range(3)]
    events = codec.receive(_resp(ids[2], None, "c") + _resp(ids[0], None, "a"))
    assert [(e.token, e.result) for e in events if isinstance(e, Reply)] == [
        ("call2", "c"),
        ("call0", "a"),
    ]
    assert codec.pending == 1


def test_framing_survives_one_byte_at_a_time() -> None:
    codec: ClientCodec[str] = ClientCodec()
    msgid, _ = codec.request("tcp.recv", (1, 10), "r")
    stream = msgpack.packb([2, "tcp.event", [1, "closed", {}]]) + _resp(msgid, None, b"data")
    events = []
    for i in range(len(stream)):
        events += codec.receive(stream[i : i + 1])
    assert events == [
        Notification("tcp.event", [1, "closed", {}]),
        Reply(msgid, "r", None, b"data"),
    ]


def test_forgotten_call_drops_late_response() -> None:
    codec: ClientCodec[str] = ClientCodec()
    msgid, _ = codec.request("ping", (), "x")
    assert codec.forget(msgid) == "x"
    assert codec.receive(_resp(msgid, None, "pong")) == []
    assert codec.dropped_responses == 1


def test_error_reply_becomes_typed_error() -> None:
    codec: ClientCodec[str] = ClientCodec()
    msgid, _ = codec.request("tcp.info", (17,), "x")
    [event] = codec.receive(_resp(msgid, [3, "NOT_FOUND: no connection 17"], None))
    assert isinstance(event, Reply)
    assert isinstance(event.error, NotFound)
    assert str(event.error) == "NOT_FOUND: no connection 17"
    assert event.error.detail == "no connection 17"


def test_method_name_in_notification_may_be_bin() -> None:
    codec: ClientCodec[str] = ClientCodec()
    [event] = codec.receive(msgpack.packb([2, b"tcp.event", [1, "x", {}]], use_bin_type=True))
    assert event == Notification("tcp.event", [1, "x", {}])


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never-used msgpack byte
        msgpack.packb({"not": "an array"}),
        msgpack.packb([7, 1, 2]),
        msgpack.packb([1, "id", None, None]),
    ],
)
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    codec: ClientCodec[str] = ClientCodec()
    with pytest.raises(ProtocolError):
        codec.receive(data)


def test_oversized_frame_is_a_protocol_error() -> None:
    codec: ClientCodec[str] = ClientCodec(max_frame=1024)
    with pytest.raises(ProtocolError):
        codec.receive(msgpack.packb([2, "x", [b"y" * 4096]], use_bin_type=True))


def test_msgids_wrap_and_skip_pending() -> None:
    codec: ClientCodec[int] = ClientCodec()
    codec._next_id = (1 << 32) - 1
    a, _ = codec.request("ping", (), 1)
    b, _ = codec.request("ping", (), 2)
    assert (a, b) == ((1 << 32) - 1, 0)
    codec._next_id = 0
    c, _ = codec.request("ping", (), 3)
    assert c == 1  # 0 is still pending


def test_error_table() -> None:
    e = error_from_wire(
        [5, "NDIS_STATUS: NDIS_STATUS_REQUEST_ABORTED (0xC023000C) acknowledged 1024 bytes"]
    )
    assert isinstance(e, NdisStatusError)
    assert (e.status, e.status_value, e.acknowledged) == (
        "NDIS_STATUS_REQUEST_ABORTED",
        0xC023000C,
        1024,
    )
    assert isinstance(error_from_wire([6, "LIMIT: too many"]), LimitError)
    unknown = error_from_wire([99, "NEW_THING: later versions"])
    assert type(unknown) is RpcError and unknown.wire_code == 99
    assert "weird" in str(error_from_wire("weird"))


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:7411") == ("127.0.0.1", 7411)
    assert parse_address("localhost") == ("localhost", 7411)
    assert parse_address("[::1]:9") == ("::1", 9)
    assert parse_address("unix:/tmp/x.sock") == "/tmp/x.sock"
    # an IPv6 address alone (no group of it can be a port) takes the default port
    assert parse_address("::1") == ("::1", 7411)
    assert parse_address("fe80::1") == ("fe80::1", 7411)
    with pytest.raises(ValueError):
        parse_address("host:notaport")


@pytest.mark.parametrize(
    "address, why",
    [
        ("127.0.0.1:abc", "port 'abc' is not a number"),
        ("127.0.0.1:99999", "port 99999 is out of range (0-65535)"),
        ("unix:", "unix: needs a path"),
        ("[::1", "no ']' closes the IPv6 address"),
        ("[::1]7416", "after ']' comes :PORT, not '7416'"),
        ("::1:7416", "IPv6 needs brackets: [::1]:7416 (or [::1:7416]:7411 for the address"),
    ],
)
def test_a_bad_address_names_itself_and_the_forms_accepted(address: str, why: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_address(address)
    assert isinstance(caught.value, ValueError)  # what callers of parse_address catch
    message = str(caught.value)
    assert message.startswith(f"bad address {address!r}: {why}")
    assert message.endswith("; expected HOST:PORT, [IPV6]:PORT, HOST (port 7411) or unix:PATH")
