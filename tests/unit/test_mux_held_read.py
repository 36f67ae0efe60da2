"""A read on a connection whose peer reset it is answered while a failed NIC of a teaming MUX
holds the offload of its neighbor's copy (`MuxCall.held`).

In the crossing moves (test_mux_crossing_moves, test_mux_held_pause) nic2 holds the offload of
a copy of neighbor A until its RESUME (spec §5.5), and a terminate naming A completes above only
once that copy has gone (spec §9 item 8); the MUX cannot complete it sooner (spec §9 item 1).
The host terminates connections in a call of their own, their path and neighbor in a later one
once they are back (spec §3.1, §5.5: "same or later calls"), so A's connections are the host's
again at once (spec §3.6) and a read gets the peer's bytes, then the reset (spec §4.2), while
nic2 stays failed. Terminated with A in one tree, they stayed uploading for as long as nic2 was
out, and a read on them waited as long: for ever if nic2 never came back.

Only A's terminate waits for nic2 now: with nic2 never back, the host and the MUX keep A (and
its path) on its way out, and nothing else; closing the connections frees them."""

from __future__ import annotations

from chimneyd.ndis.lifecycle import Phase
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_next_hop_interleavings import _check_drained
from tests.unit.test_mux_crossing_moves import _recover_and_close
from tests.unit.test_mux_held_pause import _two_nics_back

#: the peer of the connections under neighbor A (path 1 of the crossing moves, moved back to A)
UNDER_A = ("127.0.0.1", 80)


def _under_a(rig: HostRig, conns: list[int]) -> list[int]:
    return [c for c in conns if rig.host.tcbs[c].wire.remote == UNDER_A]


def test_a_read_on_a_reset_connection_is_answered_while_the_failed_nic_stays_out() -> None:
    rig, mux, conns, replies = _two_nics_back()
    host = rig.host
    under_a = _under_a(rig, conns)
    assert under_a
    # A's terminate still waits for nic2's copy (spec §9 item 8); its connections do not
    assert len(mux.held_terminates) == 1, mux.leftovers()
    # the host's again (or offloaded again since the RESUME), none uploading (spec §3.6)
    assert not [c for c in under_a if host.tcbs[c].state == "uploading"], {
        c: host.tcbs[c].state for c in conns
    }
    conn = under_a[0]
    tcb = host.tcbs[conn]
    tcb.wire.peer_send(b"before the reset")
    tcb.wire.peer_reset()
    rig.run()
    read = rig.call(host.app_recv, conn, 100, False)
    assert read.done and read.value == b"before the reset", read
    again = rig.call(host.app_recv, conn, 100, False)
    assert again.done and again.error is not None and "reset" in str(again.error), again
    assert len(mux.held_terminates) == 1, mux.leftovers()  # nic2 is still out
    assert rig.problems() == []
    _recover_and_close(rig, mux, conns, replies)  # nic2 back: every table drains


def test_with_the_failed_nic_never_back_closing_frees_the_connections() -> None:
    rig, mux, conns, replies = _two_nics_back()
    host = rig.host
    for conn in conns:
        close = rig.call(host.app_close, conn)
        assert close.done and close.error is None, (conn, close)
    assert all(r.done for r in replies), replies
    assert not host.tcbs, host.tcbs
    assert rig.problems() == []
    # what is left waits only for nic2: A's terminate, held at the MUX for its copy there,
    # and A and its path at the host, on their way out (TERMINATING)
    assert len(mux.held_terminates) == 1, mux.leftovers()
    left = {k: v for k, v in host.leftovers().items() if v}
    assert set(left) <= {"objects", "objects_leaving"}, left
    assert all(o.lifecycle.phase is Phase.TERMINATING for o in host.all_objects()), [
        (o.key, o.lifecycle.phase) for o in host.all_objects()
    ]
    rig.targets["nic2"].recover_adapter()
    rig.run()
    assert not mux.held_terminates, mux.leftovers()
    assert rig.problems() == []
    assert not any(host.leftovers().values()), host.leftovers()
    assert not any(mux.leftovers().values()), mux.leftovers()
    _check_drained(rig)


def test_a_read_posted_before_the_bytes_gets_them_while_the_failed_nic_stays_out() -> None:
    rig, mux, conns, _replies = _two_nics_back()
    conn = _under_a(rig, conns)[0]
    read = Reply()
    rig.host.app_recv(conn, 100, False, read)
    rig.run()
    assert not read.done, read  # nothing came from the peer yet
    wire = rig.host.tcbs[conn].wire
    wire.peer_send(b"late")
    rig.run()
    assert read.done and read.value == b"late", read
    assert len(mux.held_terminates) == 1, mux.leftovers()
