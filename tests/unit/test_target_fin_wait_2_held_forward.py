"""The FIN_WAIT_2 timer of a connection offloaded in FIN_WAIT_2 whose peer the host heard while
the initiate was below (docs/spec.md §8, the FIN_WAIT_2 paragraphs; §3.2.7, §4.6).

While its initiate is below, the host still reads the socket: what it reads of the peer's (bytes,
the FIN) goes down by `NdisOffloadTcpForward` once the initiate completes (spec §3.2.7), and an
in-window forwarded segment restarts the target's timer (spec §8). The delta in the initiate was
read before: a NIC that queued the initiate while paused (spec §5.5) counts it from the
initiate's arrival, and can find it spent when it takes the connection at the RESUME, its timer
due at once. That expiry
and the host's forward race: the expiry is one message in the NIC's own inbox, the forward comes
after the completion has gone up every layer and the host has answered it. The order where the
expiry goes first must not time out a connection whose peer was heard moments ago (nor one whose
peer closed: it is TIME_WAIT's, not a timeout's).

The real host stack over a real target, on MemoryWires, with the invariant checker on; the
clock is the rig's `ManualClock` (no sockets, no sleeps). `_expiry_first` puts the NIC's expiry
due at once in its inbox before the host's forward: NDIS allows that order, and it is what an IM
between them makes of it."""

from __future__ import annotations

from chimneyd.ndis.lifecycle import Phase, TcpState
from chimneyd.testing.hostrig import HostRig, Reply
from chimneyd.testing.memwire import MemoryWire
from tests.unit.test_host_fin_wait_2 import _retrieves

SINCE_S = 30.0  # how far into FIN_WAIT_2 the host asks for the offload
LEFT_S = 120.0 - SINCE_S  # what the host hands down
# how long the initiate is held: longer than the whole 120 s, so that neither the delta nor a
# fresh timer counted from the initiate's arrival is left when the NIC takes it
HELD_S = 130.0
HEARD_S = HELD_S - 5  # when, after the initiate arrived, the peer is heard


def _in_fin_wait_2(rig: HostRig) -> tuple[int, MemoryWire]:
    """A connection the host carries in FIN_WAIT_2 (its FIN acknowledged at clock 0),
    `SINCE_S` later."""
    conn, wire = rig.open()
    rig.half_close(conn, wire)
    assert rig.host.tcbs[conn].lifecycle.tcp is TcpState.FIN_WAIT_2
    rig.advance(SINCE_S)
    return conn, wire


def _queued_at_a_paused_nic(rig: HostRig, conn: int) -> Reply:
    """The host offloads `conn`; the NIC fails (PAUSE, UPLOAD_ALL) while the initiate is on its
    way and queues it when it arrives (spec §5.5)."""
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    on_its_way = rig.hold_below("MiniportInitiateOffload")
    rig.target.fail_adapter()
    rig.run()
    rig.release(on_its_way)
    assert len(rig.target.paused_initiates) == 1 and not offload.done
    return offload


def _expiry_first(rig: HostRig) -> None:
    """Fire the timers due now before the host answers the completion: the NIC's expiry goes
    into its inbox ahead of the host's forward."""
    rig.clock.advance(0)
    rig.run()


def _resumed_with_expiry_first(rig: HostRig, offload: Reply) -> None:
    rig.target.recover_adapter()  # RESUME: the NIC takes the queued initiate (its completion)
    _expiry_first(rig)
    assert offload.done and offload.error is None, offload


def _clean(rig: HostRig, conn: int) -> None:
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True and close.error is None, close
    assert rig.problems() == []
    assert all(v == 0 for v in rig.host.leftovers().values()), rig.host.leftovers()
    for t in rig.targets.values():
        assert all(v == 0 for v in t.leftovers().values()), t.leftovers()
    assert rig.clock.pending == 0, "a timer left armed"


def test_peer_bytes_heard_while_a_paused_nic_held_the_initiate_restart_its_timer() -> None:
    """The initiate (90 s left) is queued at a paused NIC; 125 s later the peer sends bytes,
    which the host reads; RESUME 130 s after the initiate, its delta spent. The bytes come down
    by forward: the connection is no timeout of the delta's, whichever of the expiry and the
    forward reaches the NIC first, and the application reads them."""
    rig = HostRig()
    conn, wire = _in_fin_wait_2(rig)
    offload = _queued_at_a_paused_nic(rig, conn)
    rig.advance(HEARD_S)
    wire.peer_send(b"late")
    rig.run()
    rig.advance(HELD_S - HEARD_S)
    _resumed_with_expiry_first(rig, offload)
    assert _retrieves(rig, conn) == [], "timed out though the peer was heard 5 s ago"
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.OFFLOADED
    got = rig.call(rig.host.app_recv, conn, 64, False)
    assert got.value == b"late" and got.error is None, got
    # the forward restarted it (spec §8): 120 s from the RESUME at the latest
    rig.advance(120 + 1)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], rig.events
    _clean(rig, conn)


def test_a_peer_fin_heard_while_a_paused_nic_held_the_initiate_is_no_timeout() -> None:
    """As above, but the peer closes (its FIN, read by the host, the initiate below): the NIC
    takes the connection in FIN_WAIT_2, and the forward carries the FIN: TIME_WAIT, the upload
    asked for with `UploadRequested` (spec §5.2), the application reads the end of stream; not
    a `TimeoutExpiration` and a reset."""
    rig = HostRig()
    conn, wire = _in_fin_wait_2(rig)
    offload = _queued_at_a_paused_nic(rig, conn)
    rig.advance(HEARD_S)
    wire.peer_fin()
    rig.run()
    rig.advance(HELD_S - HEARD_S)
    _resumed_with_expiry_first(rig, offload)
    assert "TimeoutExpiration" not in _retrieves(rig, conn), rig.events
    got = rig.call(rig.host.app_recv, conn, 64, False)
    assert got.value == b"" and got.error is None, got
    _clean(rig, conn)
