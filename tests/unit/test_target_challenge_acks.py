"""The ACKs a target would answer forwarded segments with, counted (docs/spec.md §5.2 [EMU]).

Microsoft's page "Requirements for TCP Chimney NICs for Blind-Reset Attacks" has the target
answer an RST in the window but not at RcvNxt with one challenge ACK per RST validation period
(until an acceptable segment arrives), a SYN in the window but out of order with a challenge
ACK at most once per 3 s, and a SYN outside the window with an ACK; an RST outside the window is
dropped silently. "Handling the Reception of Urgent Data" has a URG segment whose sequence
number or ACK fails the checks discarded, the connection carrying on (RFC 793 answers such an
unacceptable segment with an ACK). chimneyd's target cannot put an ACK of its own on the
kernel's socket: it counts each one it would send in its `unsent_acks` stats (`challenge_rst`,
`challenge_syn`, `ack_syn`, `ack_urg`; not NDIS calls, so not in `calls`), and the connection
carries on.

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.segment import TH_ACK, TH_RST, TH_SYN, TH_URG, build_segment
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType
from tests.unit.test_target_ndis_rules import Conn, _segment


def _answers(c: Conn) -> dict[str, int]:
    """The ACKs the target counted as answered, by kind (only those it counted): its
    `unsent_acks` stats, not NDIS calls (docs/metrics.md)."""
    (nic,) = c.st.under_test
    unsent: dict[str, int] = nic.stats.as_map()["unsent_acks"]
    return {k: n for k, n in unsent.items() if n}


def _forward(c: Conn, offset: int, flags: int, payload: bytes = b"") -> None:
    (fwd,) = c.top.forward(c.handle, _segment(c, offset, flags, payload))
    c.st.run()
    assert fwd.status == S.NDIS_STATUS_SUCCESS


def test_an_rst_in_the_window_off_rcvnxt_gets_one_challenge_ack_per_validation_period() -> None:
    """One challenge ACK for the first in-window RST not at RcvNxt; none for a second while no
    acceptable segment came (the RST validation period); one again once the peer's data
    arrived. The connection is not aborted, and stays usable."""
    c = Conn().offload()
    _forward(c, 100, TH_RST | TH_ACK)
    assert _answers(c) == {"challenge_rst": 1}
    _forward(c, 200, TH_RST | TH_ACK)
    assert _answers(c) == {"challenge_rst": 1}, "a second challenge ACK in one period"
    c.wire.peer_send(b"acceptable")  # an acceptable segment ends the validation period
    c.st.run()
    _forward(c, 300, TH_RST | TH_ACK)
    assert _answers(c) == {"challenge_rst": 2}
    assert c.events() == []  # never TcpIndicateAbort
    (nbl,) = c.send(b"still usable")
    c.wire.ack()
    c.st.run()
    assert nbl.status == S.NDIS_STATUS_SUCCESS


@pytest.mark.parametrize("offset", [-1000, 1 << 30], ids=["behind", "far"])
def test_an_rst_outside_the_window_is_dropped_silently(offset: int) -> None:
    """An RST outside the receive window gets no answer at all, and aborts nothing."""
    c = Conn().offload()
    _forward(c, offset, TH_RST | TH_ACK)
    assert _answers(c) == {}
    assert c.events() == []


def test_an_rst_at_rcvnxt_aborts_and_gets_no_challenge_ack() -> None:
    """The acceptable RST: TcpIndicateAbort, no challenge ACK."""
    c = Conn().offload()
    _forward(c, 0, TH_RST | TH_ACK)
    assert c.events() == [(TcpOffloadEventType.TcpIndicateAbort, 0)]
    assert _answers(c) == {}


def test_a_syn_in_the_window_out_of_order_gets_a_challenge_ack_at_most_every_3_s() -> None:
    """A SYN in the window but not at RcvNxt: a challenge ACK, then none for 3 s however many
    come, then one again; the connection is not given up."""
    c = Conn().offload()
    _forward(c, 100, TH_SYN)
    _forward(c, 101, TH_SYN)
    assert _answers(c) == {"challenge_syn": 1}
    c.st.advance(2.9)
    _forward(c, 102, TH_SYN)
    assert _answers(c) == {"challenge_syn": 1}, "a second challenge ACK within 3 s"
    c.st.advance(0.2)
    _forward(c, 103, TH_SYN)
    assert _answers(c) == {"challenge_syn": 2}
    assert c.events() == []


@pytest.mark.parametrize("offset", [-1000, 1 << 30], ids=["behind", "far"])
def test_a_syn_outside_the_window_gets_an_ack_each_time(offset: int) -> None:
    """A SYN outside the window: an ACK for each, not throttled (the page does not require
    it), and the connection carries on."""
    c = Conn().offload()
    _forward(c, offset, TH_SYN)
    _forward(c, offset, TH_SYN)
    assert _answers(c) == {"ack_syn": 2}
    assert c.events() == []


def test_a_urg_segment_failing_its_checks_is_dropped_with_an_ack() -> None:
    """A URG segment outside the window, or acknowledging bytes never sent, is discarded and
    the connection carries on as before (no upload request, nothing held or delivered); the
    target would answer each with an ACK."""
    c = Conn().offload()
    w = c.wire
    far = _segment(c, 1 << 30, TH_URG | TH_ACK, b"!")
    bad_ack = build_segment(  # the ACK bit on: without it there is no ACK number to judge
        w.remote[1],
        w.local[1],
        seq(w.irs, 0),
        seq(w.isn, w.bytes_written + 100),
        TH_URG | TH_ACK,
        b"!",
    )
    c.top.forward(c.handle, far, bad_ack)
    c.st.run()
    assert c.events() == []
    assert _answers(c) == {"ack_urg": 2}
    c.wire.peer_send(b"ok")
    c.st.run()
    assert c.top.received_data(c.handle) == b"ok"


def test_an_acceptable_urg_segment_gets_no_ack() -> None:
    """The urgent data that passes its checks is not acknowledged (the upload reasons table
    says so): the target counts no ACK for it."""
    c = Conn().offload()
    _forward(c, 0, TH_URG | TH_ACK, b"!")
    assert _answers(c) == {}
