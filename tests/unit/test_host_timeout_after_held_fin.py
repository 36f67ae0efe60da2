"""The kernel's timeout that races the terminate comes behind what the target handed up
before it, an IM between them or not (docs/spec.md §5.2: the host processes it after the
upload, behind what came up before it, as the timeout; spec §3.6.4).

The target holds what the peer sends after a mandatory upload request (spec §5.2) and hands
it up the ordinary path at the terminate: here bytes, then the peer's FIN. The kernel's
timeout, queued at the target behind the terminate, now climbs the same ordinary path, marked,
behind them. When it went to the host directly (the socket's home) it reached the host first
through an IM: its RST landed in the upload queue at the stream's end, the offset of the FIN,
and the queue is replayed in offset order; replayed in arrival order within that offset, the
RST came first and the peer's FIN, which the kernel had before it timed out, was dropped (no
`TcpIndicateDisconnect`, where the same stack without the IM reports it). The socket's own
news still takes that direct road once the target has let go, so the rule stays.

The real host stack over the target (and an IM), on MemoryWires: no sockets, no sleeps."""

from __future__ import annotations

import pytest

from chimneyd.drivers.target import events
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.ndis.status import TcpUploadReason
from chimneyd.testing.hostrig import HostRig


@pytest.mark.parametrize("im", [False, True], ids=["direct", "im"])
def test_the_peer_s_fin_held_for_the_host_comes_before_the_kernel_s_timeout(im: bool) -> None:
    rig = HostRig(im=im)
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    events.request_upload(rig.target, ctx, TcpUploadReason.UploadRequested)
    rig.host.after_batch()
    wire.peer_send(b"held")  # after the request: held for the ordinary path (spec §5.2)
    wire.peer_fin()
    queue = rig.scheduler.queue
    while not (queue[0][0] is rig.target and queue[0][1].__name__ == "MiniportTerminateOffload"):
        rig.scheduler.run_one()
        rig.host.after_batch()
    wire.kernel_timeout()  # its WireTimeout is posted to the target, behind the terminate
    rig.run()
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.RESET
    names = rig.event_names(conn)
    assert names.count("TcpIndicateDisconnect") == 1, f"the peer's FIN was dropped: {names}"
    read = rig.call(rig.host.app_recv, conn, 64, False)
    assert read.value == b"held", read
    # the peer's FIN came first: Linux reads its end of stream, not the error (SOCK_DONE)
    read = rig.call(rig.host.app_recv, conn, 64, False)
    assert read.value == b"" and read.error is None, read
    assert rig.problems() == []
