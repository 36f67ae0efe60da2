"""A rebalance plans a connection onto a NIC where its path's copy hangs under another
neighbor's copy (a stray copy its NIC could not move back, `relink._undone`) only if that
copy will have gone by the time the connection is offloaded again, at the RESUME.

Offloaded again, a connection is never linked under such a copy (`mux._misplaced`,
`mux._avoiding`): the plan is popped and dropped (`Placement.choose`), and the policy places
it, while the rebalance counted it on the planned NIC. The copy goes with the last connection
on it. Those it asked up are all up before the RESUME, and the RESUME waits for the copy
too when their own terminates left it to the MUX's (`failover._uploading`): a plan there
stands, and is used. But one found corrupt in its terminate (spec §3.7) stays, FAILED, until
the layer above terminates it again, and the RESUME does not wait for that: the copy is still
there at the re-offload, and the plan cannot be used. So a NIC whose copy of the path will
linger is left out for the connection (`failover._lingering`)."""

from __future__ import annotations

from chimneyd.ndis.blocks import new_neighbor_block
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.factories import fail_next, teamed_target_stack
from chimneyd.testing.records import OffloadTree
from chimneyd.testing.stack import Stack
from tests.unit.mux_rig import move_first_path, mux_of, nic_of
from tests.unit.test_mux_rebalance_plans import _asked, _drain, _entry, _offload_again, _terminate

RESUME = S.NDIS_STATUS_OFFLOAD_RESUME


