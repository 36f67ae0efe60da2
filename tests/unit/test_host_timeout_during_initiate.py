"""The kernel's timeout told to the host while the connection's offload is being set up: the
initiate below (spec §3.2.7: what the host receives meanwhile waits for the completion), or
the offload asked for and not yet in an initiate (spec §3.9: the connection is the host's).

The socket tells the host only while the host owns it, so before the target took it in its
initiate: the socket is closed by then, the target refuses to carry it (the initiate fails,
spec §3.2.4), and the timeout the host queued never goes down as a forwarded RST (which the
target would take for the peer's, `TcpIndicateAbort` with no reason). The host processes it
itself, as the timeout (spec §5.2), and everything it tells says so: the application's read
("timed out") and the connection's one `TcpIndicateAbort` (`reason: TimeoutExpiration`,
docs/rpc.md).

The real host stack over the target (and a pass-through IM), on MemoryWires: no sockets, no
sleeps."""

from __future__ import annotations

import pytest

from chimneyd.ndis.lifecycle import Phase, TcpState
from chimneyd.testing.hostrig import HostRig, Reply
from chimneyd.testing.memwire import MemoryWire

TIMED_OUT = "timed out (TimeoutExpiration)"


def _initiate_below(rig: HostRig, conn: int) -> Reply:
    """Ask for the offload and deliver until the target's initiate is the next delivery: the
    socket is still the host's (the target takes it in its initiate)."""
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    rig.host.after_batch()
    queue = rig.scheduler.queue
    while not (
        queue[0][0] is rig.target
        and getattr(queue[0][1], "__name__", "") == "MiniportInitiateOffload"
    ):
        rig.scheduler.run_one()
        rig.host.after_batch()
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.OFFLOADING
    return offload


def _told_as_a_timeout(rig: HostRig, conn: int, wire: MemoryWire, sent: bytes) -> None:
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.RESET
    assert tcb.lifecycle.phase is Phase.IDLE  # the host's: never offloaded
    if sent:
        read = rig.call(rig.host.app_recv, conn, 64, False)
        assert read.value == sent, (read, rig.events)
    read = rig.call(rig.host.app_recv, conn, 64, False)
    assert read.done and TIMED_OUT in str(read.error), (read, rig.events)
    aborts = [i for c, e, i in rig.events if c == conn and e == "TcpIndicateAbort"]
    assert aborts == [{"path": "host", "reason": "TimeoutExpiration"}], rig.events
    assert tcb.state == "host"  # what `tcp.info` says: never offloaded
    close = rig.call(rig.host.app_close, conn)
    assert close.done and close.error is None, close
    assert rig.problems() == []


@pytest.mark.parametrize("im", [False, True], ids=["direct", "im"])
@pytest.mark.parametrize("sent", [b"", b"bytes before"], ids=["no_data", "data"])
def test_a_timeout_while_the_initiate_is_below_is_told_as_a_timeout(im: bool, sent: bytes) -> None:
    rig = HostRig(im=im)
    conn, wire = rig.open()
    if sent:
        wire.peer_send(sent)
        rig.run()
    offload = _initiate_below(rig, conn)
    assert wire.owner is rig.host
    wire.kernel_timeout()  # the host's to hear: its WireTimeout queues behind the initiate
    rig.run()
    # the target does not carry a socket the kernel closed: the RST the host queued for the
    # timeout is the host's to process, not a segment forwarded down (spec §4.6)
    assert offload.done and offload.error is not None, offload
    assert rig.contexts() == []
    assert not rig.scheduler.delivered(rig.target, "MiniportTcpOffloadForward")
    _told_as_a_timeout(rig, conn, wire, sent)


@pytest.mark.parametrize("sent", [b"", b"bytes before"], ids=["no_data", "data"])
def test_a_timeout_while_the_offload_waits_for_its_initiate_is_told_as_a_timeout(
    sent: bytes,
) -> None:
    """Asked for, not yet in an initiate (the host builds its trees at the end of the drain):
    the timeout in the same drain refuses the offload."""
    rig = HostRig()
    conn, wire = rig.open()
    if sent:
        wire.peer_send(sent)
        rig.run()
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    wire.kernel_timeout()
    rig.run()
    assert offload.done and offload.error is not None, offload
    assert not rig.scheduler.delivered(rig.target, "MiniportInitiateOffload")
    _told_as_a_timeout(rig, conn, wire, sent)
