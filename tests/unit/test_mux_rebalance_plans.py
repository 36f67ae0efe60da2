"""A rebalance plans only for connections that come back to the MUX (spec §5.5: a failover's
or a rebalance's connections are offloaded again at the RESUME).

A plan (`Placement.moves`) is popped when its connection is offloaded again. Given to one that
never is, it stayed in the MUX's tables until the next rebalance, or until the MUX carried
nothing (a later connection reusing the 4-tuple went where it said), and the rebalance counted
it on the NIC it was planned for, so that NIC took one connection fewer:

* a connection asked up and found corrupt by its NIC in the terminate still in flight (spec
  §3.7): it lives on until the layer above terminates it again, aborted, and is never
  offloaded again;
* a connection the layer above is terminating on its own (closing it) when the rebalance
  runs: the rebalance picked it to move, and could not ask it up (it is on its way up).

Neither counts on a NIC: each leaves the one it is on."""

from __future__ import annotations

from chimneyd.drivers.base import Delay
from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.drivers.mux.objects import MuxConnection
from chimneyd.ndis.blocks import new_neighbor_block, new_path_block
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType
from chimneyd.testing.factories import fail_next, teamed_target_stack
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack
from tests.unit.mux_rig import mux_of, nic_of, two_nics_and_a_spare_neighbor

#: long enough that nothing held by it goes before the test clears the fault (the clock
#: moves only when a test says so)
HOLD_MS = 10_000


def _entry(handle: NdisOffloadHandle) -> MuxConnection:
    ctx = handle.miniport_offload_context
    assert isinstance(ctx, MuxConnection)
    return ctx


def _per_nic(mux: MuxIm) -> dict[str, int]:
    return {lo.name: lo.connections for lo in mux.lower_list()}


def _team(policy: str, n: int) -> tuple[Stack, MuxIm, OffloadTree]:
    st = teamed_target_stack(nics=2, policy=policy)
    tree = st.top.connection_tree([st.wires.open() for _ in range(n)])
    st.top.initiate(tree.root)
    st.run()
    return st, mux_of(st), tree


def _asked(st: Stack) -> list[NdisOffloadHandle]:
    """The connections the layer above was asked up, each once, in order."""
    return list(
        dict.fromkeys(
            e.handle
            for e in st.top.events
            if e.event_type is TcpOffloadEventType.TcpIndicateRetrieve
        )
    )


def _offload_again(st: Stack, tree: OffloadTree, handle: NdisOffloadHandle) -> None:
    """The layer above offloads the uploaded connection of `handle` again, under its path."""
    assert tree.neighbor is not None
    root = st.top.neighbor_block(tree.neighbor)
    path = root.add_dependent(st.top.path_block(tree.paths[0]))
    wire = tree.wires[handle.id]
    block = path.add_dependent(st.top.tcp_block(wire))
    assert block.offload_handle is not None
    tree.wires[block.offload_handle.id] = wire
    tree.tcp.append(block.offload_handle)
    st.top.initiate(root)
    st.run()
    assert block.status == S.NDIS_STATUS_SUCCESS


def _terminate(st: Stack, tree: OffloadTree, handles: list[NdisOffloadHandle]) -> None:
    st.top.terminate(st.top.reference_tree(tree, handles, state="delegated"))
    st.run()
    for handle in handles:
        if handle in tree.tcp:
            tree.tcp.remove(handle)


def _drain(st: Stack, tree: OffloadTree, left: list[NdisOffloadHandle]) -> None:
    """The layer above terminates what it still has, then its path and neighbor: the MUX's
    tables, its plans among them, are empty again (`MuxIm.leftovers`)."""
    _terminate(st, tree, left)
    root = new_neighbor_block(None)
    root.add_dependent(new_path_block(tree.paths[0]))
    st.top.terminate(root)
    st.run()
    assert tree.neighbor is not None
    st.top.terminate(new_neighbor_block(tree.neighbor))
    st.run()
    mux = mux_of(st)
    assert {k: n for k, n in mux.leftovers().items() if n} == {}
    assert st.checker.violations == []
    assert st.drain_problems() == []