def _three_with_strays(n: int = 3) -> tuple[Stack, OffloadTree, NdisOffloadHandle]:
    """Round robin over two NICs: c0, c2 on nic0, c1 (and c3 with `n` 4) on nic1, under one
    path, and a second neighbor n2. The path's move under n2 fails on nic1, and nic0 cannot
    move its copy back: c0 and c2 are asked up, the MUX paused above. Returns the stack, the
    tree and n2."""
    st = teamed_target_stack(nics=2, policy="round-robin")
    tree = st.top.connection_tree([st.wires.open() for _ in range(n)])
    st.top.initiate(tree.root)
    st.run()
    n2 = st.top.neighbor_block()
    st.top.initiate(n2)
    st.run()
    assert n2.offload_handle is not None
    assert [_entry(h).lower.lower.name for h in tree.tcp] == ["nic0", "nic1", "nic0", "nic1"][:n]
    fail_next(nic_of(st, 0), "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE, skip=1)  # undo
    fail_next(nic_of(st, 1), "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    assert move_first_path(st, tree, n2).statuses == [S.NDIS_STATUS_FAILURE] * 2
    c0, c2 = tree.tcp[0], tree.tcp[2]
    assert _asked(st) == [c0, c2]
    assert mux_of(st).paused_above
    return st, tree, n2.offload_handle


def _plan_and_offload_again(st: Stack, tree: OffloadTree, c0: NdisOffloadHandle) -> str:
    """A rebalance, c0's upload (the RESUME follows it), c0 offloaded again: the NIC the
    rebalance planned for it, checked to be the one it lands on."""
    mux = mux_of(st)
    mux.rebalance()
    key = _entry(c0).key
    plans = {k: lo.name for k, lo in mux.placement.moves.items()}
    assert list(plans) == [key], plans
    _terminate(st, tree, [c0])
    assert not mux.paused_above
    assert [s for _, s in st.top.status_indications][-1] == RESUME
    _offload_again(st, tree, c0)
    again = tree.tcp[-1]
    assert key not in mux.placement.moves  # popped
    assert _entry(again).lower.lower.name == plans[key], (plans, _entry(again).lower)
    return plans[key]


def test_a_plan_onto_a_stray_copy_that_goes_before_the_resume_stands() -> None:
    """c2 is uploaded, then the rebalance runs: c0, the last connection on nic0's stray
    copy, is planned onto nic0 (the fewest there), and the copy goes with c0's upload,
    before the RESUME: c0 is offloaded again on nic0, with a fresh copy."""
    st, tree, n2 = _three_with_strays()
    c0, _c1, c2 = tree.tcp
    _terminate(st, tree, [c2])
    assert _plan_and_offload_again(st, tree, c0) == "nic0"
    st.top.terminate(new_neighbor_block(n2))
    st.run()
    _drain(st, tree, list(tree.tcp))


def test_no_plan_onto_a_stray_copy_a_corrupt_connection_keeps() -> None:
    """nic0 finds c2 corrupt in its terminate: c2 lives on, FAILED, on nic0's stray copy
    until the layer above terminates it again (spec §3.7 step 4), after the RESUME. The
    rebalance plans c0 onto nic1: onto nic0, where the copy still is when c0 is offloaded
    again, the plan was dropped and the policy placed c0."""
    st, tree, n2 = _three_with_strays()
    c0, _c1, c2 = tree.tcp
    fail_next(nic_of(st, 0), "MiniportTerminateOffload", S.NDIS_STATUS_FAILURE)
    st.top.terminate(st.top.reference_tree(tree, [c2], state="delegated"))
    st.run()
    assert st.top.state_completions[-1].statuses[-1] == S.NDIS_STATUS_FAILURE
    assert _plan_and_offload_again(st, tree, c0) == "nic1"
    _terminate(st, tree, [c2])  # step 4's terminate: the stray copy goes with it
    st.top.terminate(new_neighbor_block(n2))
    st.run()
    _drain(st, tree, list(tree.tcp))


def test_the_resume_waits_for_a_stray_copy_its_connections_left_in_separate_terminates() -> None:
    """The rebalance plans c0 and c2 onto nic0 (the fewest there), and the layer above
    uploads them in two terminates, both below at once: neither takes the stray copy along
    (the other still hangs on it), which the MUX terminates once both are back. The RESUME
    goes only once it has gone: offloaded again right at the RESUME, as a host does, c0
    lands on nic0 where planned. (The RESUME went with the second upload, the copy's
    terminate still below; c0, offloaded again then, could not go under it, and the policy
    put it on nic1.)"""
    st, tree, n2 = _three_with_strays()
    c0, _c1, c2 = tree.tcp
    mux = mux_of(st)
    mux.rebalance()
    plans = {k: lo.name for k, lo in mux.placement.moves.items()}
    assert plans == {_entry(c0).key: "nic0", _entry(c2).key: "nic0"}, plans
    top = st.top
    top.terminate(top.reference_tree(tree, [c2], state="delegated"))
    top.terminate(top.reference_tree(tree, [c0], state="delegated"))
    while RESUME not in [s for _, s in top.status_indications]:
        assert st.scheduler.run_one(), mux.leftovers()
    for handle in (c0, c2):
        tree.tcp.remove(handle)
    _offload_again(st, tree, c0)  # as soon as the layer above hears the RESUME
    assert _entry(tree.tcp[-1]).lower.lower.name == "nic0"
    mux.placement.moves.clear()  # c2's: the layer above closed it instead
    top.terminate(new_neighbor_block(n2))
    st.run()
    _drain(st, tree, list(tree.tcp))


def test_a_plan_onto_a_stray_copy_being_terminated_stands() -> None:
    """c0 and c2 are uploaded in terminates of their own; the rebalance runs while the MUX's
    terminate of the stray copy is still below nic0: nic0 carries nothing, nic1 c1 and c3.
    The copy will have gone by the RESUME, which waits for it: c3 is planned onto nic0, and
    lands there when offloaded again."""
    st, tree, n2 = _three_with_strays(4)
    c0, _c1, c2, c3 = tree.tcp
    mux = mux_of(st)
    path = _entry(c0).path
    stray = path.instances[_entry(c0).lower.id]
    top = st.top
    top.terminate(top.reference_tree(tree, [c2], state="delegated"))
    top.terminate(top.reference_tree(tree, [c0], state="delegated"))
    while stray.lifecycle.phase is not Phase.TERMINATING:
        assert st.scheduler.run_one(), mux.leftovers()
    assert mux.paused_above  # for the copy
    mux.rebalance()
    plans = {k: lo.name for k, lo in mux.placement.moves.items()}
    assert plans == {_entry(c3).key: "nic0"}, plans
    st.run()
    for handle in (c0, c2):
        tree.tcp.remove(handle)
    _terminate(st, tree, [c3])
    assert not mux.paused_above
    _offload_again(st, tree, c3)
    assert _entry(tree.tcp[-1]).lower.lower.name == "nic0"
    top.terminate(new_neighbor_block(n2))
    st.run()
    _drain(st, tree, list(tree.tcp))
