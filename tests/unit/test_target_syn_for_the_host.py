"""Forwarded SYNs the target does not process, which must still reach the host (docs/spec.md
§4.6, §4.7, §5.2): one later in a forward than a mandatory upload request (after urgent data or
a SYN at RcvNxt), and one on a connection in TIME_WAIT.

After a mandatory reason the target stops processing the connection (the
`NdisTcpOffloadEventHandler` page) and queues every later segment for the ordinary path at the
terminate ("Handling the Reception of Urgent Data"): a SYN is such a segment, as the RST held
there already is (tests/unit/test_target_after_mandatory_request.py). "Handling the Reception
of SYN Segments" gives a SYN on a connection in TIME_WAIT to the host stack (spec §4.7), and a
connection entering TIME_WAIT should be uploaded anyway (spec §5.2): the target asks for the
upload on entering it (tests/unit/test_target_time_wait.py), so a SYN comes while the terminate
is on its way. The host takes a segment off the ordinary path for itself only while the
connection's terminate is under way (spec §3.6.4: otherwise it forwards it down again), so the
target holds the SYN for the terminate: it reaches the host once, with no round trip between
the two.

The protocol stub plays the host and a MemoryWire the peer; the last test has the real host
stack above the target (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.segment import TH_ACK, TH_FIN, TH_SYN, TH_URG
from chimneyd.drivers.target.contexts import TcpContext
from chimneyd.drivers.target.target import OffloadTarget
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpDisconnectFlags, TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.hostrig import HostRig
from tests.unit.test_target_after_mandatory_request import _terminate
from tests.unit.test_target_challenge_acks import _answers
from tests.unit.test_target_ndis_rules import Conn, _segment

E = TcpOffloadEventType
REQUESTED = (E.TcpIndicateRetrieve, TcpUploadReason.UploadRequested)
URGENT = (E.TcpIndicateRetrieve, TcpUploadReason.ReceivedUrgentData)
#: where a SYN lies, from RcvNxt
WHERE = {"at_rcvnxt": 0, "in_window": 100, "outside": 1 << 30}


def _context(c: Conn) -> TcpContext:
    (nic,) = c.st.under_test
    assert isinstance(nic, OffloadTarget)
    (ctx,) = nic.connections()
    return ctx


def _syns_up(c: Conn) -> list[tuple[int, int]]:
    """The SYNs that went up the ordinary path, as (offset, flags)."""
    return [(off, fl) for _, off, _, fl in c.top.ordinary if fl & TH_SYN]


# -- a SYN after the stop in the same forward (spec §4.6, §5.2) ----------------------------------
@pytest.mark.parametrize("where", list(WHERE), ids=list(WHERE))
@pytest.mark.parametrize("cause", ["urgent", "syn_at_rcvnxt"])
def test_a_syn_after_the_stop_in_the_forward_reaches_the_host_at_the_terminate(
    cause: str, where: str
) -> None:
    """One forward: a segment that asks for a mandatory upload, then a SYN. The target has
    stopped processing: the SYN gives nothing up and is answered with nothing, and it is not
    lost either: it goes up the ordinary path at the terminate, after what the target held
    before it, once, for the host to process after the upload."""
    c = Conn().offload()
    first = _segment(c, 0, TH_URG | TH_ACK, b"!") if cause == "urgent" else _segment(c, 0, TH_SYN)
    fwds = c.top.forward(c.handle, first, _segment(c, WHERE[where], TH_SYN))
    c.st.run()
    assert [f.status for f in fwds] == [S.NDIS_STATUS_SUCCESS] * 2
    assert c.events() == [URGENT if cause == "urgent" else REQUESTED]
    assert _answers(c) == {}
    assert c.top.ordinary == []  # nothing up before the terminate: the host would forward it
    _terminate(c)  # the whole tree: nothing left offloaded for the drain check
    assert _syns_up(c) == [(WHERE[where], TH_SYN)], "the SYN after the stop did not reach the host"
    assert c.top.ordinary[-1][3] & TH_SYN, "the SYN went up before what was held ahead of it"
    assert c.st.drain_problems() == []


# -- a SYN in TIME_WAIT (spec §4.7, §5.2) ------------------------------------------------------
def _in_fin_wait_2() -> Conn:
    """An offloaded connection in FIN_WAIT_2: our FIN sent and acknowledged."""
    c = Conn().offload()
    graceful = c.top.disconnect(c.handle, TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE)
    c.st.run()
    c.wire.ack()
    c.st.run()
    assert graceful.status == S.NDIS_STATUS_SUCCESS
    assert _context(c).lifecycle.tcp is TcpState.FIN_WAIT_2
    return c


@pytest.mark.parametrize("where", list(WHERE), ids=list(WHERE))
def test_a_syn_in_time_wait_goes_up_to_the_host_at_the_upload_it_asks_for(where: str) -> None:
    """A SYN in TIME_WAIT, whatever its sequence number, is the host stack's. It reaches the
    target in the forward whose FIN took the connection there (later forwards are refused:
    the FIN asked for the upload, spec §5.2, §3.6.4): the target answers nothing and asks for
    nothing more, holding the SYN; nothing goes up before the terminate (the host would
    forward it straight back), and at the terminate the SYN goes up the ordinary path, once."""
    c = _in_fin_wait_2()
    before = c.events()
    rcv_nxt = _context(c).rx.rcv_nxt
    fin, syn = _segment(c, rcv_nxt, TH_FIN | TH_ACK), _segment(c, rcv_nxt + WHERE[where], TH_SYN)
    fwds = c.top.forward(c.handle, fin, syn)
    c.st.run()
    assert [f.status for f in fwds] == [S.NDIS_STATUS_SUCCESS] * 2
    assert _context(c).lifecycle.tcp is TcpState.TIME_WAIT
    assert _answers(c) == {}
    new = c.events()[len(before) :]
    assert new.count(REQUESTED) == 1 and new[-1] == REQUESTED, new  # the FIN's, not the SYN's
    assert c.top.ordinary == []
    _terminate(c)  # the whole tree: nothing left offloaded for the drain check
    assert _syns_up(c) == [(rcv_nxt + WHERE[where], TH_SYN)]
    assert c.st.drain_problems() == []


def test_a_syn_in_time_wait_reaches_the_real_host_once_with_no_round_trip() -> None:
    """The real host above the target: a SYN forwarded on a connection in TIME_WAIT (the host
    forwards what it reads while the connection is offloaded, spec §4.6: here the peer's FIN
    and a SYN after it, in one forward) comes back up to it at the upload the FIN asked for,
    and is not forwarded down again: the deliveries come to an end, the connection is
    uploaded in TIME_WAIT, nothing is left queued anywhere."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    rig.half_close(conn, wire)
    (ctx,) = rig.contexts()
    assert ctx.lifecycle.tcp is TcpState.FIN_WAIT_2
    rig.forward(conn, (0, TH_FIN | TH_ACK), (0, TH_SYN))
    for _ in range(1000):  # bounded: a target and a host that pass it round never stop
        rig.scheduler.run()
        rig.host.after_batch()
        if not rig.scheduler.queue:
            break
    assert not rig.scheduler.queue, "the SYN goes round between the host and the target"
    # one forward down, one segment up the ordinary path (the SYN: nothing else was held); a
    # SYN passed up at once, before the terminate, comes down again in a second forward
    assert len(rig.scheduler.delivered(rig.target, "MiniportTcpOffloadForward")) == 1
    assert rig.target.stats.calls.get("NdisMIndicateReceiveNetBufferLists") == 1
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.phase.name == "IDLE", "not uploaded"
    assert tcb.lifecycle.tcp is TcpState.TIME_WAIT
    assert rig.problems() == []
