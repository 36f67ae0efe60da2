"""A path copy its NIC cannot move back has its connections asked up between a PAUSE and a
RESUME, as the MUX's other evacuations are (spec §3.8, §5.5).

A next-hop change one NIC fails, and another NIC moves and then cannot move back
(`relink._undone`), leaves that NIC's path copy under its copy of the new neighbor, which the
layer above knows nothing of: the MUX asks the connections on it up (a mandatory reason,
spec §5.2). It asked them with no PAUSE above: the host offers again at RESUME only what it
was asked for while paused (`host.adapter.offer_again_at_resume`), so those connections
stayed with the host for good, though the MUX counted them among those on their way up to be
placed anew (`MuxIm.evacuating`), and a rebalance gave each a plan that was never used. Asked
up between PAUSE and RESUME, they come back at the RESUME, placed by the policy (not under the
stray copy, `mux._misplaced`), or where a rebalance planned."""

from __future__ import annotations

from chimneyd.ndis.blocks import new_neighbor_block
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.factories import fail_next
from tests.unit.mux_rig import (
    assert_all_drained,
    move_first_path,
    mux_of,
    nic_of,
    two_nics_and_a_spare_neighbor,
)
from tests.unit.test_host_next_hop_interleavings import TeamWalk

OK = S.NDIS_STATUS_SUCCESS
PAUSE = S.NDIS_STATUS_OFFLOAD_PAUSE
RESUME = S.NDIS_STATUS_OFFLOAD_RESUME


def test_a_copy_its_nic_cannot_move_back_is_asked_up_between_pause_and_resume() -> None:
    """nic1 fails the move; nic0 moved its copy and cannot move it back: nic0's connection is
    asked up with the MUX paused above, a rebalance meanwhile plans for it (it comes back at
    the RESUME), and the RESUME follows its upload."""
    st, tree, n2 = two_nics_and_a_spare_neighbor()  # tcp[0] on nic0, tcp[1] on nic1
    assert n2.offload_handle is not None
    top, mux = st.top, mux_of(st)
    fail_next(nic_of(st, 0), "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE, skip=1)  # undo
    fail_next(nic_of(st, 1), "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    assert move_first_path(st, tree, n2).statuses == [S.NDIS_STATUS_FAILURE] * 2
    first = tree.tcp[0]
    retrieve = (TcpOffloadEventType.TcpIndicateRetrieve, int(TcpUploadReason.UploadRequested))
    assert [(e.handle, (e.event_type, e.info)) for e in top.events] == [(first, retrieve)]
    # on its way up: the MUX is paused above (nothing asked up while it is not)
    assert len(mux.evacuating) == 1
    assert mux.paused_above
    assert [s for _, s in top.status_indications] == [PAUSE]
    mux.rebalance()  # it comes back at the RESUME: a plan for it is one that will be used
    assert len(mux.placement.moves) == 1
    done = len(top.state_completions)
    top.terminate(new_neighbor_block(n2.offload_handle))
    top.terminate(top.reference_tree(tree, [first], state="delegated"))
    st.run()
    assert [(c.op, c.statuses) for c in top.state_completions[done:]] == [
        ("Terminate", [OK] * 3),
        ("Terminate", [OK]),
    ]
    assert not mux.evacuating and not mux.paused_above
    assert [s for _, s in top.status_indications] == [PAUSE, RESUME]
    mux.placement.moves.clear()  # the stub above offloads nothing again
    del tree.wires[first.id]
    tree.tcp.remove(first)
    top.terminate(
        top.reference_tree(tree, None, with_path=True, with_neighbor=True, state="delegated")
    )
    st.run()
    assert top.state_completions[-1].statuses == [OK] * 3
    assert_all_drained(st)


def test_the_host_offloads_a_connection_asked_up_off_a_stray_copy_again() -> None:
    """The host above a team of three, round robin: two connections on one path, on nic0 and
    nic1. The move fails on nic1 and nic0 cannot move its copy back: the host uploads the
    path's connections (its rule after a failed update, spec §3.4), and the MUX asks nic0's
    up too, while paused. The host hears of that one while paused, and offloads it again at
    the RESUME (not under nic0's stray copy); the host and the MUX are paused together, and
    nothing is left on its way up once they are not."""
    walk = TeamWalk()
    rig, mux, host = walk.rig, walk.mux, walk.rig.host
    walk.do("connect", 0, None)
    walk.do("connect", 0, None)
    rig.run()
    c0, c1 = walk.conns
    assert [e.lower.lower.name for e in sorted(mux.connections(), key=lambda e: e.id)] == [
        "nic0",
        "nic1",
    ]
    fail_next(rig.targets["nic0"], "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE, skip=1)
    fail_next(rig.targets["nic1"], "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    walk.do("move", 0, 1)
    paused = False
    while rig.scheduler.queue:  # delivery by delivery: the host paused at some point?
        rig.scheduler.run_one()
        paused = paused or bool(host.paused)
        # the MUX is paused above while anything it asked up is on its way (spec §5.5)
        assert mux.paused_above or not mux.evacuating, mux.leftovers()
    rig.run()
    assert walk.replies[-1][1].error is not None  # the move failed (spec §3.4)
    assert rig.problems() == []
    assert paused
    assert not mux.paused_above and not host.paused and not mux.evacuating
    offloaded = [c for c, e, _ in rig.events if e == "offloaded"]
    # the one nic0 asked up was offloaded again at the RESUME; the other stays with the host
    assert offloaded.count(c0) == 2 and offloaded.count(c1) == 1, rig.events
    (again,) = mux.connections()
    assert again.lower.lower.name != "nic0"
    walk.answered_and_drained()
