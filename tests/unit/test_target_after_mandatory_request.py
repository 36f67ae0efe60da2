"""What a target does once it asked for a mandatory upload and so stopped processing the
connection (docs/spec.md §5.2): no advice on sends it will refuse, the next segment of the same
forward stops processing even when it is urgent data too, and an RST in that forward is not
processed but reaches the host at the terminate.

The `NdisTcpOffloadEventHandler` page has a target stop processing the connection after a
mandatory reason; "Handling the Reception of Urgent Data" has it queue the urgent data and every
later segment and pass them up the ordinary path at the terminate; the page of
`NdisTcpOffloadForwardComplete` has the host process the segments a target did not process
because of the upload itself.

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

from chimneyd.drivers.target import events
from chimneyd.drivers.target.contexts import TcpContext
from chimneyd.drivers.target.target import OffloadTarget
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from tests.unit.test_target_ndis_rules import Conn

E = TcpOffloadEventType
REQUESTED = (E.TcpIndicateRetrieve, TcpUploadReason.UploadRequested)


def _context(c: Conn) -> TcpContext:
    (nic,) = c.st.under_test
    assert isinstance(nic, OffloadTarget)
    (ctx,) = nic.connections()
    return ctx


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
