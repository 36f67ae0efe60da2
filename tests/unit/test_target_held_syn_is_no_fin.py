"""A SYN the target holds after it stopped processing a connection (docs/spec.md §5.2) goes up
the ordinary path at the terminate as a SYN: a FIN bit on that segment is no news of the
peer's FIN.

RFC 793 ("SEGMENT ARRIVES", which "Required and Suggested TCP/IP Protocol Support" has a TOE
NIC conform to) checks the SYN bit before the FIN bit, and a SYN ends the segment's
processing there (an error in the window, an ACK outside it): its FIN is never taken. The target
takes none when it judges a SYN itself (`forwarded_syn`); the host's ordinary path (spec §4.7)
reads the flags it is handed, and took the FIN of a held SYN for the peer's: the application
read an end of stream on a connection whose peer never closed it, and the connection came
back to the host in CLOSE_WAIT.

The real host stack over the target, on a MemoryWire (no sockets, no sleeps); the last test has
the protocol stub play the host."""

from __future__ import annotations

import pytest

from chimneyd.drivers.segment import TH_ACK, TH_FIN, TH_SYN, TH_URG
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.testing.hostrig import HostRig
from tests.unit.test_target_after_mandatory_request import _terminate
from tests.unit.test_target_ndis_rules import Conn, _segment

#: where the SYN with FIN lies, from RcvNxt
WHERE = {"at_rcvnxt": 0, "in_window": 3, "far": 1 << 30}


@pytest.mark.parametrize("where", list(WHERE), ids=list(WHERE))
def test_a_held_syn_with_fin_is_no_end_of_stream_for_the_application(where: str) -> None:
    """One forward: a SYN at RcvNxt (the target asks for the upload and stops processing), then
    a SYN with FIN, which it holds for the terminate. The peer sends bytes before the upload and
    after it; its socket is open all along. The application reads all of them and no end of
    stream, and the connection comes back ESTABLISHED, not CLOSE_WAIT; the peer's own FIN,
    when it comes, is the end (one the host took from the SYN, ahead of it, hid it)."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    n = ctx.rx.rcv_nxt
    _query, held = rig.query_held_below(conn)  # the terminate waits for it (spec §3.1)
    syn_fin = n + WHERE[where] if where != "far" else WHERE[where]
    rig.forward(conn, (n, TH_SYN), (syn_fin, TH_SYN | TH_FIN))
    rig.run()
    wire.peer_send(b"before the upload ")
    rig.run()
    rig.release(held)
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.phase.name == "IDLE", "not uploaded"
    wire.peer_send(b"and after it")
    rig.run()
    read = rig.call(rig.host.app_recv, conn, 64, False)
    assert read.value == b"before the upload and after it", read
    assert tcb.lifecycle.tcp is TcpState.ESTABLISHED, "the SYN's FIN was taken for the peer's"
    assert "TcpIndicateDisconnect" not in rig.event_names(conn), rig.events
    again = rig.call(rig.host.app_recv, conn, 64, False)
    assert not again.done, f"an end of stream the peer never sent: {again}"
    wire.peer_fin()
    rig.run()
    assert again.value == b"", f"the peer's FIN is no end of stream: {again}"
    assert rig.event_names(conn).count("TcpIndicateDisconnect") == 1, rig.events
    assert rig.problems() == []


@pytest.mark.parametrize("cause", ["urgent", "syn_at_rcvnxt"])
def test_a_held_syn_goes_up_as_a_syn_without_its_fin(cause: str) -> None:
    """At the target's edge: the held SYN goes up the ordinary path once, with SYN and without
    FIN, whatever caused the stop before it."""
    c = Conn().offload()
    first = _segment(c, 0, TH_URG | TH_ACK, b"!") if cause == "urgent" else _segment(c, 0, TH_SYN)
    c.top.forward(c.handle, first, _segment(c, 5, TH_SYN | TH_FIN | TH_ACK))
    c.st.run()
    _terminate(c)
    syns = [(off, fl) for _, off, _, fl in c.top.ordinary if fl & TH_SYN]
    assert syns == [(5, TH_SYN | TH_ACK)], syns
    assert c.st.drain_problems() == []
