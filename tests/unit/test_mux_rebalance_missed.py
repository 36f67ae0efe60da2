"""A rebalance plans no connection onto a NIC whose copy of its path, or of the path's
neighbor, missed an update and will still be there when the connection is offloaded again.

A failed NIC holds an initiate until its RESUME (spec §5.5); an update meanwhile does not wait
for the copies that initiate offloads there, which then carry the values from before (a stale
MAC, spec §3.4 (a)): `missed`. No connection is linked under such a copy (`mux._missed`,
`mux._avoiding`), so a plan onto its NIC is dropped at the re-offload (`Placement.choose`) and
the policy places the connection, while the rebalance counted it there. The copy goes with the
last connection on it; one found corrupt in its terminate keeps it until the layer above
terminates it again (spec §3.7), past the RESUME."""

from __future__ import annotations

from collections.abc import Callable

from chimneyd.drivers.base import Delay
from chimneyd.ndis.blocks import NeighborOffloadStateCached, OffloadBlock
from chimneyd.ndis.broker import Binding
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, teamed_target_stack
from chimneyd.testing.protocol_stub import ProtocolStub
from tests.unit.mux_rig import mux_of, nic_of
from tests.unit.test_mux_rebalance_plans import (
    HOLD_MS,
    _asked,
    _entry,
    _offload_again,
    _terminate,
)


def test_no_plan_onto_a_nic_whose_copy_missed_an_update_and_outlives_the_resume() -> None:
    """Round robin over two NICs: c0 on nic0; then one initiate of c1, c2, c3 under the same
    path (nic1, nic0, nic1), and nic1 fails before it takes its part; an ARP update of the
    neighbor goes meanwhile. nic1 comes back and offloads its copies with the old MAC
    (missed); c1 and c3 are asked up. nic1 finds c1 corrupt in its terminate (it keeps the
    copies until the layer above terminates it again). A rebalance now must not plan c3
    onto nic1: its re-offload could not go there."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    mux = mux_of(st)
    nic1 = nic_of(st, 1)
    tree = top.connection_tree([st.wires.open()])  # c0: nic0
    top.initiate(tree.root)
    st.run()
    assert tree.neighbor is not None
    root = top.neighbor_block(tree.neighbor)
    path = root.add_dependent(top.path_block(tree.paths[0]))
    late: list[OffloadBlock] = []
    for _ in range(3):
        wire = st.wires.open()
        block = path.add_dependent(top.tcp_block(wire))
        assert block.offload_handle is not None
        tree.wires[block.offload_handle.id] = wire
        tree.tcp.append(block.offload_handle)
        late.append(block)
    top.initiate(root)
    nic1.fail_adapter()
    arp = top.neighbor_block(tree.neighbor)
    arp.cached = NeighborOffloadStateCached(DlDestinationAddress=b"\x02\x00\x00\x00\x00\x09")
    top.update(arp)
    st.run()
    assert arp.status == S.NDIS_STATUS_SUCCESS
    nic1.recover_adapter()  # the held initiate: copies with the MAC from before the update
    st.run()
    assert [b.status for b in late] == [S.NDIS_STATUS_SUCCESS] * 3
    handles: list[NdisOffloadHandle] = []
    for b in late:
        assert b.offload_handle is not None
        handles.append(b.offload_handle)
    c1, _c2, c3 = handles
    assert [_entry(h).lower.lower.name for h in handles] == ["nic1", "nic0", "nic1"]
    assert _asked(st) == [c1, c3]
    fail_next(nic1, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    _terminate(st, tree, [c1])  # found corrupt: lives on, aborted, keeps nic1's copies
    mux.rebalance()
    plans = {key: lo.name for key, lo in mux.placement.moves.items()}
    planned = plans.get(_entry(c3).key)
    assert planned != "nic1", plans
    _terminate(st, tree, [c3])
    _offload_again(st, tree, c3)
    # it went where it was planned, if anywhere (on main the plan onto nic1 was dropped at
    # the re-offload and the policy put it on nic0)
    assert planned in (None, _entry(tree.tcp[-1]).lower.lower.name), plans
    assert st.checker.violations == []


def test_the_resume_waits_for_a_missed_copy_being_terminated() -> None:
    """As above, but no connection is found corrupt: c1 and c3 are planned back onto nic1
    (nothing stays there), and a second ARP update is held below on nic1 while their
    terminate goes. nic1's neighbor copy, which missed the first update, is left out of
    their terminate (an update is below it, spec §3.1) and terminated by the MUX after it.
    The RESUME must wait for that copy: the host offloads c1 and c3 again at the RESUME
    (spec §5.5), and while the copy is there no connection goes under it (`mux._missed`):
    the plans onto nic1 would be dropped."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    top = st.top
    mux = mux_of(st)
    nic1 = nic_of(st, 1)
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
    nic1.arm_fault(Delay(1, "MiniportUpdateOffload", HOLD_MS))
    top.update(_arp(top, tree.neighbor, 10))
    st.run()
    mux.rebalance()
    plans = {key: lo.name for key, lo in mux.placement.moves.items()}
    assert sorted(plans.values()) == ["nic1", "nic1"], plans
    at_resume: list[list[str]] = []

    def missed_copies() -> list[str]:
        return [
            f"{i.lower.name}: {i.lifecycle.phase.name}"
            for v in mux._vobjs()
            for i in v.instances.values()
            if i.missed
        ]

    def status(binding: Binding, code: S) -> None:
        if code == S.NDIS_STATUS_OFFLOAD_RESUME:
            at_resume.append(missed_copies())

    top.status_indications = _Hooked(top.status_indications, status)
    _terminate(st, tree, [c1, c3])
    nic1.disarm_fault(1)
    st.advance(0)
    assert at_resume == [[]], at_resume
    for handle in (c1, c3):
        _offload_again(st, tree, handle)
        assert _entry(tree.tcp[-1]).lower.lower.name == "nic1"
    assert st.checker.violations == []


class _Hooked(list[tuple[Binding, S]]):
    """`status_indications` that calls `hook` on each one as it is recorded."""

    def __init__(self, before: list[tuple[Binding, S]], hook: Callable[[Binding, S], None]) -> None:
        super().__init__(before)
        self.hook = hook

    def append(self, item: tuple[Binding, S]) -> None:
        super().append(item)
        self.hook(*item)


def _arp(top: ProtocolStub, neighbor: NdisOffloadHandle, last: int) -> OffloadBlock:
    """An ARP update of `neighbor` (spec §3.4 (a)): a MAC ending in `last`."""
    block = top.neighbor_block(neighbor)
    block.cached = NeighborOffloadStateCached(DlDestinationAddress=bytes([2, 0, 0, 0, 0, last]))
    return block
