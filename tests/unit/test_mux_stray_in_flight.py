"""An initiate in flight naming a path copy that becomes stray meanwhile (a next-hop change
fails, and the NIC cannot move its copy back: `relink._undone`). The layer above may update
the path while a connection under it is being offloaded: only the connection is (spec §3.1,
§3.2.7), and the move waits only for copies being offloaded or terminated.

The connection is not in the MUX's table until its initiate completes above, so neither the
failed move nor a rebalance saw it: the move asked up only the connections in the table, and
this one, once offloaded, hung under the stray copy, under a neighbor the layer above does
not have its path under, asked up by nothing (docs/architecture.md, "A next-hop change moves
every copy, or none"). And a rebalance (`failover._lingering`) took the stray copy for one
that goes with the connections asked up, and planned one of them back onto its NIC: the copy
the in-flight connection keeps is still there at the re-offload, and the plan is dropped.

Now the in-flight connection is asked up once its initiate completes (`MuxIm.owed`,
`failover.offloaded_late`), and keeps the copy lasting for a rebalance until then."""

from __future__ import annotations

from typing import Any

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.blocks import OffloadBlock, new_neighbor_block
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, teamed_target_stack
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack
from tests.unit.mux_rig import assert_all_drained, move_first_path, mux_of, nic_of
from tests.unit.test_mux_rebalance_plans import (
    _asked,
    _drain,
    _entry,
    _offload_again,
    _terminate,
)


def _in_flight_then_stray() -> tuple[Stack, MuxIm, OffloadTree, list[OffloadBlock], Any, Any]:
    """Round robin over two NICs: c0 (nic0), c1 (nic1) under one path, and a second neighbor
    n2. A second initiate offloads c2 (nic0) and c3 (nic1) under the path; nic1's completion
    is held, so the initiate is still in flight at the MUX (it completes above only once
    every NIC has). The path's move under n2 fails on nic1, and nic0 cannot move its copy
    back: that copy is stray, and c0 is asked up. Returns the held completion and n2 too."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    tree = st.top.connection_tree([st.wires.open() for _ in range(2)])
    st.top.initiate(tree.root)
    st.run()
    n2 = st.top.neighbor_block()
    st.top.initiate(n2)
    st.run()
    assert tree.neighbor is not None
    root = st.top.neighbor_block(tree.neighbor)
    path = root.add_dependent(st.top.path_block(tree.paths[0]))
    blocks = []
    for _ in range(2):
        wire = st.wires.open()
        block = path.add_dependent(st.top.tcp_block(wire))
        assert block.offload_handle is not None
        tree.wires[block.offload_handle.id] = wire
        blocks.append(block)
    st.top.initiate(root)
    queue = st.scheduler.queue
    while not (
        getattr(queue[0][1], "__name__", "") == "ProtocolInitiateOffloadComplete"
        and queue[0][2][0].lower.name == "nic1"
    ):
        st.scheduler.run_one()
    held = queue.popleft()
    st.run()
    mux = mux_of(st)
    assert blocks[0].status == S.NDIS_STATUS_PENDING and mux.call_entries, "not in flight"
    fail_next(nic_of(st, 0), "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE, skip=1)  # undo
    fail_next(nic_of(st, 1), "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    assert move_first_path(st, tree, n2).statuses == [S.NDIS_STATUS_FAILURE] * 2
    assert _asked(st) == [tree.tcp[0]]
    return st, mux, tree, blocks, held, n2.offload_handle


def _gone(st: Stack, tree: OffloadTree, n2: Any) -> None:
    """n2, then everything the layer above still has, terminated: nothing left anywhere."""
    st.top.terminate(new_neighbor_block(n2))
    st.run()
    _drain(st, tree, list(tree.tcp))
    assert_all_drained(st)


def _handle(block: OffloadBlock) -> NdisOffloadHandle:
    assert block.offload_handle is not None
    return block.offload_handle


def test_a_connection_offloaded_under_a_copy_gone_stray_in_flight_is_asked_up() -> None:
    st, mux, tree, blocks, held, n2 = _in_flight_then_stray()
    st.scheduler.queue.append(held)
    st.run()
    c2, c3 = (_handle(b) for b in blocks)
    assert [b.status for b in blocks] == [S.NDIS_STATUS_SUCCESS] * 2
    assert _entry(c2).lower.lower.name == "nic0" and _entry(c3).lower.lower.name == "nic1"
    assert _asked(st) == [tree.tcp[0], c2], "c2 left under the stray copy, asked up by nothing"
    tree.tcp += [c2, c3]
    _terminate(st, tree, [tree.tcp[0], c2])
    assert not mux.paused_above
    _gone(st, tree, n2)


def test_a_rebalance_plans_nothing_onto_a_stray_copy_an_initiate_in_flight_keeps() -> None:
    """c0, asked up, is planned onto nic1, not back onto nic0: c2's initiate in flight keeps
    nic0's stray copy, which will still be there when c0 is offloaded again."""
    st, mux, tree, blocks, held, n2 = _in_flight_then_stray()
    c0 = tree.tcp[0]
    mux.rebalance()
    st.run()
    plans = {key: lo.name for key, lo in mux.placement.moves.items()}
    assert plans == {_entry(c0).key: "nic1"}, f"planned onto the copy c2 keeps: {plans}"
    st.scheduler.queue.append(held)
    st.run()
    c2, c3 = (_handle(b) for b in blocks)
    tree.tcp += [c2, c3]
    _terminate(st, tree, [c0, c2])
    assert not mux.paused_above
    _offload_again(st, tree, c0)
    assert _entry(tree.tcp[-1]).lower.lower.name == "nic1", "the plan was not used"
    _gone(st, tree, n2)
