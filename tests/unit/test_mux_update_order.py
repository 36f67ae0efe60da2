"""The MUX keeps updates, invalidates and next-hop changes in the order the host issued them
(an update waits for a copy of its object being offloaded, or for an earlier update sharing an
object), and every such wait ends: when its NIC fails as well as when the copy is offloaded.
A rebalance's plans stay while their NICs can still take the connections."""

from __future__ import annotations

from chimneyd.drivers.mux import mux as mux_module
from chimneyd.ndis.blocks import (
    NeighborOffloadStateCached,
    OffloadBlock,
    PathOffloadStateCached,
    new_neighbor_block,
    new_path_block,
    walk,
)
from chimneyd.ndis.errors import IllegalTransition
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import teamed_target_stack
from tests.unit.mux_rig import mux_of, nic_of

_mux = mux_of
_nic = nic_of


def test_an_update_waiting_for_a_copy_on_a_nic_that_then_fails_is_answered() -> None:
    """An update of a neighbor waits for its copy being offloaded on nic1 (`MuxIm._update`),
    but not for a failed NIC's copy, which that NIC holds until its RESUME (spec §5.5). nic1
    fails while the update waits: nothing tries the update again, so it waits for nic1's
    RESUME, which may never come, though it no longer waits for anything by its own rule."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    mux = _mux(st)
    nic1 = _nic(st, 1)
    tree = top.connection_tree([st.wires.open()])  # nic0
    top.initiate(tree.root)
    st.run()
    root = top.neighbor_block(tree.neighbor)
    block = root.add_dependent(top.path_block()).add_dependent(top.tcp_block(st.wires.open()))
    top.initiate(root)  # nic1: a copy of the neighbor offloading there
    mac2 = b"\x02\x00\x00\x00\x00\x02"
    arp = top.neighbor_block(tree.neighbor)
    arp.cached = type(tree.root.cached)(DlDestinationAddress=mac2)
    top.update(arp)
    nic1.fail_adapter()
    st.run()
    st.advance(2 * mux_module.CORRUPT_RETRY_MAX)  # not a matter of time
    print(
        "update",
        arp.status,
        "new connection",
        block.status,
        "deferred",
        [op for op, _ in mux.deferred],
        "paused initiates on nic1",
        len(nic1.paused_initiates),
    )
    assert arp.status != S.NDIS_STATUS_PENDING, (
        f"the update waits for nic1's RESUME: deferred {[op for op, _ in mux.deferred]}, "
        f"nic1 holds {len(nic1.paused_initiates)} initiate(s)"
    )
    assert [b.status for b in walk(arp)] == [S.NDIS_STATUS_SUCCESS]


def test_a_move_after_an_update_held_by_a_failed_nic_s_copy_is_answered() -> None:
    """A connection goes to nic0, an update of its
    neighbor waits for the neighbor's copy being offloaded there, and nic0 fails. The update
    is never tried again (the test above); a next-hop change of the path after it then waits
    behind it (`MuxIm._update`: an update before it sharing an object waits here), so the
    move too waits for nic0's RESUME, though nic1 and nic2 are in service."""
    st = teamed_target_stack(nics=3, policy="round-robin")
    top = st.top
    mux = _mux(st)
    nic0 = _nic(st, 0)
    n1 = top.neighbor_block()
    path = n1.add_dependent(top.path_block())
    top.initiate(n1)
    n2 = top.neighbor_block()
    top.initiate(n2)
    st.run()
    assert n1.offload_handle and n2.offload_handle and path.offload_handle
    root = new_neighbor_block(n1.offload_handle)
    root.add_dependent(new_path_block(path.offload_handle)).add_dependent(
        top.tcp_block(st.wires.open())
    )
    top.initiate(root)  # nic0: copies of n1 and the path offloading there
    arp = top.neighbor_block(n1.offload_handle)
    arp.cached = NeighborOffloadStateCached(DlDestinationAddress=b"\x02\x00\x00\x00\x00\x02")
    top.update(arp)
    nic0.fail_adapter()
    st.run()
    move = new_neighbor_block(n2.offload_handle)
    move.add_dependent(new_path_block(path.offload_handle))
    top.update(move)
    st.run()
    st.advance(2 * mux_module.CORRUPT_RETRY_MAX)  # not a matter of time
    statuses = [b.status for b in walk(move)]
    print("update", arp.status, "move", statuses, "deferred", [op for op, _ in mux.deferred])
    assert S.NDIS_STATUS_PENDING not in statuses, (
        f"the move waits for nic0's RESUME behind the update: {statuses}, "
        f"deferred {[op for op, _ in mux.deferred]}"
    )


