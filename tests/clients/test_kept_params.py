"""What is kept is handed out only to calls the daemon would take: a `tcp.recv` or `tcp.accept`
with params the daemon refuses (INVALID_PARAMS, chimneyd/rpc/params.py; docs/rpc.md "Limits":
`max_bytes` 1 to 8 MiB, `timeout_ms` 0 to an hour) gets the daemon's INVALID_PARAMS, not the
kept bytes or connection, which stay for the next call that asks right."""

from __future__ import annotations

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
