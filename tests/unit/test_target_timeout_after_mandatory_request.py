"""The kernel gives up on an offloaded connection after the target asked for a mandatory upload
for another reason (docs/spec.md §5.2): the host still learns that the connection timed out.

The target hands a connection the kernel gave up on back CLOSED (spec §5.2 chimneyd). A
delegated `TcpConnectionClosed` is both a graceful end and a killed connection, and the host
tells them apart by what the target told it before the hand-back: `TcpIndicateAbort`, or the
`TimeoutExpiration` upload request (`tcp_state_of`). After an earlier mandatory request
(`UploadRequested`, urgent data, an UPLOAD_ALL) the target asked no more, so a connection that
had sent its FIN came back as a graceful TIME_WAIT: its disconnect never completed, the
application read an end of stream the peer never sent, and one that had not sent a FIN read
"connection reset" where no RST came. Like the socket's own reset after the stop (held after the
bytes read before it, tests/unit/test_target_after_mandatory_request.py), the application reads
every byte the target held, then the end, once: here a timeout.

The real host stack over the target, on a MemoryWire (no sockets, no sleeps); the host's
terminate is held behind a query (spec §3.1) so that the timeout comes between the request and
the terminate."""

from __future__ import annotations

import pytest

from chimneyd.drivers.target import events
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.ndis.status import TcpUploadReason
from chimneyd.testing.hostrig import HostRig, Reply

TIMED_OUT = "timed out (TimeoutExpiration)"


def _stopped_then_timed_out(
    reason: TcpUploadReason, fin_sent: bool, im: bool = False
) -> tuple[HostRig, int, Reply]:
    """An offloaded connection (its FIN sent and not acknowledged if `fin_sent`): the target
    asks for a mandatory upload with `reason`, the peer sends bytes the target holds, the
    kernel gives up, and only then the host's terminate reaches the target. The disconnect's
    reply (pending if no FIN was sent)."""
    rig = HostRig(im=im)
    conn, wire = rig.open()
    rig.offload(conn)
    disconnect = Reply()
    if fin_sent:
        rig.host.app_disconnect(conn, False, disconnect)
        rig.run()
        assert not disconnect.done  # FIN_WAIT_1: the peer has not acknowledged it
    _query, held = rig.query_held_below(conn)  # the host's terminate waits for it
    (ctx,) = rig.contexts()
    events.request_upload(rig.target, ctx, reason)
    rig.run()
    wire.peer_send(b"sent before the timeout")
    rig.run()
    wire.kernel_timeout()
    rig.run()
    rig.release(held)
    assert rig.host.tcbs[conn].lifecycle.phase.name == "IDLE", "not uploaded"
    return rig, conn, disconnect


@pytest.mark.parametrize("reason", [TcpUploadReason.UploadRequested, TcpUploadReason.InvalidState])
def test_a_timeout_after_a_mandatory_request_is_no_graceful_close(reason: TcpUploadReason) -> None:
    """The connection had sent its FIN: it comes back dead, not in TIME_WAIT. The disconnect
    fails (its FIN can never be acknowledged now), and the application reads the bytes the
    target held, then the timeout, not an end of stream the peer never sent."""
    rig, conn, disconnect = _stopped_then_timed_out(reason, fin_sent=True)
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.RESET, "a timed-out connection came back gracefully"
    # failed as when the timeout is the first reason: its FIN can never be acknowledged
    assert disconnect.value == "NDIS_STATUS_REQUEST_ABORTED", disconnect
    first = rig.call(rig.host.app_recv, conn, 64, False)
    assert first.value == b"sent before the timeout", first
    second = rig.call(rig.host.app_recv, conn, 64, False)
    assert TIMED_OUT in str(second.error), second
    assert rig.problems() == []


@pytest.mark.parametrize("im", [False, True], ids=["direct", "through_an_im"])
def test_a_timeout_after_a_mandatory_request_reads_as_a_timeout_not_a_reset(im: bool) -> None:
    """No FIN sent: the application reads every byte the target held, then the timeout once:
    no RST came, so neither "connection reset" nor a `TcpIndicateAbort`; the host is told why
    (`TimeoutExpiration`) as it is told when the timeout is the first reason, through an IM
    too (it relays the second request as it did the first)."""
    rig, conn, _ = _stopped_then_timed_out(TcpUploadReason.UploadRequested, False, im)
    first = rig.call(rig.host.app_recv, conn, 64, False)
    assert first.value == b"sent before the timeout", first
    second = rig.call(rig.host.app_recv, conn, 64, False)
    assert TIMED_OUT in str(second.error), second
    names = rig.event_names(conn)
    assert "TcpIndicateAbort" not in names, rig.events
    reasons = [i["reason"] for c, e, i in rig.events if e == "TcpIndicateRetrieve"]
    assert reasons == ["UploadRequested", "TimeoutExpiration"], reasons
    assert rig.problems() == []


def test_a_timeout_while_the_host_s_terminate_is_on_its_way_down_reads_as_a_timeout() -> None:
    """The host already answered the request with a terminate, which has not reached the
    target yet (through an IM) when the kernel gives up: the target, not yet terminating,
    tells the host it timed out; the host, terminating, takes the news (spec §3.6.3: the
    target's indications may still arrive) and the application reads the timeout, the
    disconnect fails, nothing comes back as a graceful close."""
    rig = HostRig(im=True)
    conn, wire = rig.open()
    rig.offload(conn)
    disconnect = rig.call(rig.host.app_disconnect, conn, False)
    assert not disconnect.done
    (ctx,) = rig.contexts()
    events.request_upload(rig.target, ctx, TcpUploadReason.UploadRequested)
    rig.host.after_batch()
    queue = rig.scheduler.queue
    while getattr(queue[0][1], "__name__", "") != "MiniportTerminateOffload":
        rig.scheduler.run_one()
        rig.host.after_batch()
    held = queue.popleft()  # the terminate, at the target's edge
    rig.run()
    assert rig.host.tcbs[conn].lifecycle.phase.name == "TERMINATING"
    wire.kernel_timeout()
    rig.run()
    rig.release(held)
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.RESET, "a timed-out connection came back gracefully"
    assert disconnect.value == "NDIS_STATUS_REQUEST_ABORTED", disconnect
    read = rig.call(rig.host.app_recv, conn, 64, False)
    assert TIMED_OUT in str(read.error), read
    assert rig.problems() == []
