"""A second completion of a connection already gathered goes in its own call, for sends and for
receives alike (chimneyd/drivers/target/batch.py; spec §9 item 3: what one call may hold of a
connection).

`CompletionBatch.send` and `.receive` each test for the connection themselves (a10b15b inlined
the shared `_gather` into both), so each rule is checked on each method: a send after a send, a
receive after a receive, and a send after a receive, of one connection.
"""

from __future__ import annotations

import pytest

from chimneyd.ndis.nbl import NetBufferList
from tests.unit.test_completion_batch import _batch, _nbls


@pytest.mark.parametrize(
    ("first", "then"), [("send", "send"), ("receive", "receive"), ("receive", "send")]
)
def test_a_connection_gathered_again_flushes_what_was_gathered_first(first: str, then: str) -> None:
    batch, broker = _batch()
    a, b = object(), object()
    earlier, other, later = _nbls(1), _nbls(1), _nbls(1)

    def gather(kind: str, ctx: object, nbls: list[NetBufferList]) -> None:
        (batch.send if kind == "send" else batch.receive)(ctx, nbls)

    gather(first, a, earlier)
    gather("send", b, other)
    gather(then, a, later)  # a again: what was gathered goes first, in its own calls
    went = sorted(id_ for _, ids in broker.calls for id_ in ids)
    assert went == sorted([earlier[0].id, other[0].id]), broker.calls
    batch.flush()
    assert broker.calls[-1] == (then, [later[0].id]), broker.calls
