"""A terminate from above that a teaming MUX holds only for a neighbor copy (`MuxCall.held`)
does not keep the MUX paused above. In the crossing moves (test_mux_crossing_moves) neighbor
A's terminate holds its copy on nic2, which nic2 offloads only at its RESUME (spec §5.5); its
connections went up before it, in a call of their own. With nic0 and nic1 back and nic2
never returning, the MUX RESUMEs above all the same: the host offloads again (spec §5.5:
PAUSE stops only new offloads; §3.1: other objects may be offloaded while a terminate is in
flight), while A's terminate still completes only once that copy has gone (spec §9 item 8).
Held paused, every new offload was refused NDIS_STATUS_OFFLOAD_PAUSE until nic2 came back,
for ever if it did not.

So too when a connection of that terminate is found corrupt on its NIC (spec §3.7): the
host's further terminate of it comes only after this one's completion, so it holds the
pause no longer than the held copy would."""

from __future__ import annotations

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.blocks import (
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
)
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.mux_rig import assert_all_drained, mux_of, nic_of, two_nics_and_a_spare_neighbor
from tests.unit.test_mux_crossing_moves import _cross, _recover_and_close

OK = S.NDIS_STATUS_SUCCESS
FAILURE = S.NDIS_STATUS_FAILURE

#: the path moved to neighbor B (test_mux_crossing_moves: path 127.0.0.2 → B): a connection
#: to it goes under B, whose terminate has completed, not under A, which the host keeps
#: TERMINATING until A's terminate completes (a new connection waits for it at the host)
UNDER_B = ("127.0.0.2", 80)


def _two_nics_back() -> tuple[HostRig, MuxIm, list[int], list[Reply]]:
    """The crossing moves, then nic0 and nic1 back in service; nic2 stays failed, holding
    the offload of A's copy that A's terminate holds back."""
    rig, mux, conns, replies = _cross()
    for name in ("nic0", "nic1"):
        rig.targets[name].recover_adapter()
        rig.run()
    held = [i for call in mux.held_terminates for i in call.held]
    assert [(i.lower.name, i.lifecycle.phase) for i in held] == [("nic2", Phase.OFFLOADING)]
    return rig, mux, conns, replies


def _offload_new(rig: HostRig, conns: list[int], replies: list[Reply]) -> tuple[int, Reply]:
    conn, wire = rig.open(remote=UNDER_B)
    wire.auto_ack = True
    conns.append(conn)
    reply = Reply()
    replies.append(reply)
    rig.host.app_offload(conn, None, reply)
    rig.run()
    return conn, reply


def test_a_terminate_held_for_a_failed_nics_copy_does_not_keep_the_mux_paused() -> None:
    rig, mux, conns, replies = _two_nics_back()
    host = rig.host
    # A's terminate waits for the copy (§9 item 8); its connections went up before it, in a
    # call of their own (`terminate.flush_terminates`), and none waits for it
    assert len(mux.held_terminates) == 1
    assert not [c for c in conns if host.tcbs[c].state == "uploading"]
    conn, reply = _offload_new(rig, conns, replies)
    assert reply.done and reply.error is None, (reply, mux.leftovers())
    assert host.tcbs[conn].state == "offloaded"
    assert not mux.paused_above
    assert len(mux.held_terminates) == 1
    assert rig.problems() == []
    _recover_and_close(rig, mux, conns, replies)  # nic2 back at last: everything drains


def test_a_corrupt_connection_of_such_a_terminate_does_not_keep_the_mux_paused() -> None:
    """Path P (N1) moved to N2 as nic0 fails: nic0 holds the offload of its copy of N2 until
    its RESUME (`relink.lower_failed`), and P's connection there is asked up (PAUSE above).
    The terminate of N2 with P and both connections holds that copy back; nic0 finds its
    part corrupt (spec §3.7). The MUX RESUMEs above all the same; the terminate completes
    once nic0 is back, failed for what was corrupt, and the connection's retrieve and abort
    come after that completion (spec §3.7 steps 1-3)."""
    st, tree, n2 = two_nics_and_a_spare_neighbor()  # tcp[0] on nic0, tcp[1] on nic1
    top = st.top
    mux = mux_of(st)
    nic0 = nic_of(st, 0)
    assert n2.offload_handle is not None
    move = new_neighbor_block(n2.offload_handle)
    move.add_dependent(new_path_block(tree.paths[0]))
    top.update(move)
    nic0.fail_adapter()  # before it takes its copy of N2
    st.run()
    assert top.state_completions[-1].statuses == [OK, OK]
    assert [s for _, s in top.status_indications] == [S.NDIS_STATUS_OFFLOAD_PAUSE]
    fail_next(nic0, "MiniportTerminateOffload", FAILURE)
    term = new_neighbor_block(n2.offload_handle)
    path = term.add_dependent(new_path_block(tree.paths[0]))
    for handle in tree.tcp:
        path.add_dependent(new_tcp_block(handle)).delegated = TcpOffloadStateDelegated()
    done = len(top.state_completions)
    asked = len(top.events)
    top.terminate(term)
    st.run()
    assert not nic0.fail_next, "nic0's part was not failed"
    held = [i for call in mux.held_terminates for i in call.held]
    assert [(i.lower.name, i.lifecycle.phase) for i in held] == [("nic0", Phase.OFFLOADING)]
    assert len(top.state_completions) == done  # after the held copy (spec §9 item 8)
    assert len(top.events) == asked  # nothing about the corrupt connection before that
    assert [s for _, s in top.status_indications][-1] == S.NDIS_STATUS_OFFLOAD_RESUME, (
        mux.leftovers()
    )
    assert not mux.paused_above
    nic0.recover_adapter()  # it offloads the copy; the MUX terminates it as unused
    st.run()
    assert top.state_completions[done].root is term
    assert top.state_completions[done].statuses == [FAILURE, FAILURE, FAILURE, OK]
    hardware = [(e.handle, e.event_type) for e in top.events[asked:] if e.handle is tree.tcp[0]]
    assert hardware == [
        (tree.tcp[0], TcpOffloadEventType.TcpIndicateRetrieve),
        (tree.tcp[0], TcpOffloadEventType.TcpIndicateAbort),
    ]
    assert top.events[asked].info == int(TcpUploadReason.HardwareFailure)
    # the further terminate (step 4): the connection, its path and N2; then N1
    again = new_neighbor_block(n2.offload_handle)
    path = again.add_dependent(new_path_block(tree.paths[0]))
    path.add_dependent(new_tcp_block(tree.tcp[0])).delegated = TcpOffloadStateDelegated()
    top.terminate(again)
    st.run()
    assert top.state_completions[-1].statuses == [OK, OK, OK]
    top.terminate(new_neighbor_block(tree.neighbor))
    st.run()
    assert top.state_completions[-1].statuses == [OK]
    assert_all_drained(st)
