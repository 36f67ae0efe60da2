"""A send the target fails leaves a hole in the stream (spec §4.1): the target fails every send
after it without sending any of its data and asks for the upload (spec §3.6.4); the host fails
to the application every send made before it heard of the hole, sends itself what came back
for an upload, and what the application sends again arrives once, in order — with the real
host over the real target, no socket.
"""

from __future__ import annotations

import pytest

from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply


def _three_sends(rig: HostRig, conn: int, status: S) -> list[Reply]:
    """A first send on the wire, unacknowledged; the fault fails the second; a third follows
    before anything is acknowledged."""
    replies = [rig.call(rig.host.app_send, conn, b"one.")]
    fail_next(rig.target, "MiniportTcpOffloadSend", status)
    replies.append(rig.call(rig.host.app_send, conn, b"two."))
    replies.append(rig.call(rig.host.app_send, conn, b"three."))
    return replies


def _failed(reply: Reply, status: S) -> bool:
    return reply.done and reply.error is not None and status.name in str(reply.error)


@pytest.mark.parametrize("im", [False, True])
def test_sends_after_a_failed_one_fail_too_and_the_application_sends_them_again(im: bool) -> None:
    rig = HostRig(im=im)
    conn, wire = rig.open()
    rig.offload(conn)
    one, two, three = _three_sends(rig, conn, S.NDIS_STATUS_REQUEST_ABORTED)
    assert bytes(wire.peer_received) == b"one."  # nothing after the failed send
    wire.ack()
    rig.run()
    assert one.value == 4
    # both fail with the failure's status, nothing of them acknowledged (spec §4.1)
    assert _failed(two, S.NDIS_STATUS_REQUEST_ABORTED)
    assert _failed(three, S.NDIS_STATUS_REQUEST_ABORTED)
    assert str(three.error).endswith("acknowledged 0 bytes")
    # the target asked for the upload; the host carries the connection on
    assert "TcpIndicateRetrieve" in rig.event_names(conn)
    assert rig.host.tcbs[conn].state == "host"
    assert bytes(wire.peer_received) == b"one."
    # the application sends again from what was acknowledged: once each, in order
    again = [rig.call(rig.host.app_send, conn, data) for data in (b"two.", b"three.")]
    wire.ack()
    rig.run()
    assert [r.value for r in again] == [4, 6]
    assert bytes(wire.peer_received) == b"one.two.three."
    assert rig.problems() == []


