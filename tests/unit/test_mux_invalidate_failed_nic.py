"""An invalidate at the MUX waits for a copy of its object being offloaded on a NIC (that
copy takes no state operation yet, spec §3.1), but not for a failed NIC's copy: that NIC
holds its offload until its RESUME (spec §5.5), which may never come. The copy it offloads
then missed the invalidate, so the MUX invalidates it itself: its NIC asks its connection up
(`InvalidState`, spec §3.5), and no new connection goes under it."""

from __future__ import annotations

from chimneyd.drivers.mux import mux as mux_module
from chimneyd.ndis.blocks import new_neighbor_block, walk
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.factories import teamed_target_stack
from tests.unit.mux_rig import mux_of, nic_of


def test_an_invalidate_waiting_for_a_copy_on_a_nic_that_then_fails_is_answered() -> None:
    """A connection on nic0; a second one placed on nic1, where the neighbor's copy is being
    offloaded; the host invalidates the neighbor (it waits at the MUX for that copy), and
    nic1 fails. The invalidate must be answered without nic1's RESUME."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    mux = mux_of(st)
    nic1 = nic_of(st, 1)
    tree = top.connection_tree([st.wires.open()])  # nic0
    top.initiate(tree.root)
    st.run()
    assert tree.neighbor is not None
    root = top.neighbor_block(tree.neighbor)
    root.add_dependent(top.path_block()).add_dependent(top.tcp_block(st.wires.open()))
    top.initiate(root)  # nic1: a copy of the neighbor offloading there
    inv = new_neighbor_block(tree.neighbor)
    top.invalidate(inv)
    nic1.fail_adapter()
    st.run()
    st.advance(2 * mux_module.CORRUPT_RETRY_MAX)  # not a matter of time
    deferred = [op for op, _ in mux.deferred]
    print("invalidate", inv.status, "deferred", deferred, "held", len(nic1.paused_initiates))
    assert inv.status != S.NDIS_STATUS_PENDING, (
        f"the invalidate waits for nic1's RESUME: deferred {deferred}, "
        f"nic1 holds {len(nic1.paused_initiates)} initiate(s)"
    )
    assert [b.status for b in walk(inv)] == [S.NDIS_STATUS_SUCCESS]


def test_the_copy_a_failed_nic_offloads_after_an_invalidate_is_invalidated() -> None:
    """As above, then nic1 comes back and completes the held initiate: its copy of the
    neighbor never saw the invalidate. The MUX invalidates it, so nic1 asks the connection
    under it up with `InvalidState` as every other NIC did (spec §3.5), and once everything
    is terminated nothing is left."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    nic1 = nic_of(st, 1)
    tree = top.connection_tree([st.wires.open()])  # nic0
    top.initiate(tree.root)
    st.run()
    assert tree.neighbor is not None
    root = top.neighbor_block(tree.neighbor)
    late = root.add_dependent(top.path_block()).add_dependent(top.tcp_block(st.wires.open()))
    top.initiate(root)  # nic1
    top.invalidate(new_neighbor_block(tree.neighbor))
    nic1.fail_adapter()
    st.run()
    nic1.recover_adapter()  # the held initiate completes on nic1
    st.run()
    assert late.status == S.NDIS_STATUS_SUCCESS
    copies = [
        c.path.neighbor for c in nic1.connections() if c.upper.owner.upper is late.offload_handle
    ]
    assert len(copies) == 1
    assert copies[0].lifecycle.phase is Phase.INVALIDATED, (
        f"nic1's copy of the neighbor missed the invalidate: {copies[0].lifecycle.phase}"
    )
    reasons = [
        e.info
        for e in top.events
        if e.handle is late.offload_handle
        and e.event_type is TcpOffloadEventType.TcpIndicateRetrieve
    ]
    assert int(TcpUploadReason.InvalidState) in reasons, reasons
    assert st.checker.violations == []
