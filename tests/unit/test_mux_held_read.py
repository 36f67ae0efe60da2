"""How long a read waits on a connection whose upload a teaming MUX holds for a neighbor copy
on a failed NIC (`MuxCall.held`), and what it gets: the question whether the MUX should answer
for that NIC.

In the crossing moves (test_mux_crossing_moves, test_mux_held_pause) the host's terminate of
neighbor A names A's connections too; their parts are back from their NICs at once, but the
terminate completes above only once nic2, which holds the offload of A's copy until its RESUME
(spec §5.5), is back and that copy has gone (spec §9 item 8: nothing below outlives the
completion). Until the completion the connection is not the host's again (spec §3.6), and the
bytes the peer sent before resetting it are in its socket, which nobody reads: a read waits
for as long as nic2 stays failed, however long that is, and then gets those bytes, then the
reset (spec §4.2).

The MUX cannot answer it sooner: a terminate has one completion (spec §9 item 1), and
completed before the copy has gone, it would be followed by that copy's offload and what nic2
indicates about it, on a neighbor the host has let go (docs/architecture.md, Teaming). What
would let such reads go is the host's: terminating the connections in a call of their own,
before their path and neighbor (spec §5.5 allows the objects "in the same or later calls")."""

from __future__ import annotations

from chimneyd.testing.hostrig import Reply
from tests.unit.test_mux_crossing_moves import _recover_and_close
from tests.unit.test_mux_held_pause import _two_nics_back


def test_a_read_on_a_reset_connection_whose_upload_is_held_waits_for_the_failed_nic() -> None:
    rig, mux, conns, replies = _two_nics_back()
    host = rig.host
    uploading = [c for c in conns if host.tcbs[c].state == "uploading"]
    assert uploading and len(mux.held_terminates) == 1, mux.leftovers()
    conn = uploading[0]
    tcb = host.tcbs[conn]
    tcb.wire.peer_send(b"before the reset")
    tcb.wire.peer_reset()
    rig.run()
    read = Reply()
    host.app_recv(conn, 100, False, read)
    rig.run()
    # an hour of the clock changes nothing: nic2's RESUME is all it waits for
    rig.advance(3600)
    assert not read.done, read
    assert tcb.state == "uploading" and len(mux.held_terminates) == 1
    rig.targets["nic2"].recover_adapter()
    rig.run()
    assert read.done and read.value == b"before the reset", read
    again = rig.call(host.app_recv, conn, 100, False)
    assert again.done and again.error is not None and "reset" in str(again.error), again
    _recover_and_close(rig, mux, conns, replies)
