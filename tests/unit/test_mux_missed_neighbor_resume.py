"""The RESUME after an evacuation waits for a path copy held back under a neighbor copy that
missed an update (`failover._uploading`), as it does for a copy that missed one itself.

A failed NIC holds an initiate until its RESUME (spec §5.5); an ARP update of the neighbor
meanwhile does not wait for the neighbor copy that initiate offloads there, which then carries
the MAC from before (`missed`, spec §3.4 (a)). No connection is linked under that copy, nor
under any path copy below it (`mux._missed` walks up to the neighbor), for as long as it
lives. It goes with the last path copy under it (spec §3.1, §9 item 10); a path copy an update
below holds back when its last connection goes (spec §9 item 7) keeps it until that update
completes. The host offloads the connections asked up again at the RESUME: before the copies
have gone, each plan onto that NIC is dropped (`Placement.choose`) and the policy places the
connection elsewhere, while the rebalance had counted it there. For the same reason a
rebalance plans no connection of any path under such a neighbor copy onto its NIC while the
copy will outlive the RESUME (`failover._lingering`)."""

from __future__ import annotations

from chimneyd.drivers.base import Delay
from chimneyd.ndis.blocks import new_path_block
from chimneyd.ndis.broker import Binding
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, teamed_target_stack
from tests.unit.mux_rig import mux_of, nic_of
from tests.unit.test_mux_rebalance_missed import _arp, _Hooked
from tests.unit.test_mux_rebalance_plans import (
    HOLD_MS,
    _asked,
    _entry,
    _offload_again,
    _terminate,
)