def test_a_corrupt_connection_still_on_its_way_up_gets_no_plan() -> None:
    """Round robin over two NICs: c0, c2 on nic0, c1, c3 on nic1. nic1 is taken out (c1, c3
    asked up). The layer above uploads c0 (its own reason) and c1 in one terminate: nic1
    finds c1 corrupt, nic0's part is still below. nic1 is put back and a rebalance runs: c1
    is on its way up, but never comes back (spec §3.7); only c3 is planned, and nic1 counts
    it alone."""
    st, mux, tree = _team("round-robin", 4)
    c0, c1, _c2, c3 = tree.tcp
    nic0, nic1 = nic_of(st, 0), nic_of(st, 1)
    assert [_entry(h).lower.lower for h in tree.tcp] == [nic0, nic1, nic0, nic1]
    mux.lower_down(_entry(c1).lower)
    st.run()
    assert _asked(st) == [c1, c3]
    nic0.arm_fault(Delay(1, "MiniportTerminateOffload", HOLD_MS))
    fail_next(nic1, "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    st.top.terminate(st.top.reference_tree(tree, [c0, c1], state="delegated"))
    st.run()
    corrupt = _entry(c1)
    assert corrupt.completing and corrupt in mux.evacuating  # nic1's part back, failed
    mux.lower_up(corrupt.lower)
    st.run()
    mux.rebalance()
    plans = {key: lo.name for key, lo in mux.placement.moves.items()}
    assert plans == {_entry(c3).key: "nic1"}, plans
    # the rest goes: nic0's part, the layer above's further terminate of c1 (spec §3.7
    # step 4), c3 offloaded again where planned
    nic0.disarm_fault(1)  # nic0's part goes now (released by a timer due at once)
    st.advance(0)
    done = st.top.state_completions[-1]
    assert done.op == "Terminate" and S.NDIS_STATUS_FAILURE in done.statuses
    tree.tcp.remove(c0)
    _terminate(st, tree, [c1, c3])
    _offload_again(st, tree, c3)
    assert _per_nic(mux) == {"nic0": 1, "nic1": 1}
    assert mux.placement.moves == {}
    _drain(st, tree, list(tree.tcp))


def test_a_connection_the_layer_above_is_terminating_is_not_planned() -> None:
    """Active-standby over two NICs, four connections on nic0. The layer above terminates one
    (it closes it; nic0's part is still below) as a rebalance runs: that one is on its way
    up, it cannot be asked up, and it does not come back. Picked to move, its plan stayed
    once it had gone, and nic1 took one connection fewer than planned."""
    st, mux, tree = _team("active-standby", 4)
    nic0 = nic_of(st, 0)
    # the one the rebalance would take first from nic0 (its last)
    closing = next(h for h in tree.tcp if _entry(h) is mux.connections()[-1])
    nic0.arm_fault(Delay(1, "MiniportTerminateOffload", HOLD_MS))
    st.top.terminate(st.top.reference_tree(tree, [closing], state="delegated"))
    st.run()
    key = _entry(closing).key
    mux.rebalance()
    st.run()
    asked = _asked(st)
    assert closing not in asked
    plans = {_entry(h).key for h in asked}
    assert set(mux.placement.moves) == plans, "a plan for a connection not asked up"
    assert key not in mux.placement.moves
    nic0.disarm_fault(1)  # nic0's part goes now (released by a timer due at once)
    st.advance(0)
    tree.tcp.remove(closing)
    _terminate(st, tree, asked)
    for handle in asked:
        _offload_again(st, tree, handle)
    assert mux.placement.moves == {}
    assert _per_nic(mux) in ({"nic0": 1, "nic1": 2}, {"nic0": 2, "nic1": 1})
    _drain(st, tree, list(tree.tcp))


def test_a_plan_goes_when_the_mux_carries_nothing_after_a_held_terminate() -> None:
    """The plans left unused (a connection asked up that the layer above closed instead) go
    once the MUX carries nothing (`failover.forget_plans`), however its last object goes.
    Here the last is a neighbor whose terminate the MUX held for a copy a failed NIC was
    offloading (spec §5.5, §9 item 8), and that NIC fails that offload at its RESUME: the
    terminate completes with no terminate of the MUX's own after it. The plan stayed in
    the MUX's tables after everything had gone."""
    st, tree, n2 = two_nics_and_a_spare_neighbor()  # tcp0 on nic0, tcp1 on nic1
    top, mux = st.top, mux_of(st)
    nic0 = nic_of(st, 0)
    tcp0, tcp1 = tree.tcp
    binding1 = _entry(tcp1).lower
    mux.lower_down(binding1)  # tcp1 asked up
    st.run()
    mux.lower_up(binding1)
    st.run()
    mux.rebalance()  # tcp1, on its way up, is planned for nic1
    assert set(mux.placement.moves) == {_entry(tcp1).key}
    _terminate(st, tree, [tcp1])  # uploaded, and closed: never offloaded again
    # the path moves to N2 as nic0 fails, before it takes its copy of N2: nic0 holds that
    # offload until its RESUME (`relink.lower_failed`), and tcp0 is asked up
    assert n2.offload_handle is not None and tree.neighbor is not None
    move = new_neighbor_block(n2.offload_handle)
    move.add_dependent(new_path_block(tree.paths[0]))
    top.update(move)
    nic0.fail_adapter()
    st.run()
    assert top.state_completions[-1].statuses == [S.NDIS_STATUS_SUCCESS] * 2
    # the layer above terminates N2 with the path and tcp0 (held for nic0's copy), then N1
    term = top.reference_tree(tree, [tcp0], with_path=True, state="delegated")
    term.offload_handle = n2.offload_handle
    top.terminate(term)
    st.run()
    assert len(mux.held_terminates) == 1
    top.terminate(new_neighbor_block(tree.neighbor))
    st.run()
    assert top.state_completions[-1].statuses == [S.NDIS_STATUS_SUCCESS]
    fail_next(nic0, "MiniportInitiateOffload[neighbor]", S.NDIS_STATUS_FAILURE)
    nic0.recover_adapter()  # it fails the copy's offload: N2's terminate completes
    st.run()
    assert top.state_completions[-1].root is term
    assert top.state_completions[-1].statuses == [S.NDIS_STATUS_SUCCESS] * 3
    assert len(mux.table) == 0
    assert {k: n for k, n in mux.leftovers().items() if n} == {}
    assert st.checker.violations == []
    assert st.drain_problems() == []
