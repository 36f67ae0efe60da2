"""Segments later in a forward than an acceptable RST (docs/spec.md §4.6, §5.1): the RST
aborted the connection, so they are not processed, and they complete
`NDIS_STATUS_REQUEST_ABORTED` — the status the forward page's "not processed because an RST
arrived" case has (the host drops them), as a forward arriving after the RST is refused
whole. Each NBL completes once, in the one `NdisTcpOffloadForwardComplete`.

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

from chimneyd.drivers.segment import TH_ACK, TH_PSH, TH_RST, TH_URG
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType
from tests.unit.test_target_ndis_rules import Conn, _segment

ABORT = (TcpOffloadEventType.TcpIndicateAbort, 0)


def test_segments_after_an_acceptable_rst_in_the_forward_complete_request_aborted() -> None:
    c = Conn().offload()
    fwds = c.top.forward(
        c.handle,
        _segment(c, 0, TH_RST | TH_ACK),
        _segment(c, 0, TH_ACK | TH_PSH, b"late"),
        _segment(c, 4, TH_URG | TH_ACK, b"!"),
    )
    c.st.run()
    assert [f.status for f in fwds] == [
        S.NDIS_STATUS_SUCCESS,
        S.NDIS_STATUS_REQUEST_ABORTED,
        S.NDIS_STATUS_REQUEST_ABORTED,
    ]
    assert [f.tcp_offload_bytes_transferred for f in fwds[1:]] == [0, 0]
    assert c.events() == [ABORT]
    assert c.top.received_data(c.handle) == b""
    # the same status a forward after the RST gets, refused whole
    (later,) = c.top.forward(c.handle, _segment(c, 0, TH_ACK | TH_PSH, b"later"))
    c.st.run()
    assert later.status == S.NDIS_STATUS_REQUEST_ABORTED


def test_segments_before_the_rst_are_processed() -> None:
    """The RST aborts from where it lies in the forward: what came before it was processed."""
    c = Conn().offload()
    fwds = c.top.forward(
        c.handle,
        _segment(c, 0, TH_ACK | TH_PSH, b"early"),
        _segment(c, 5, TH_RST | TH_ACK),
    )
    c.st.run()
    assert [f.status for f in fwds] == [S.NDIS_STATUS_SUCCESS] * 2
    assert c.events() == [ABORT]
