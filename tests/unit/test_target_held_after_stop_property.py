"""A property of what a target does with the segments after it stopped processing a connection
(docs/spec.md §4.6, §5.2): whatever follows a mandatory upload request in the same forward —
data, urgent data, RSTs, SYNs, anywhere in the sequence space — and whether the socket then
resets, the target judges none of it: it asks for nothing more, aborts nothing, answers
nothing, takes every segment (SUCCESS), and at the terminate hands every SYN up the ordinary
path once and the RST, if one came by either road, once.

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.drivers.segment import TH_ACK, TH_RST, TH_SYN, TH_URG
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from tests.unit.test_target_after_mandatory_request import _terminate
from tests.unit.test_target_challenge_acks import _answers
from tests.unit.test_target_ndis_rules import Conn, _segment

E = TcpOffloadEventType
#: the flags of each kind of later segment, and whether it carries bytes
KINDS = {
    "data": (TH_ACK, True),
    "urgent": (TH_URG | TH_ACK, True),
    "rst": (TH_RST | TH_ACK, False),
    "syn": (TH_SYN, False),
}
later_segments = st.lists(
    st.tuples(
        st.sampled_from(sorted(KINDS)),
        st.one_of(st.integers(-50, 200), st.just(1 << 30)),  # behind, in the window, far off
        st.binary(min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cause=st.sampled_from(["urgent", "syn_at_rcvnxt"]),
    later=later_segments,
    socket_reset=st.booleans(),
)
def test_nothing_after_the_stop_is_judged_and_every_syn_and_one_rst_reach_the_host(
    cause: str, later: list[tuple[str, int, bytes]], socket_reset: bool
) -> None:
    c = Conn().offload()
    first = _segment(c, 0, TH_URG | TH_ACK, b"!") if cause == "urgent" else _segment(c, 0, TH_SYN)
    segments = [first]
    for kind, offset, payload in later:
        flags, carries = KINDS[kind]
        segments.append(_segment(c, offset, flags, payload if carries else b""))
    fwds = c.top.forward(c.handle, *segments)
    c.st.run()
    if socket_reset:
        c.wire.peer_reset()
        c.st.run()
    assert [f.status for f in fwds] == [S.NDIS_STATUS_SUCCESS] * len(segments)
    reason = (
        TcpUploadReason.ReceivedUrgentData if cause == "urgent" else TcpUploadReason.UploadRequested
    )
    assert c.events() == [(E.TcpIndicateRetrieve, reason)], "something after the stop was judged"
    assert _answers(c) == {}, "an ACK counted after the stop"
    assert c.top.ordinary == [], "a segment went up before the terminate"
    _terminate(c)
    up = [(off, fl) for _, off, _, fl in c.top.ordinary]
    syns = sorted(off for off, fl in up if fl & TH_SYN)
    assert syns == sorted(off for kind, off, _ in later if kind == "syn"), up
    rsts = [off for off, fl in up if fl & TH_RST]
    came = socket_reset or any(kind == "rst" for kind, _, _ in later)
    assert len(rsts) == (1 if came else 0), up
    assert c.st.drain_problems() == []
