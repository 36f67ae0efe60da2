"""Forwarded urgent data (spec §4.6, §5.2): the earliest urgent byte of a forward is where the
target stops delivering through the chimney, whichever URG segment came first."""

from __future__ import annotations

from chimneyd.drivers.segment import TH_ACK, TH_URG
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from tests.unit.test_target_ndis_rules import Conn, _segment

URGENT = (TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.ReceivedUrgentData)


def test_urgent_data_arriving_before_the_first_urgent_segment_is_not_delivered() -> None:
    """One forward carrying two segments with URG, both ahead of RcvNxt (a gap before them):
    the first, at offset 10, sets where holding starts (receive.urgent: `urgent_at`); the
    second, at 5, is urgent data too, but `urgent_at` is set only once, so it lies before
    that point and, once the gap fills from the socket, is delivered through the chimney as
    ordinary data (spec §5.2: urgent data makes the target ask for the upload, and goes to
    the host by the ordinary path). A later forward is refused UPLOAD_IN_PROGRESS, so only
    segments of the same forward call get through this way."""
    c = Conn().offload()
    # one forward, two segments (the host forwards what it has in one call, spec §4.6)
    (fwd, *_) = c.top.forward(
        c.handle,
        _segment(c, 10, TH_URG | TH_ACK, b"later"),
        _segment(c, 5, TH_URG | TH_ACK, b"URGNT"),
    )
    c.st.run()
    assert c.events() == [URGENT]
    c.wire.peer_send(b"first")  # the gap, offsets 0-4, from the socket
    c.st.run()
    got = c.top.received_data(c.handle)
    print("delivered through the chimney:", got, "forward:", fwd.status)
    assert b"URGNT" not in got, f"urgent data delivered through the chimney: {got!r}"