@pytest.mark.parametrize("im", [False, True])
def test_sends_refused_for_an_upload_are_sent_by_the_host_in_order(im: bool) -> None:
    rig = HostRig(im=im)
    conn, wire = rig.open()
    rig.offload(conn)
    replies = _three_sends(rig, conn, S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
    assert bytes(wire.peer_received) == b"one."
    wire.ack()
    rig.run()
    wire.ack()
    rig.run()
    assert [r.value for r in replies] == [4, 4, 6]
    assert bytes(wire.peer_received) == b"one.two.three."
    assert rig.host.tcbs[conn].state == "host"
    assert rig.problems() == []


def test_a_send_made_after_the_failure_was_heard_is_not_behind_the_hole() -> None:
    """The application hears of the failure and sends again before the host has handled the
    target's upload request: that send is refused for the upload and sent by the host after it,
    where the failed bytes were to go."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    fail_next(rig.target, "MiniportTcpOffloadSend", S.NDIS_STATUS_REQUEST_ABORTED)
    first = Reply()
    rig.host.app_send(conn, b"lost?", first)
    # deliver up to the failed completion
    queue = rig.scheduler.queue
    while not first.done:
        if not queue:
            rig.host.after_batch()  # the host's end of drain: its batched send goes down
        assert rig.scheduler.run_one()
    assert _failed(first, S.NDIS_STATUS_REQUEST_ABORTED)
    # the target's upload request is still on its way to the host
    assert any(getattr(d[1], "__name__", "") == "ProtocolTcpOffloadEvent" for d in queue)
    again = Reply()
    rig.host.app_send(conn, b"lost?", again)
    rig.host.after_batch()  # down to the target before the host hears of the upload request
    rig.run()
    wire.ack()
    rig.run()
    # it did go down while the connection was offloaded, and came back for the upload
    assert len(rig.scheduler.delivered(rig.target, "MiniportTcpOffloadSend")) == 2
    assert again.value == 5
    assert bytes(wire.peer_received) == b"lost?"
    assert rig.problems() == []


@pytest.mark.parametrize("im", [False, True])
def test_an_ack_arriving_during_the_hand_back_does_not_strand_a_send(im: bool) -> None:
    """The peer's acknowledgement moves while the target hands a connection back: the
    target's reads of SndUna must agree with how far it advanced the sends it returns, or the
    host would place them past the bytes written, where no acknowledgement ever reaches them,
    and the application's send would never be answered (spec §3.6.3)."""
    rig = HostRig(im=im)
    conn, wire = rig.open()
    rig.offload(conn)
    one = rig.call(rig.host.app_send, conn, b"one.")
    two = rig.call(rig.host.app_send, conn, b"two.")
    rig.run()
    assert bytes(wire.peer_received) == b"one.two." and wire.acked() == 0
    real_acked = wire.acked
    reads = []

    def acked() -> int:
        # the kernel's view moves on after every read: one more byte acknowledged each time
        value = real_acked()
        reads.append(value)
        wire._acked = min(value + 1, wire.bytes_written)
        return value

    wire.acked = acked  # type: ignore[method-assign]
    up = rig.call(rig.host.app_upload, conn)
    rig.run()
    wire.acked = real_acked  # type: ignore[method-assign]
    assert up.done and rig.host.tcbs[conn].state == "host"
    assert len(set(reads)) > 1  # it moved between reads: the race was there to lose
    wire.ack()
    rig.run()
    assert (one.value, two.value) == (4, 4)
    assert bytes(wire.peer_received) == b"one.two."
    assert rig.problems() == []


@pytest.mark.parametrize("end", ["abortive_disconnect", "peer_reset"])
def test_an_empty_send_behind_unacknowledged_bytes_fails_with_them(end: str) -> None:
    """An empty send completes when every byte before it is acknowledged; when the connection
    ends first, the sends not acknowledged fail, and the empty one behind them with them
    (spec §4.1: what follows a failed NBL fails too; §9 item 3)."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    first = rig.call(rig.host.app_send, conn, b"not acked")
    empty = rig.call(rig.host.app_send, conn, b"")
    assert not first.done and not empty.done
    if end == "abortive_disconnect":
        rig.call(rig.host.app_disconnect, conn, True)
    else:
        wire.peer_reset()
        rig.run()
    assert first.done and first.error is not None
    assert empty.done and empty.error is not None, empty
    assert rig.problems() == []


def test_an_empty_send_completes_once_the_bytes_before_it_are_acknowledged() -> None:
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    first = rig.call(rig.host.app_send, conn, b"acked")
    empty = rig.call(rig.host.app_send, conn, b"")
    assert not empty.done
    wire.ack()
    rig.run()
    assert first.value == 5 and empty.done and empty.error is None
    assert rig.problems() == []


@pytest.mark.parametrize("im", [False, True])
def test_a_disconnect_asked_before_the_failure_was_heard_sends_no_fin_over_the_hole(
    im: bool,
) -> None:
    """A send fails for good (a hole, spec §4.1) while an earlier one is unacknowledged, and
    the application asks for a graceful disconnect before it hears of the failure. The
    target refuses the FIN (UPLOAD_IN_PROGRESS): it would close the stream over the hole.
    The host does not finish that disconnect on the socket after the upload: it fails as the
    sends asked before it did, and the peer gets no FIN after the bytes before the hole
    (§4.5: SUCCESS means every byte and the FIN delivered)."""
    rig = HostRig(im=im)
    conn, wire = rig.open()
    rig.offload(conn)
    one = rig.call(rig.host.app_send, conn, b"one.")
    fail_next(
        rig.layers()["im-nic0"] if im else rig.target,
        "MiniportTcpOffloadSend",
        S.NDIS_STATUS_FAILURE,
    )
    two = rig.call(rig.host.app_send, conn, b"two.")
    disc = rig.call(rig.host.app_disconnect, conn, False)
    assert not two.done and not disc.done  # both behind "one."
    wire.ack()
    rig.run()
    wire.ack()
    rig.run()
    assert one.value == 4 and _failed(two, S.NDIS_STATUS_FAILURE)
    assert disc.value == S.NDIS_STATUS_FAILURE.name
    assert rig.host.tcbs[conn].state == "host"
    assert bytes(wire.peer_received) == b"one." and not wire.eof_written
    assert rig.problems() == []


def test_a_disconnect_waiting_for_the_send_queue_fails_with_the_hole() -> None:
    """The same with the disconnect still in the host, behind bytes that wait for room in
    the send backlog (spec §5.3): they fail at the hole, and so does the disconnect."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    rig.ndis.NdisTcpOffloadEventHandler(
        rig.target, ctx.upper, TcpOffloadEventType.TcpIndicateSendBacklogChange, 4
    )
    rig.run()
    one = rig.call(rig.host.app_send, conn, b"one.")
    fail_next(rig.target, "MiniportTcpOffloadSend", S.NDIS_STATUS_FAILURE)
    two = rig.call(rig.host.app_send, conn, b"two.")
    three = rig.call(rig.host.app_send, conn, b"three.")
    disc = rig.call(rig.host.app_disconnect, conn, False)
    assert not disc.done and rig.host.tcbs[conn].fin_queued is not None
    wire.ack()  # room: "two." goes down and fails
    rig.run()
    wire.ack()
    rig.run()
    assert one.value == 4 and _failed(two, S.NDIS_STATUS_FAILURE)
    assert _failed(three, S.NDIS_STATUS_FAILURE)
    assert disc.value == S.NDIS_STATUS_FAILURE.name
    assert bytes(wire.peer_received) == b"one." and not wire.eof_written
    assert rig.problems() == []


@pytest.mark.parametrize("offloaded", [True, False])
def test_an_empty_send_after_acknowledged_bytes_completes_at_once(offloaded: bool) -> None:
    """Every byte before it acknowledged, an empty send has nothing to wait for: no news of
    an ack will come (the socket reports changes), so it completes now, in host mode and
    offloaded (rpc-contract tcp.send: the result is len(data))."""
    rig = HostRig()
    conn, wire = rig.open()
    if offloaded:
        rig.offload(conn)
    first = rig.call(rig.host.app_send, conn, b"acked")
    wire.ack()
    rig.run()
    assert first.value == 5
    empty = rig.call(rig.host.app_send, conn, b"")
    assert empty.done and empty.value == 0
    assert rig.problems() == []
