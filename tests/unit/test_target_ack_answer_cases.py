"""Cases of the ACKs a target would answer forwarded segments with (docs/spec.md §5.2) that
tests/unit/test_target_challenge_acks.py does not cover: what ends an RST validation period,
a SYN in TIME_WAIT, segments after the target stopped processing the connection, and
a URG segment without the ACK bit.

Microsoft's "Requirements for TCP Chimney NICs for Blind-Reset Attacks" ends the RST
validation period when an acceptable segment arrives; "Handling the Reception of SYN Segments"
gives a SYN in TIME_WAIT to the host stack, and has one in order in any other state upload the
connection, one out of order trigger the mitigation. "Handling the Reception of Urgent Data"
has the target acknowledge no segment after urgent data it accepted, and a mandatory upload
request means the target processes the connection no more (spec §5.2). RFC 793 drops a
segment whose ACK bit is off without an answer.

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.segment import TH_ACK, TH_FIN, TH_RST, TH_SYN, TH_URG, build_segment
from chimneyd.drivers.target.contexts import TcpContext
from chimneyd.drivers.target.target import OffloadTarget
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpDisconnectFlags, TcpOffloadEventType, TcpUploadReason
from tests.unit.test_target_challenge_acks import _answers, _forward
from tests.unit.test_target_ndis_rules import Conn, _segment

RETRIEVE = TcpOffloadEventType.TcpIndicateRetrieve


def _context(c: Conn) -> TcpContext:
    (nic,) = c.st.under_test
    assert isinstance(nic, OffloadTarget)
    (ctx,) = nic.connections()
    return ctx


def test_an_acknowledgement_of_sent_data_ends_the_rst_validation_period() -> None:
    """The peer's ACK of data the target sent is an acceptable segment, though RcvNxt does not
    move: after it, the next in-window RST off RcvNxt gets a challenge ACK again. A target that
    only sends would otherwise answer one RST for the connection's whole life."""
    c = Conn().offload()
    _forward(c, 100, TH_RST | TH_ACK)
    assert _answers(c) == {"challenge_rst": 1}
    (nbl,) = c.send(b"data")
    c.wire.ack()  # the peer acknowledges it: an acceptable segment arrived
    c.st.run()
    assert nbl.status == S.NDIS_STATUS_SUCCESS
    _forward(c, 100, TH_RST | TH_ACK)
    assert _answers(c) == {"challenge_rst": 2}


def test_a_forwarded_in_window_segment_ahead_of_rcvnxt_ends_the_rst_validation_period() -> None:
    """An in-window data segment ahead of RcvNxt is acceptable too (held until the gap fills):
    the next in-window RST gets a challenge ACK again."""
    c = Conn().offload()
    _forward(c, 100, TH_RST | TH_ACK)
    _forward(c, 10, TH_ACK, b"ahead")
    assert _context(c).rx.rcv_nxt == 0  # held: RcvNxt did not move
    _forward(c, 200, TH_RST | TH_ACK)
    assert _answers(c) == {"challenge_rst": 2}


@pytest.mark.parametrize("where", ["at_rcvnxt", "in_window", "outside"])
def test_a_syn_in_time_wait_is_the_host_stack_s_and_gets_no_answer(where: str) -> None:
    """ "Handling the Reception of SYN Segments": a SYN on a connection in TIME_WAIT goes to
    the host stack, whatever its sequence number; the blind-reset answers are for the other
    states. The host forwarded it, and its kernel answered the real one [EMU]: the target
    counts no ACK. Entering TIME_WAIT asks for the upload (`UploadRequested`, spec §5.2,
    tests/unit/test_target_time_wait.py), after which later forwards are refused for the host
    to process after the upload (spec §3.6.4): the SYN reaches a target in TIME_WAIT in the
    forward whose FIN took it there, and asks for nothing more; it reaches the host at the
    terminate (tests/unit/test_target_syn_for_the_host.py)."""
    c = Conn().offload()
    graceful = c.top.disconnect(c.handle, TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE)
    c.st.run()
    c.wire.ack()  # our FIN acknowledged: FIN_WAIT_2
    c.st.run()
    assert graceful.status == S.NDIS_STATUS_SUCCESS
    ctx = _context(c)
    before = c.events()
    offset = {"at_rcvnxt": ctx.rx.rcv_nxt, "in_window": ctx.rx.rcv_nxt + 100, "outside": 1 << 30}
    fwds = c.top.forward(
        c.handle, _segment(c, ctx.rx.rcv_nxt, TH_FIN | TH_ACK), _segment(c, offset[where], TH_SYN)
    )
    c.st.run()
    assert [f.status for f in fwds] == [S.NDIS_STATUS_SUCCESS] * 2
    assert ctx.lifecycle.tcp is TcpState.TIME_WAIT
    assert _answers(c) == {}
    new = c.events()[len(before) :]
    assert new[-1:] == [(RETRIEVE, TcpUploadReason.UploadRequested)], new  # the FIN's, once
    assert new.count((RETRIEVE, TcpUploadReason.UploadRequested)) == 1, new


