"""What a target does once it asked for a mandatory upload and so stopped processing the
connection (docs/spec.md §5.2): no advice on sends it will refuse, the next segment of the same
forward stops processing even when it is urgent data too, and an RST in that forward, or the
socket's own reset, is not processed but reaches the host at the terminate, once, after what the
target held.

The `NdisTcpOffloadEventHandler` page has a target stop processing the connection after a
mandatory reason; "Handling the Reception of Urgent Data" has it queue the urgent data and every
later segment and pass them up the ordinary path at the terminate; the page of
`NdisTcpOffloadForwardComplete` has the host process the segments a target did not process
because of the upload itself.

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.segment import TH_ACK, TH_RST, TH_SYN, TH_URG
from chimneyd.drivers.target import events
from chimneyd.drivers.target.contexts import TcpContext
from chimneyd.drivers.target.target import OffloadTarget
from chimneyd.ndis.blocks import BlockKind, OffloadBlock, walk
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from tests.unit.test_target_ndis_rules import Conn, _segment

E = TcpOffloadEventType
URGENT = (E.TcpIndicateRetrieve, TcpUploadReason.ReceivedUrgentData)
REQUESTED = (E.TcpIndicateRetrieve, TcpUploadReason.UploadRequested)


def _context(c: Conn) -> TcpContext:
    (nic,) = c.st.under_test
    assert isinstance(nic, OffloadTarget)
    (ctx,) = nic.connections()
    return ctx


def _terminate(c: Conn) -> OffloadBlock:
    root = c.top.reference_tree(c.tree, None, True, True, "delegated")
    c.top.terminate(root)
    c.st.run()
    (block,) = [b for b in walk(root) if b.kind is BlockKind.TCP]
    assert block.status == S.NDIS_STATUS_SUCCESS
    return block


# -- no send-backlog advice after a mandatory request (spec §5.2, §5.3) --------------------------
def _backlog_after(reason: TcpUploadReason) -> list[tuple[E, int]]:
    """The events after the target asked for an upload with `reason` and then heard the
    peer acknowledge a send, its preferred backlog having moved by far more than a factor
    of two, more than a second after the last indication (spec §5.3 damping)."""
    c = Conn().offload()
    c.st.advance(2.0)
    (first,) = c.send(b"x" * 100)
    c.wire.ack()
    c.st.run()
    assert first.status == S.NDIS_STATUS_SUCCESS
    assert [e for e, _ in c.events()] == [E.TcpIndicateSendBacklogChange]  # a live connection
    (sent,) = c.send(b"y" * 100)
    (nic,) = c.st.under_test
    assert isinstance(nic, OffloadTarget)
    events.request_upload(nic, _context(c), reason)
    c.st.run()
    c.wire.info.snd_cwnd *= 1000
    c.st.advance(2.0)
    c.wire.ack()
    c.st.run()
    assert sent.status == S.NDIS_STATUS_SUCCESS  # the acknowledged send completes either way
    return c.events()[1:]


def test_no_send_backlog_change_after_a_mandatory_upload_request() -> None:
    """The backlog indication tells the host how much to keep posted at the target; after a
    mandatory request the target processes the connection no more and refuses every new send
    (UPLOAD_IN_PROGRESS, spec §3.6.4). An acknowledgement still completes the send it covers
    (spec §5.2 [INF]), but raises no `TcpIndicateSendBacklogChange`."""
    after = _backlog_after(TcpUploadReason.UploadRequested)
    assert after == [REQUESTED], "a backlog change after the mandatory request"


def test_a_send_backlog_change_still_follows_an_optional_upload_request() -> None:
    """After an optional reason the target goes on as before (the host may keep the
    connection offloaded): its backlog advice too."""
    after = _backlog_after(TcpUploadReason.LowActivity)
    assert [e for e, _ in after] == [E.TcpIndicateRetrieve, E.TcpIndicateSendBacklogChange]


# -- a second urgent segment in the forward stops processing (spec §5.2) -------------------------
@pytest.mark.parametrize("second", [(4, b"la"), (0, b"ab")], ids=["after_it", "before_it"])
def test_a_second_urgent_segment_in_the_forward_stops_reading_the_socket(
    second: tuple[int, bytes],
) -> None:
    """Two acceptable URG segments in one forward: the first asks for the upload and is its
    cause; the second is the next segment after the request, so from it on the target stops
    processing (spec §5.2): the socket is read no more, and the peer's later bytes wait in
    the kernel, not in the target, until the terminate reads them for the host. Every byte
    reaches the host once, in order, none through the chimney."""
    c = Conn().offload()
    first = _segment(c, 2, TH_URG | TH_ACK, b"!!")
    fwds = c.top.forward(c.handle, first, _segment(c, second[0], TH_URG | TH_ACK, second[1]))
    c.st.run()
    assert [f.status for f in fwds] == [S.NDIS_STATUS_SUCCESS] * 2
    assert c.events() == [URGENT]  # asked once
    assert not c.wire.reading, "the socket is still read after the second urgent segment"
    read_before = c.wire.bytes_read
    c.wire.peer_send(b"ab!!later")  # offsets 0-8 by the wire
    c.st.run()
    assert c.wire.bytes_read == read_before, "the target read the peer's bytes after the stop"
    assert c.top.received_data(c.handle) == b""
    _terminate(c)
    pieces = sorted(
        [(off, data) for _, off, data, _ in c.top.ordinary]
        + [(e.args[0], e.args[1]) for e in c.top.wire_events if e.name == "WireData"]
    )
    stream = bytearray()
    for off, data in pieces:
        if off <= len(stream) < off + len(data):
            stream += data[len(stream) - off :]
    assert bytes(stream) == b"ab!!later"
    assert c.st.drain_problems() == []


# -- an RST after the stop, in the same forward (spec §4.6, §5.2) -------------------------------
@pytest.mark.parametrize("cause", ["urgent", "syn_at_rcvnxt"])
def test_an_rst_at_rcvnxt_after_the_stop_is_not_processed_but_reaches_the_host(
    cause: str,
) -> None:
    """One forward: a segment that asks for a mandatory upload, then an RST at RcvNxt. The
    target has stopped processing: it does not abort (no `TcpIndicateAbort`, the send
    outstanding is not completed REQUEST_ABORTED, the state it hands back is not reset),
    and the RST, not lost, goes up the ordinary path at the terminate, after what it holds,
    for the host to process after the upload."""
    c = Conn().offload()
    (sent,) = c.send(b"outstanding")
    ctx = _context(c)
    before = c.events()
    cause_seg = (
        _segment(c, 0, TH_URG | TH_ACK, b"!") if cause == "urgent" else _segment(c, 0, TH_SYN)
    )
    fwds = c.top.forward(c.handle, cause_seg, _segment(c, 0, TH_RST | TH_ACK))
    c.st.run()
    assert [f.status for f in fwds] == [S.NDIS_STATUS_SUCCESS] * 2
    after = [e for e, _ in c.events()[len(before) :]]
    assert after == [E.TcpIndicateRetrieve], "the RST was processed after the stop"
    assert sent.status == S.NDIS_STATUS_PENDING
    assert ctx.lifecycle.tcp is not TcpState.RESET
    block = _terminate(c)
    # handed back, not aborted: the host sends it on or aborts it after processing the RST
    assert block.net_buffer_list_chain is sent
    rsts = [(off, fl) for _, off, _, fl in c.top.ordinary if fl & TH_RST]
    assert rsts == [(0, TH_RST | TH_ACK)], "the RST did not reach the host"
    flags = [fl for _, _, _, fl in c.top.ordinary]
    assert flags[-1] & TH_RST, "the RST went up before what the target held ahead of it"


# -- the socket's own reset after the stop (spec §5.1, §5.2) -------------------------------------
@pytest.mark.parametrize("cause", ["urgent", "requested"])
def test_the_socket_s_reset_after_the_stop_goes_up_after_what_the_target_held(
    cause: str,
) -> None:
    """The target asked for a mandatory upload and held the peer's bytes read after it
    (nothing of them delivered); a receive is posted. Then the socket reports the peer's
    reset. The target processes the connection no more: it does not abort (the posted
    receive would fail REQUEST_ABORTED ahead of bytes the peer sent before its RST, and the
    host's application read the abort first and those bytes after it), and holds the RST
    after those bytes for the ordinary path at the terminate, like a forwarded one: the host
    processes the bytes, then the RST, once. The sends go back to the host, which fails them
    when it processes the RST."""
    c = Conn().offload()
    (sent,) = c.send(b"outstanding")
    (post,) = c.top.receive(c.handle, 64)
    c.st.run()
    before = c.events()
    if cause == "urgent":
        c.top.forward(c.handle, _segment(c, 0, TH_URG | TH_ACK, b"!"))
    else:
        (nic,) = c.st.under_test
        assert isinstance(nic, OffloadTarget)
        events.request_upload(nic, _context(c), TcpUploadReason.UploadRequested)
    c.st.run()
    c.wire.peer_send(b"!held")  # read: the first segment after the request is held
    c.st.run()
    assert c.top.received_data(c.handle) == b""
    c.wire.peer_reset()
    c.st.run()
    after = [e for e, _ in c.events()[len(before) :]]
    assert after == [E.TcpIndicateRetrieve], "the socket's reset was processed after the stop"
    assert post.status == S.NDIS_STATUS_PENDING, "the posted receive failed ahead of the bytes"
    assert sent.status == S.NDIS_STATUS_PENDING
    assert _context(c).lifecycle.tcp is not TcpState.RESET
    block = _terminate(c)
    assert post.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS
    assert block.net_buffer_list_chain is sent
    up = [(off, data, fl & TH_RST) for _, off, data, fl in c.top.ordinary]
    assert up[-1] == (5, b"", TH_RST), up  # after every byte read, as the socket said it
    assert [u for u in up if u[2]] == [(5, b"", TH_RST)], "the RST went up more than once"
    assert c.st.drain_problems() == []


def test_one_rst_goes_up_when_the_socket_resets_after_a_held_forwarded_rst() -> None:
    """A forwarded RST held after the stop (the host read it off the socket) and then the
    socket's own reset: the same news by two roads goes up once."""
    c = Conn().offload()
    fwds = c.top.forward(
        c.handle, _segment(c, 0, TH_URG | TH_ACK, b"!"), _segment(c, 0, TH_RST | TH_ACK)
    )
    c.st.run()
    assert [f.status for f in fwds] == [S.NDIS_STATUS_SUCCESS] * 2
    c.wire.peer_reset()
    c.st.run()
    assert [e for e, _ in c.events()] == [E.TcpIndicateRetrieve]
    _terminate(c)
    rsts = [(off, fl) for _, off, _, fl in c.top.ordinary if fl & TH_RST]
    assert rsts == [(0, TH_RST | TH_ACK)]