def test_the_resume_waits_for_a_path_copy_an_update_holds_under_a_missed_neighbor_copy() -> None:
    """Round robin over two NICs: c0 on nic0; then one initiate of c1, c2, c3 under the same
    path (nic1, nic0, nic1), and nic1 fails before it takes its part; an ARP update of the
    neighbor goes meanwhile (nic1's neighbor copy misses it; its path copy is not named).
    nic1 comes back; c1 and c3 are asked up, and the rebalance plans them back onto nic1
    (nothing stays there). The layer above updates the path (nic0's part of it held below a
    while, a delay), then uploads them: when the last of them is up nic1's path copy still
    has the update below it (spec §3.1: no terminate of it before it completes), and the
    missed neighbor copy above it stays with it. The RESUME must come after both have gone:
    c1 and c3, offloaded again as soon as the layer above hears the RESUME, land on nic1 as
    planned."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    mux = mux_of(st)
    nic0, nic1 = nic_of(st, 0), nic_of(st, 1)
    tree = top.connection_tree([st.wires.open()])  # c0: nic0
    top.initiate(tree.root)
    st.run()
    assert tree.neighbor is not None
    root = top.neighbor_block(tree.neighbor)
    path = root.add_dependent(top.path_block(tree.paths[0]))
    late: list[NdisOffloadHandle] = []
    for _ in range(3):
        wire = st.wires.open()
        block = path.add_dependent(top.tcp_block(wire))
        assert block.offload_handle is not None
        tree.wires[block.offload_handle.id] = wire
        tree.tcp.append(block.offload_handle)
        late.append(block.offload_handle)
    top.initiate(root)
    nic1.fail_adapter()
    top.update(_arp(top, tree.neighbor, 9))
    st.run()
    nic1.recover_adapter()
    st.run()
    c1, _c2, c3 = late
    assert [_entry(h).lower.lower.name for h in late] == ["nic1", "nic0", "nic1"]
    assert _asked(st) == [c1, c3]
    vpath = _entry(c1).path
    neighbor = vpath.parent
    assert neighbor is not None
    on1 = _entry(c1).lower.id
    path_copy, neighbor_copy = vpath.instances[on1], neighbor.instances[on1]
    assert neighbor_copy.missed and not path_copy.missed
    mux.rebalance()
    plans = {key: lo.name for key, lo in mux.placement.moves.items()}
    assert sorted(plans.values()) == ["nic1", "nic1"], plans
    at_resume: list[list[str]] = []

    def status(binding: Binding, code: S) -> None:
        if code == RESUME:  # what nic1 still has of the path and neighbor as the host hears it
            at_resume.append(
                [
                    f"{v}: {i.lifecycle.phase.name}"
                    for v in (vpath, neighbor)
                    if (i := v.instances.get(on1))
                ]
            )

    top.status_indications = _Hooked(top.status_indications, status)
    nic0.arm_fault(Delay(1, "MiniportUpdateOffload", HOLD_MS))
    update = new_path_block(tree.paths[0])  # the path alone: not its neighbor
    top.update(update)  # to every copy; nic0's part is held: it completes after that one
    top.terminate(top.reference_tree(tree, [c1, c3], state="delegated"))
    st.run()
    # c1 and c3 are up; nic1's path copy waits for the update, its neighbor's for it
    assert path_copy.pending_ops == 1 and not path_copy.refs and not mux.evacuating
    assert neighbor.instances.get(on1) is neighbor_copy
    assert mux.paused_above, "RESUME while nic1's missed neighbor copy is still there"
    nic0.disarm_fault(1)
    st.advance(0)
    st.run()
    assert at_resume == [[]], at_resume  # nic1's copies had gone by the RESUME
    for handle in (c1, c3):
        tree.tcp.remove(handle)
    for handle in (c1, c3):
        _offload_again(st, tree, handle)  # as soon as the layer above hears the RESUME
        assert _entry(tree.tcp[-1]).lower.lower.name == "nic1"
    assert st.checker.violations == []


RESUME = S.NDIS_STATUS_OFFLOAD_RESUME


def test_no_plan_for_another_path_onto_a_missed_neighbor_copy_that_outlives_the_resume() -> None:
    """As in test_mux_rebalance_missed: nic1's copies of the path and its neighbor come back
    from nic1's failure with the MAC from before (the neighbor copy missed the ARP update),
    c1 and c3 are asked up, and nic1 finds c1 corrupt in its terminate: it keeps nic1's
    copies until the layer above terminates it again (spec §3.7). Three connections of a
    second path under the same neighbor go to nic0 meanwhile (not under nic1's missed
    neighbor copy, `mux._avoiding`). A rebalance must plan none of them onto nic1 either:
    re-offloaded at the RESUME, each would be kept off nic1 for the same reason."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    nic1 = nic_of(st, 1)
    mux = mux_of(st)
    tree = top.connection_tree([st.wires.open()])  # c0: nic0
    top.initiate(tree.root)
    st.run()
    assert tree.neighbor is not None
    root = top.neighbor_block(tree.neighbor)
    path = root.add_dependent(top.path_block(tree.paths[0]))
    late: list[NdisOffloadHandle] = []
    for _ in range(3):
        wire = st.wires.open()
        block = path.add_dependent(top.tcp_block(wire))
        assert block.offload_handle is not None
        tree.wires[block.offload_handle.id] = wire
        tree.tcp.append(block.offload_handle)
        late.append(block.offload_handle)
    top.initiate(root)
    nic1.fail_adapter()
    top.update(_arp(top, tree.neighbor, 9))
    st.run()
    nic1.recover_adapter()
    st.run()
    c1, _c2, c3 = late
    assert _asked(st) == [c1, c3]
    fail_next(nic1, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    _terminate(st, tree, [c1])  # found corrupt: lives on, keeps nic1's copies
    _terminate(st, tree, [c3])
    second = top.neighbor_block(tree.neighbor)
    other = second.add_dependent(top.path_block())
    blocks = [other.add_dependent(top.tcp_block(st.wires.open())) for _ in range(3)]
    top.initiate(second)
    st.run()
    on = []
    for block in blocks:
        assert block.status == S.NDIS_STATUS_SUCCESS and block.offload_handle is not None
        on.append(_entry(block.offload_handle).lower.lower.name)
    assert on == ["nic0"] * 3
    mux.rebalance()
    plans = {key: lo.name for key, lo in mux.placement.moves.items()}
    assert "nic1" not in plans.values(), plans
    assert st.checker.violations == []
