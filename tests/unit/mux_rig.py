"""Scenario set-ups the MUX unit tests share (test_mux_relink, test_mux_placement_and_moves,
test_mux_update_order, test_mux_own_asks, test_mux_retrieve_once): one copy of each, so the
tests say only what differs."""

from __future__ import annotations

import pytest

from chimneyd.drivers.base import PlantedBug, RaiseNext
from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.drivers.target.target import OffloadTarget
from chimneyd.ndis.blocks import OffloadBlock, new_neighbor_block, new_path_block, walk
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.factories import teamed_target_stack
from chimneyd.testing.memwire import MemoryWire
from chimneyd.testing.records import OffloadTree, StateCompletion
from chimneyd.testing.stack import Stack


class OneTeamedConnection:
    """One connection offloaded through a MUX over two NICs (round robin): its stack, wire,
    tree and TCP block, the MUX, the NIC that carries it and the MUX's binding to it."""

    def __init__(self) -> None:
        self.st: Stack = teamed_target_stack(nics=2, policy="round-robin")
        self.wire: MemoryWire = self.st.wires.open()
        self.tree = tree = self.st.top.connection_tree([self.wire])
        self.st.top.initiate(tree.root)
        self.st.run()
        (self.tcp,) = tree.tcp
        self.mux: MuxIm = mux_of(self.st)
        (entry,) = self.mux.connections()
        self.lower = self.mux.lower_of(entry.lower)
        nic = self.st.ndis.layers[self.lower.name]
        assert isinstance(nic, OffloadTarget)
        self.nic = nic

    def retrieves(self) -> list[TcpUploadReason]:
        """The upload reasons the layer above was given for the connection, in order."""
        return [
            TcpUploadReason(e.info)
            for e in self.st.top.events
            if e.handle is self.tcp and e.event_type is TcpOffloadEventType.TcpIndicateRetrieve
        ]


def mux_fails_terminate_as_corrupt(st: Stack, mux: MuxIm, tree: OffloadTree, tcp: int) -> None:
    """The layer above terminates `tcp`; the MUX raises on it (a planted bug) and the engine
    fails it as one that found the state corrupt (`fail_unserved`, spec §3.7 steps 1-3)."""
    mux.arm_fault(RaiseNext(1, "MiniportTerminateOffload", 1))
    st.top.terminate(st.top.reference_tree(tree, [tcp], state="delegated"))
    with pytest.raises(PlantedBug):
        st.run()
    failed = st.scheduler.log[-1]
    assert (failed.layer, failed.handler) == (mux, "MiniportTerminateOffload")
    assert mux.fail_unserved(failed.handler, failed.args)
    st.run()


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


def assert_all_drained(st: Stack) -> None:
    """Everything terminated: the MUX holds nothing and defers nothing, no rule was broken,
    and every layer's tables are empty (spec §9 item 10)."""
    mux = mux_of(st)
    assert mux.vobj_table == {} and mux.deferred == []
    assert st.checker.violations == []
    assert st.drain_problems() == []


MAC1 = b"\x02\x00\x00\x00\x00\x01"
MAC2 = b"\x02\x00\x00\x00\x00\x02"


def three_nics_two_neighbors() -> tuple[Stack, OffloadTree, OffloadTree]:
    """Round robin over three NICs: `tree`, two connections under one path (nic0, nic1),
    and `other`, a connection under its own path and a second neighbor n2 (nic2)."""
    st = teamed_target_stack(nics=3, policy="round-robin")
    top = st.top
    tree = top.connection_tree([st.wires.open(), st.wires.open()])  # nic0, nic1
    top.initiate(tree.root)
    st.run()
    other = top.connection_tree([st.wires.open()])  # nic2: n2, with its own path
    top.initiate(other.root)
    st.run()
    return st, tree, other


def move_then_arp(st: Stack, tree: OffloadTree, other: OffloadTree) -> dict[str, set[bytes]]:
    """The layer above moves `tree`'s path under n2 with n2's cached values (MAC1), then
    updates n2's cached values again (an ARP change: MAC2, spec §3.4 (a)); both succeed.
    Per NIC, the addresses its connections' neighbors end with."""
    top = st.top
    move = top.neighbor_block(other.neighbor)
    move.cached = type(tree.root.cached)(DlDestinationAddress=MAC1)
    move.add_dependent(new_path_block(tree.paths[0]))
    top.update(move)
    arp = top.neighbor_block(other.neighbor)
    arp.cached = type(tree.root.cached)(DlDestinationAddress=MAC2)
    top.update(arp)
    st.run()
    assert [b.status for b in walk(move)] == [S.NDIS_STATUS_SUCCESS] * 2
    assert arp.status == S.NDIS_STATUS_SUCCESS
    return {
        nic.name: {c.path.neighbor.cached.DlDestinationAddress for c in nic.connections()}
        for nic in (nic_of(st, 0), nic_of(st, 1), nic_of(st, 2))
    }