#: Segments that would be answered with an ACK on a connection still processed.
_ANSWERED = {
    "rst_in_window": (100, TH_RST | TH_ACK, b""),
    "syn_in_window": (100, TH_SYN, b""),
    "syn_outside": (1 << 30, TH_SYN, b""),
    "urg_outside": (1 << 30, TH_URG | TH_ACK, b"!"),
}


@pytest.mark.parametrize("cause", ["urgent", "syn_at_rcvnxt"])
@pytest.mark.parametrize("later", list(_ANSWERED), ids=list(_ANSWERED))
def test_no_ack_is_counted_after_a_mandatory_upload_request_earlier_in_the_forward(
    cause: str, later: str
) -> None:
    """One forward: first a segment that makes the target ask for a mandatory upload (urgent
    data, or a SYN at RcvNxt), then one that would be answered with an ACK. The target has
    stopped processing the connection (spec §5.2), and after urgent data it acknowledges no
    later segment: nothing is counted, and nothing aborts."""
    c = Conn().offload()
    first = _segment(c, 0, TH_URG | TH_ACK, b"!") if cause == "urgent" else _segment(c, 0, TH_SYN)
    offset, flags, payload = _ANSWERED[later]
    fwds = c.top.forward(c.handle, first, _segment(c, offset, flags, payload))
    c.st.run()
    assert [f.status for f in fwds] == [S.NDIS_STATUS_SUCCESS] * 2
    (event,) = c.events()
    assert event[0] is RETRIEVE
    assert _answers(c) == {}


def test_a_urg_segment_without_the_ack_bit_is_dropped_without_an_answer() -> None:
    """A URG segment in the window whose ACK bit is off carries no ACK to validate: RFC 793
    drops it without an answer, so the target asks for no upload, holds nothing and counts no
    ACK; the connection carries on."""
    c = Conn().offload()
    w = c.wire
    no_ack = build_segment(
        w.remote[1], w.local[1], seq(w.irs, 0), seq(w.isn, w.bytes_written), TH_URG, b"!"
    )
    (fwd,) = c.top.forward(c.handle, no_ack)
    c.st.run()
    assert fwd.status == S.NDIS_STATUS_SUCCESS
    assert c.events() == []
    assert _answers(c) == {}
    c.wire.peer_send(b"ok")
    c.st.run()
    assert c.top.received_data(c.handle) == b"ok"


def test_a_urg_segment_with_an_ack_of_bytes_never_sent_gets_an_ack() -> None:
    """With the ACK bit on and an ACK number past what was sent, RFC 793 answers with an ACK
    and drops the segment: counted, no upload."""
    c = Conn().offload()
    w = c.wire
    bad_ack = build_segment(
        w.remote[1],
        w.local[1],
        seq(w.irs, 0),
        seq(w.isn, w.bytes_written + 100),
        TH_URG | TH_ACK,
        b"!",
    )
    c.top.forward(c.handle, bad_ack)
    c.st.run()
    assert c.events() == []
    assert _answers(c) == {"ack_urg": 1}
