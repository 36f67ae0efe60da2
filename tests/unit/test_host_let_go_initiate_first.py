"""An initiate completion with a block of a handle the host has let go put first, before the
tree's root (spec §9 item 8): what the host keeps on the root of the tree it sent down
(`protocol_reserved`: for a next-hop change's lone new neighbor, the step that moves the path
once the neighbor is offloaded) is found along the root's siblings (`offload.take_reserved`),
so the next-hop change still goes on and is answered, and the stack drains. Taken from the
first block only, it was lost: the change never moved on."""

from __future__ import annotations

import pytest

from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_let_go_completions import (
    _drained,
    _move_path,
    _offloaded,
    _stray,
    _with_stray,
)


def test_a_next_hop_change_s_neighbor_initiate_with_a_stray_first_still_moves_the_path() -> None:
    rig = HostRig()
    host = rig.host
    conns = _offloaded(rig, 1)
    moved = Reply()
    _move_path(host, conns[0], moved)  # a new next hop: its neighbor is initiated alone first
    layer, fn, (binding, root) = rig.hold_below("ProtocolInitiateOffloadComplete")
    assert root.protocol_reserved is not None  # the step that moves the path, once it is in
    tree = _with_stray(root, _stray(host, "neighbor"), "before")
    with pytest.raises(ChimneyProtocolError, match="let go"):
        rig.release((layer, fn, (binding, tree)))
    rig.run()
    assert moved.done and moved.error is None, moved
    assert moved.value == {"status": "NDIS_STATUS_SUCCESS"}, moved
    _drained(rig, conns)
