"""What is kept is handed out only to calls the daemon would take: a `tcp.recv` or `tcp.accept`
with params the daemon refuses (INVALID_PARAMS, chimneyd/rpc/params.py; docs/rpc.md "Limits":
`max_bytes` 1 to 8 MiB, `timeout_ms` 0 to an hour) gets the daemon's INVALID_PARAMS, not the
kept bytes or connection, which stay for the next call that asks right."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from chimney_client.protocol import ClientCodec
from tests.clients.scripted import replies_in, response

MIB = 1024 * 1024
INVALID = [2, "INVALID_PARAMS: max_bytes must be a positive integer"]

BAD_READS: list[tuple[Any, ...]] = [
    (1, 16 * MIB),  # over the daemon's 8 MiB
    (1, 100, -1),  # timeout_ms below 0
    (1, 100, 3_600_001),  # over an hour
    (1, 100, "soon"),
    (1, 100, True),  # bool is no number of milliseconds (msgpack sends true)
    (1, 100, None, {"waitall": 1}),
    (1, 100, None, {"peek": True}),
    (1, 100, None, "waitall"),
    (1, 100, None, None, None),  # five params
    (1, True),
]
BAD_ACCEPTS: list[tuple[Any, ...]] = [
    (3, -5),
    (3, 3_600_001),
    (3, "x"),
    (3, None, None),
]


def _kept_read() -> ClientCodec[str]:
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "cancelled")
    codec.forget(gone)
    assert replies_in(codec, response(gone, b"kept")) == []
    return codec


@pytest.mark.parametrize("params", BAD_READS)
def test_a_read_the_daemon_refuses_gets_no_kept_bytes(params: tuple[Any, ...]) -> None:
    codec = _kept_read()
    assert codec.kept_answer("tcp.recv", params) is None
    msgid, data = codec.request("tcp.recv", params, "bad")
    assert data, "not sent: the daemon's INVALID_PARAMS would not come"
    (reply,) = replies_in(codec, response(msgid, None, INVALID))
    assert reply.token == "bad" and reply.error is not None
    codec.forget(msgid)
    assert codec.kept_answer("tcp.recv", (1, 100)) == b"kept"


@pytest.mark.parametrize("params", BAD_READS)
def test_a_read_the_daemon_refuses_does_not_ride(params: tuple[Any, ...]) -> None:
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.recv", (1, 100), "cancelled")
    codec.forget(gone)
    _, data = codec.request("tcp.recv", params, "bad")
    assert data


@pytest.mark.parametrize("params", BAD_ACCEPTS)
def test_an_accept_the_daemon_refuses_gets_no_kept_connection(params: tuple[Any, ...]) -> None:
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.accept", (3,), "cancelled")
    codec.forget(gone)
    _, data = codec.request("tcp.accept", params, "bad")
    assert data, "an accept the daemon refuses rode on the abandoned one"
    assert replies_in(codec, response(gone, 17)) == []
    assert codec.kept_answer("tcp.accept", params) is None
    assert codec.kept_answer("tcp.accept", (3,)) == 17


class _Id(enum.IntEnum):
    """Ids as a program may name them: msgpack sends an int subclass as a plain int."""

    CONN = 1
    LISTENER = 3


class _Ms(float):
    """A float subclass (numpy.float64 is one): msgpack sends it as a plain float."""


#: params the daemon takes (what msgpack sends of them is plain ints and floats)
GOOD_READS: list[tuple[Any, ...]] = [
    (_Id.CONN, 100),
    (1, _Id.LISTENER),  # max_bytes 3, an int
    (1, 100, _Ms(500.0)),
    (1, 100, None, {"waitall": False}),
]


@pytest.mark.parametrize("params", GOOD_READS)
def test_a_read_the_daemon_takes_gets_the_kept_bytes_whatever_int_or_float_type_it_has(
    params: tuple[Any, ...],
) -> None:
    """chimneyd checks the params it decodes (chimneyd/rpc/params.py `pos_int`, `timeout_s`:
    plain ints and floats); a subclass of int or float is sent as one. A read it takes must
    get what is kept ahead of the bytes it would get, or they come out of order."""
    codec = _kept_read()
    assert codec.kept_answer("tcp.recv", params) == b"kept"[: params[1]]


@pytest.mark.parametrize("params", [(_Id.LISTENER,), (3, _Ms(500.0))])
def test_an_accept_the_daemon_takes_gets_the_kept_connection_whatever_int_type_it_has(
    params: tuple[Any, ...],
) -> None:
    codec: ClientCodec[str] = ClientCodec()
    gone, _ = codec.request("tcp.accept", (3,), "cancelled")
    codec.forget(gone)
    assert replies_in(codec, response(gone, 17)) == []
    assert codec.kept_answer("tcp.accept", params) == 17


def test_a_close_of_a_connection_named_by_an_int_subclass_drops_what_is_kept() -> None:
    """tcp.close of `_Id.CONN` (sent as 1) answered true: what is kept for connection 1 is
    dropped (ids are never reused: kept for the client's life otherwise)."""
    codec = _kept_read()
    close, _ = codec.request("tcp.close", (_Id.CONN,), "close")
    assert [r.result for r in replies_in(codec, response(close, True))] == [True]
    codec.forget(close)
    assert codec.kept_answer("tcp.recv", (1, 100)) is None
    assert codec._kept == {}
