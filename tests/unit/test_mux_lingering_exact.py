"""`failover._lingering` foresees which copies a connection cannot be linked under will still
be there when the connections asked up are offloaded again (the RESUME), and only those: a
rebalance plans no connection onto such a copy's NIC (the plan would be dropped at the
re-offload, `mux._avoiding`), and plans freely onto a NIC whose copy goes in time.

- A stray path copy (one a failed next-hop change left under another neighbor's copy,
  `relink._undone`) that the layer above has since invalidated (spec §3.5) is INVALIDATED,
  not gone: it still goes with the last connection on it, in the same terminate (`MuxIm.
  _terminate_unused`), before the RESUME. Its NIC was left out all the same.
- A stray copy an update below holds back when its last connection goes is terminated once
  the update completes, and the RESUME waits for it (`failover._uploading`): its NIC takes a
  plan."""

from __future__ import annotations

from chimneyd.drivers.base import Delay
from chimneyd.ndis.blocks import new_neighbor_block, new_path_block
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from tests.unit.mux_rig import mux_of, nic_of
from tests.unit.test_mux_rebalance_plans import HOLD_MS, _entry, _offload_again, _terminate
from tests.unit.test_mux_rebalance_strays import _three_with_strays


def test_an_invalidated_stray_copy_goes_in_time_and_its_nic_takes_a_plan() -> None:
    """c0 and c2 are asked up from nic0's stray copy of the path (c1 on nic1); the layer
    above invalidates the path (every copy INVALIDATED; nic1 asks c1 up itself). The
    rebalance plans the two leaving ones onto the NICs the fewest stay on, nic0 and nic1
    (none stays on either): nic0's stray copy goes with c0 and c2, before the RESUME. Then
    the layer above offloads them again under a fresh path, each where planned."""
    st, tree, n2 = _three_with_strays()
    c0, _c1, c2 = tree.tcp
    mux = mux_of(st)
    path = _entry(c0).path
    stray = path.instances[_entry(c0).lower.id]
    top = st.top
    top.invalidate(top.reference_tree(tree, [], with_path=True))
    st.run()
    assert stray.lifecycle.phase is Phase.INVALIDATED
    mux.rebalance()
    plans = {k: lo.name for k, lo in mux.placement.moves.items()}
    assert sorted(plans.values()) == ["nic0", "nic1"], plans
    keys = {h: _entry(h).key for h in (c0, c2)}
    _terminate(st, tree, [c0, c2])
    assert stray not in path.instances.values()  # gone with them
    assert not mux.paused_above
    # offloaded again under a fresh path (the old one is invalidated), where planned
    assert tree.neighbor is not None
    root = top.neighbor_block(tree.neighbor)
    fresh = root.add_dependent(top.path_block())
    blocks = [fresh.add_dependent(top.tcp_block(tree.wires[h.id])) for h in (c0, c2)]
    top.initiate(root)
    st.run()
    for handle, block in zip((c0, c2), blocks, strict=True):
        assert block.status == S.NDIS_STATUS_SUCCESS
        assert block.offload_handle is not None
        assert _entry(block.offload_handle).lower.lower.name == plans[keys[handle]]
    assert st.checker.violations == []
    top.terminate(new_neighbor_block(n2))
    st.run()


def test_a_stray_copy_an_update_holds_back_goes_before_the_resume() -> None:
    """c2 is uploaded; an update of the path is held below on nic0 (a delay), so c0's upload
    leaves nic0's stray copy behind (no terminate of it while the update is below, spec
    §3.1). The rebalance plans c0 onto nic0 (nothing stays there): the RESUME waits for the
    copy, which goes once the update completes, and c0 is offloaded again on nic0, with a
    fresh copy. (Taking a copy an update holds back to linger, the rebalance planned c0
    onto nic1, away from the idle NIC.)"""
    st, tree, n2 = _three_with_strays()
    c0, _c1, c2 = tree.tcp
    mux = mux_of(st)
    nic0 = nic_of(st, 0)
    path = _entry(c0).path
    stray = path.instances[_entry(c0).lower.id]
    top = st.top
    _terminate(st, tree, [c2])
    nic0.arm_fault(Delay(1, "MiniportUpdateOffload", HOLD_MS))
    assert tree.neighbor is not None
    update = top.neighbor_block(tree.neighbor)
    update.add_dependent(new_path_block(tree.paths[0]))
    top.update(update)
    st.run()
    assert stray.pending_ops == 1
    mux.rebalance()
    plans = {k: lo.name for k, lo in mux.placement.moves.items()}
    assert plans == {_entry(c0).key: "nic0"}, plans
    key = _entry(c0).key
    _terminate(st, tree, [c0])
    assert stray in path.instances.values()  # held back by the update
    assert mux.paused_above, "RESUME while the stray copy is still there"
    nic0.disarm_fault(1)
    st.advance(0)
    st.run()
    assert stray not in path.instances.values()
    assert not mux.paused_above
    assert [s for _, s in top.status_indications][-1] == S.NDIS_STATUS_OFFLOAD_RESUME
    _offload_again(st, tree, c0)
    again = tree.tcp[-1]
    assert key not in mux.placement.moves
    assert _entry(again).lower.lower.name == "nic0"
    assert st.checker.violations == []
    top.terminate(new_neighbor_block(n2))
    st.run()
