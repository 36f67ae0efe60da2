"""Scenario set-ups the MUX unit tests share (test_mux_relink, test_mux_placement_and_moves,
test_mux_update_order): one copy of each, so the tests say only what differs."""

from __future__ import annotations

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.drivers.target.target import OffloadTarget
from chimneyd.ndis.blocks import OffloadBlock, new_neighbor_block, new_path_block
from chimneyd.testing.factories import teamed_target_stack
from chimneyd.testing.records import OffloadTree, StateCompletion
from chimneyd.testing.stack import Stack


def mux_of(st: Stack) -> MuxIm:
    mux = st.under_test[0]
    assert isinstance(mux, MuxIm)
    return mux


def nic_of(st: Stack, i: int) -> OffloadTarget:
    nic = st.under_test[1 + i]
    assert isinstance(nic, OffloadTarget)
    return nic


def two_nics_and_a_spare_neighbor() -> tuple[Stack, OffloadTree, OffloadBlock]:
    """Round robin: two connections under one path, one on each NIC (each NIC with its copy
    of the path and neighbor), and a second neighbor offloaded to the MUX (no NIC has it)."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    tree = st.top.connection_tree([st.wires.open(), st.wires.open()])
    st.top.initiate(tree.root)
    st.run()
    n2 = st.top.neighbor_block()
    st.top.initiate(n2)
    st.run()
    return st, tree, n2


def move_first_path(st: Stack, tree: OffloadTree, n2: OffloadBlock) -> StateCompletion:
    """The next-hop change (spec §3.4 (b)): an update moving the tree's path under `n2`."""
    assert n2.offload_handle is not None
    root = new_neighbor_block(n2.offload_handle)
    root.add_dependent(new_path_block(tree.paths[0]))
    st.top.update(root)
    st.run()
    return st.top.state_completions[-1]
