"""A terminate from above that a teaming MUX holds only for a neighbor copy (`MuxCall.held`)
does not keep the MUX paused above. In the crossing moves (test_mux_crossing_moves) neighbor
A's terminate holds its copy on nic2, which nic2 offloads only at its RESUME (spec §5.5); its
connections are uploaded below at once. With nic0 and nic1 back and nic2 never returning,
the MUX RESUMEs above all the same: the host offloads again (spec §5.5: PAUSE stops only new
offloads; §3.1: other objects may be offloaded while a terminate is in flight), while A's
terminate still completes only once that copy has gone (spec §9 item 8). Held paused, every
new offload was refused NDIS_STATUS_OFFLOAD_PAUSE until nic2 came back, for ever if it did
not."""

from __future__ import annotations

from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.ndis.lifecycle import Phase
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_mux_crossing_moves import _cross, _recover_and_close

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
    # A's connections are still uploading above: its terminate waits for the copy (§9 item 8)
    uploading = [c for c in conns if host.tcbs[c].state == "uploading"]
    assert uploading, {c: host.tcbs[c].state for c in conns}
    conn, reply = _offload_new(rig, conns, replies)
    assert reply.done and reply.error is None, (reply, mux.leftovers())
    assert host.tcbs[conn].state == "offloaded"
    assert not mux.paused_above
    assert [c for c in conns if host.tcbs[c].state == "uploading"] == uploading
    assert len(mux.held_terminates) == 1
    assert rig.problems() == []
    _recover_and_close(rig, mux, conns, replies)  # nic2 back at last: everything drains
