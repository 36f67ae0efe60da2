"""Reads of a connection answered with errors while an earlier read's bytes have not reached
its caller wait behind them (parked, `ClientCodec._serve`); once they have, every one of them
is answered in turn. Only the first was: the next parked read waited for ever (its caller for
its whole timeout, for ever with none), though the daemon had answered it. An answer with no
bytes (an error) holds nothing back: there is nothing its caller could give back."""

from __future__ import annotations

from typing import Any

import pytest

from chimney_client.protocol import ClientCodec
from tests.clients.scripted import RECV_TIMEOUT, response

LIMIT = [6, "LIMIT: more than 256 requests in flight"]


@pytest.mark.parametrize("error", [RECV_TIMEOUT, LIMIT], ids=["timeout", "limit"])
def test_every_read_parked_behind_an_answer_is_answered_when_it_is_taken(
    error: list[Any],
) -> None:
    codec: ClientCodec[str] = ClientCodec()
    reads = [codec.request("tcp.recv", (1, 100, 1000), name)[0] for name in "abc"]
    chunk = response(reads[0], b"x")
    chunk += b"".join(response(msgid, None, error) for msgid in reads[1:])
    got = [e.token for e in codec.receive(chunk)]
    assert got == ["a"]  # b and c wait behind a's bytes, not yet taken by its caller
    answered = ["a"]
    codec.forget(reads[0])
    for _ in range(3):
        ready = codec.take_ready()
        for reply in ready:
            answered.append(reply.token)
            assert reply.error is not None
            codec.forget(reply.msgid)
    assert answered == ["a", "b", "c"], answered
    assert not codec._parked and not codec._pending and not codec._in_hand


@pytest.mark.parametrize("error", [RECV_TIMEOUT, LIMIT], ids=["timeout", "limit"])
def test_reads_answered_with_errors_behind_an_error_are_answered_at_once(
    error: list[Any],
) -> None:
    codec: ClientCodec[str] = ClientCodec()
    reads = [codec.request("tcp.recv", (1, 100, 1000), name)[0] for name in "abc"]
    chunk = b"".join(response(msgid, None, error) for msgid in reads)
    got = [e.token for e in codec.receive(chunk)]
    assert got == ["a", "b", "c"]
    assert not codec._parked and not codec._pending and not codec._in_hand
