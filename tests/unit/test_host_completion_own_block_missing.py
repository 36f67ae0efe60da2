"""A query, update or invalidate completion from below whose tree no longer holds the block of
the object the request was for (a layer below put a block of a handle the host let go in its
place, spec §9 item 8) breaks the contract, and the host cannot tell how the operation went.
It settles it as failed (the host terminates what failed, spec §3.3, §3.4, §3.5), so the request
is answered and what waited behind it goes on, and then raises; the stack drains. Before, the
host raised StopIteration looking for the block, with the request taken off the tree and never
answered (the engine fails the requests of the connections the completion names, and the
request's own connection is not named in it): the request, and the connection's close behind
it, waited for ever."""

from __future__ import annotations

import pytest

from chimneyd.drivers.host.errors import SettledThenRaised
from chimneyd.ndis.blocks import walk
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_let_go_completions import STATE_OPS, _drained, _offloaded


@pytest.mark.parametrize("op", sorted(STATE_OPS))
def test_a_state_operation_completion_missing_its_own_block_is_settled_as_failed(op: str) -> None:
    ask, call = STATE_OPS[op]
    rig = HostRig()
    host = rig.host
    conns = _offloaded(rig, 2)
    first, behind = Reply(), Reply()
    ask(host, conns[0], first)
    ask(host, conns[0], behind)
    layer, fn, (binding, root) = rig.hold_below(call)
    # every block naming a live handle of the host's now names one it let go instead
    for block in walk(root):
        handle = block.offload_handle
        if handle is not None and handle.owner is not None:
            block.offload_handle = NdisOffloadHandle(host.name, None)
    with pytest.raises(SettledThenRaised, match="without the block of") as raised:
        rig.release((layer, fn, (binding, root)))
    assert raised.value.conns == frozenset()  # answered: the engine fails no request for it
    assert first.done and first.error is not None, first  # failed: nobody said it went
    # a next-hop change too: the layers below did move the path, and the host, told nothing,
    # unwinds the move as failed, keeping the new neighbor until the path is gone
    # (`test_host_completion_lost_below`)
    rig.run()
    assert behind.done, behind
    _drained(rig, conns)
