"""The kernel's timeout (ETIMEDOUT: its retransmission or zero-window probe limit,
TCP_USER_TIMEOUT) that races the host's terminate still reads as a timeout, not a reset
(spec §5.2; docs/spec.md: the application reads every held byte, then the timeout, once).

The socket posts its news to the layer that owns the connection when it is posted. Queued at
the target just behind the terminate, the timeout is handled there after the connection went
back to the host: a plain RST up the ordinary path read as "connection reset" (it goes up
marked as the timeout now, docs/spec.md §4.7, §5.2). Told to the host just after the target's terminate, while the host's
upload is still in flight (an IM between them relays the completion), the upload cleared the
reason as that of a retrieve that came back alive.

The real host stack over the target (and an IM), on MemoryWires: no sockets, no sleeps."""

from __future__ import annotations

import pytest

from chimneyd.drivers.target import events
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.ndis.status import TcpUploadReason
from chimneyd.testing.hostrig import HostRig
from chimneyd.testing.memwire import MemoryWire


def _upload_until(rig: HostRig, conn: int, asked: bool, call: str) -> None:
    """Start the upload (by the host, or asked for by the target) and deliver until the
    target's `call` is the next delivery."""
    if asked:
        (ctx,) = rig.contexts()
        events.request_upload(rig.target, ctx, TcpUploadReason.UploadRequested)
    else:
        rig.host.app_upload(conn, lambda value, error: None)
    rig.host.after_batch()
    queue = rig.scheduler.queue
    while queue[0][0] is not rig.target or getattr(queue[0][1], "__name__", "") != call:
        rig.scheduler.run_one()
        rig.host.after_batch()


def _reads_timeout(rig: HostRig, conn: int, wire: MemoryWire, sent: bytes) -> None:
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.RESET
    if sent:
        read = rig.call(rig.host.app_recv, conn, 64, False)
        assert read.value == sent, (read, rig.event_names(conn))
    read = rig.call(rig.host.app_recv, conn, 64, False)
    assert "timed out" in str(read.error), (read, rig.event_names(conn))
    assert rig.event_names(conn).count("TcpIndicateAbort") <= 1, rig.events
    assert rig.problems() == []


@pytest.mark.parametrize("im", [False, True], ids=["direct", "im"])
@pytest.mark.parametrize("sent", [b"", b"held bytes"], ids=["no_data", "data"])
@pytest.mark.parametrize("asked", [False, True], ids=["host_upload", "after_upload_requested"])
def test_a_timeout_queued_behind_the_terminate_still_reads_as_a_timeout(
    asked: bool, sent: bytes, im: bool
) -> None:
    """The target's inbox: the terminate, (the peer's bytes,) then the kernel's timeout."""
    rig = HostRig(im=im)
    conn, wire = rig.open()
    rig.offload(conn)
    _upload_until(rig, conn, asked, "MiniportTerminateOffload")
    if sent:
        wire.peer_send(sent)  # posted to the target, behind the terminate
    wire.kernel_timeout()  # its WireTimeout is posted to the target, behind the terminate
    rig.run()
    _reads_timeout(rig, conn, wire, sent)


@pytest.mark.parametrize("asked", [False, True], ids=["host_upload", "after_upload_requested"])
def test_a_timeout_told_to_the_host_during_its_upload_reads_as_a_timeout(asked: bool) -> None:
    """The target has terminated; its completion is still on its way up through the IM when
    the kernel's timeout reaches the host, which owns the socket again."""
    rig = HostRig(im=True)
    conn, wire = rig.open()
    rig.offload(conn)
    _upload_until(rig, conn, asked, "MiniportTerminateOffload")
    rig.scheduler.run_one()  # the target's terminate: the socket is the host's again
    assert wire.owner is rig.host
    wire.kernel_timeout()
    rig.run()
    _reads_timeout(rig, conn, wire, b"")
