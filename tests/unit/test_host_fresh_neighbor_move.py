"""A next-hop change (spec §3.4 (b)) to a neighbor whose terminate a teaming MUX holds back
for a failed NIC's copy (spec §5.5, §9 item 8) waits for that terminate (`state_ops.
_move_when_settled`, `moves_waiting`): with the NIC out for good it is never answered."""

from __future__ import annotations

from chimneyd.testing.hostrig import Reply
from tests.unit.test_host_next_hop_interleavings import HOPS
from tests.unit.test_mux_crossing_moves import _recover_and_close
from tests.unit.test_mux_held_pause import UNDER_B, _two_nics_back


def test_a_move_to_a_neighbor_whose_terminate_a_failed_nic_holds_is_answered() -> None:
    rig, mux, conns, replies = _two_nics_back()
    host = rig.host
    # under neighbor B (A's connections are offloaded again too: they went up in a call of
    # their own, `terminate.flush_terminates`, and came back down at the RESUME)
    [conn] = [c for c in conns if host.tcbs[c].wire.remote == UNDER_B]
    assert host.tcbs[conn].state == "offloaded"
    moved = Reply()
    replies.append(moved)
    host.app_update_object(conn, "path", {"NextHop": HOPS[0]}, moved)  # to A, terminating
    rig.run()
    assert moved.done and moved.error is None, (moved, host.leftovers())
    path = host.tcbs[conn].path
    assert path is not None and path.parent is not None and path.parent.key[2] == HOPS[0]
    assert rig.problems() == []
    _recover_and_close(rig, mux, conns, replies)