def test_a_copy_a_failed_nic_offloads_after_an_update_does_not_take_new_connections() -> None:
    """An update does not wait for a failed NIC's copy being offloaded (`MuxIm._update`:
    the copy goes with the connection the failover asks up), so that copy misses it. The
    NIC comes back (RESUME, spec §5.5) and offloads the copy with the values from before the
    update; before the host has uploaded the connection asked up, a new connection must not
    be placed under that copy (it would keep the old MAC for its whole life)."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    nic1 = _nic(st, 1)
    tree = top.connection_tree([st.wires.open()])  # nic0
    top.initiate(tree.root)
    st.run()
    assert tree.neighbor is not None
    root = top.neighbor_block(tree.neighbor)
    late = root.add_dependent(top.path_block(tree.paths[0])).add_dependent(
        top.tcp_block(st.wires.open())
    )
    top.initiate(root)  # nic1: copies of the neighbor and path offloading there
    nic1.fail_adapter()
    st.run()
    mac2 = b"\x02\x00\x00\x00\x00\x02"
    arp = top.neighbor_block(tree.neighbor)
    arp.cached = NeighborOffloadStateCached(DlDestinationAddress=mac2)
    top.update(arp)
    st.run()
    assert arp.status == S.NDIS_STATUS_SUCCESS
    nic1.recover_adapter()  # the held initiate completes: the connection is asked up
    st.run()
    assert late.status == S.NDIS_STATUS_SUCCESS
    assert [e.handle for e in top.events] == [late.offload_handle]
    # new connections before the host uploads it: round robin puts one on nic1
    for _ in range(2):
        r = top.neighbor_block(tree.neighbor)
        r.add_dependent(top.path_block(tree.paths[0])).add_dependent(top.tcp_block(st.wires.open()))
        top.initiate(r)
        st.run()
    macs = {
        (
            nic.name,
            c.upper.owner.upper is late.offload_handle,
        ): c.path.neighbor.cached.DlDestinationAddress
        for nic in (_nic(st, 0), nic1)
        for c in nic.connections()
    }
    print(macs)
    stale = {k: v for k, v in macs.items() if v != mac2 and not k[1]}
    assert stale == {}, f"new connections under a copy with the MAC from before the update: {stale}"


def test_an_invalidate_does_not_overtake_an_update_deferred_before_it() -> None:
    """The host updates a path (its copy still being offloaded on nic1 for a new connection,
    so the update waits at the MUX, `MuxIm._update`), then the path's neighbor (which waits
    behind it: they share the neighbor), then invalidates the neighbor. The invalidate has
    nothing to wait for and goes down at once, overtaking both updates issued before it; the
    retry of an update then meets an INVALIDATED neighbor and raises IllegalTransition out of
    the initiate's completion (`retry_deferred`). On 6726b8f^ all three complete SUCCESS
    with no invariant violation."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    n = top.neighbor_block()
    p = n.add_dependent(top.path_block())
    p.add_dependent(top.tcp_block(st.wires.open()))
    top.initiate(n)  # nic0
    st.run()
    assert n.offload_handle is not None and p.offload_handle is not None

    def connect(path: NdisOffloadHandle | None) -> tuple[OffloadBlock, OffloadBlock]:
        assert n.offload_handle is not None
        root = top.neighbor_block(n.offload_handle)
        pb = root.add_dependent(top.path_block(path))
        tcp = pb.add_dependent(top.tcp_block(st.wires.open()))
        top.initiate(root)
        return pb, tcp

    p2, _ = connect(None)  # nic1, on a new path: nic1 has a copy of the neighbor now
    st.run()
    assert p2.offload_handle is not None
    connect(p2.offload_handle)  # nic0
    st.run()
    _, tcp = connect(p.offload_handle)  # nic1: a copy of the path being offloaded there
    path_update = new_path_block(p.offload_handle)
    path_update.cached = PathOffloadStateCached(PathMtu=1400)
    u1 = new_neighbor_block(None)
    u1.add_dependent(path_update)
    top.update(u1)
    u2 = top.neighbor_block(n.offload_handle)
    u2.cached = NeighborOffloadStateCached(DlDestinationAddress=b"\x02\x00\x00\x00\x00\x02")
    top.update(u2)
    inv = new_neighbor_block(n.offload_handle)
    top.invalidate(inv)
    try:
        st.run()
    except IllegalTransition as exc:
        raise AssertionError(
            f"an update retried after the invalidate that overtook it: {exc}"
        ) from exc
    assert [op for op, _ in _mux(st).deferred] == []
    assert [c.op for c in top.state_completions[-3:]] == ["Update", "Update", "Invalidate"]
    assert tcp.status == S.NDIS_STATUS_SUCCESS
    assert st.checker.violations == []


def test_a_rebalance_is_not_undone_by_another_nic_coming_back() -> None:
    """Active-standby, nic2 failed: four connections on nic0; a rebalance over nic0 and nic1
    plans two for nic1 and asks them up. nic2 comes back (RESUME) before the layer above
    offloads them again: `failover.forget_plans` drops the plans at any NIC's RESUME, so
    both go back to nic0 by the policy and the rebalance did nothing (nic0 4, nic1 0),
    though nic1 is in service and nothing about it changed. On 6726b8f^ they went to nic1."""
    st = teamed_target_stack(nics=3, policy="active-standby")
    mux = _mux(st)
    nic2 = _nic(st, 2)
    nic2.fail_adapter()
    st.run()
    wires = [st.wires.open() for _ in range(4)]
    tree = st.top.connection_tree(wires)
    st.top.initiate(tree.root)
    st.run()
    mux.rebalance()
    st.run()
    asked = list(dict.fromkeys(e.handle for e in st.top.events))
    assert len(asked) == 2
    st.top.terminate(st.top.reference_tree(tree, asked, state="delegated"))
    st.run()
    nic2.recover_adapter()
    st.run()
    again: list[NdisOffloadHandle] = []
    assert tree.neighbor is not None
    for handle in asked:
        root = st.top.neighbor_block(tree.neighbor)
        path = root.add_dependent(st.top.path_block(tree.paths[0]))
        block = path.add_dependent(st.top.tcp_block(tree.wires[handle.id]))
        assert block.offload_handle is not None
        again.append(block.offload_handle)
        st.top.initiate(root)
        st.run()
    nics = []
    for h in again:
        entry = h.miniport_offload_context
        assert entry is not None
        nics.append(entry.lower.lower.name)
    assert nics == ["nic1", "nic1"], f"the rebalanced connections went to {nics}"
