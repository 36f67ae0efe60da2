"""Many reads of one connection answered with errors while an earlier read's answer has not
reached its caller (parked, `ClientCodec._serve`): an asyncio client whose tasks sent a few
thousand reads at once, most refused LIMIT (256 requests in flight, docs/rpc.md). When that
answer is taken, every parked read is answered in turn, however many there are, and none is
left waiting (the codec is not bounded by Python's recursion limit)."""

from __future__ import annotations

import sys

from chimney_client.protocol import ClientCodec
from tests.clients.scripted import response

LIMIT = [6, "LIMIT: more than 256 requests in flight"]


def test_thousands_of_reads_parked_behind_an_answer_are_all_answered() -> None:
    n = sys.getrecursionlimit() * 2
    codec: ClientCodec[int] = ClientCodec()
    reads = [codec.request("tcp.recv", (1, 100, 1000), i)[0] for i in range(n)]
    chunk = response(reads[0], b"x") + b"".join(response(msgid, None, LIMIT) for msgid in reads[1:])
    got = [e.token for e in codec.receive(chunk)]
    assert got == [0]  # the others wait behind its bytes, not yet taken by its caller
    codec.forget(reads[0])
    answered = [0]
    while ready := codec.take_ready():
        for reply in ready:
            assert reply.error is not None, reply
            answered.append(reply.token)
            codec.forget(reply.msgid)
    assert answered == list(range(n))
    assert not codec._parked and not codec._pending and not codec._in_hand
