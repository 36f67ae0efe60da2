"""The FIN_WAIT_2 timer of a connection offloaded in FIN_WAIT_2 through a layer that holds its
initiate (docs/spec.md §8, the FIN_WAIT_2 paragraphs; the timer table's `Retransmit.TimeoutDelta`).

The host hands down what is left of its timer in `RetransmitTimeoutDelta`, read when it builds
the initiate. A layer between it and the target may hold that initiate: an IM under a `delay`
fault, a teaming MUX waiting for a NIC's capabilities (spec §5.5). The timer runs 120 s from the
peer's last acceptable segment, and only a segment restarts it (spec §8): a hold does not. NDIS
carries no clock with the delegated state, so the layer that held the initiate takes the time
it held it off the delta it passes down (`fin_wait_2.spend_held`) [INF], and the target times
the connection out when the host's timer would have, not later by the hold.

A NIC that queues an initiate itself while paused (spec §5.5) counts from the initiate's arrival
too, not from the RESUME that lets it offload the connection.

The real host stack over real targets, on MemoryWires, with the invariant checker on; the
clock is the rig's `ManualClock` (no sockets, no sleeps)."""

from __future__ import annotations

from dataclasses import replace

from chimneyd.drivers.base import Delay
from chimneyd.ndis.lifecycle import Phase, TcpState
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_fin_wait_2 import _host_timers, _retrieves
from tests.unit.test_host_fin_wait_2_team import _carrier, _team

HELD_S = 40.0  # how long the layer holds the initiate
SINCE_S = 30.0  # how far into FIN_WAIT_2 the host asks for the offload
LEFT_S = 120.0 - SINCE_S  # what the host hands down


def _host_in_fin_wait_2(rig: HostRig) -> int:
    """A connection the host carries in FIN_WAIT_2 (its FIN acknowledged at clock 0), the
    host's timer running, `SINCE_S` later."""
    conn, wire = rig.open()
    rig.half_close(conn, wire)
    # the peer is silent: its kernel last heard it long ago (the rig's default is "just now",
    # which the target counts for a hold above it while it has reading stopped, spec §8)
    wire.info = replace(wire.info, last_data_recv_ms=10**7, last_ack_recv_ms=10**7)
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.phase is Phase.IDLE and tcb.lifecycle.tcp is TcpState.FIN_WAIT_2
    assert _host_timers(rig) == 1
    rig.advance(SINCE_S)
    return conn


def _expires_after(rig: HostRig, conn: int, seconds: float) -> None:
    """The target asks for the `TimeoutExpiration` upload `seconds` from now, not before."""
    rig.advance(seconds - 1)
    assert "TimeoutExpiration" not in _retrieves(rig, conn), "timed out early"
    rig.advance(2)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], "not timed out when due"


def _offloaded(rig: HostRig, conn: int, offload: Reply) -> None:
    assert offload.done and offload.error is None, offload
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.OFFLOADED
    assert _host_timers(rig) == 0  # the target's from now on (spec §8)


def _drained(rig: HostRig, conn: int) -> None:
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True and close.error is None, close
    assert rig.problems() == []
    assert all(v == 0 for v in rig.host.leftovers().values()), rig.host.leftovers()
    for t in rig.targets.values():
        assert all(v == 0 for v in t.leftovers().values()), t.leftovers()
    assert rig.clock.pending == 0, "a timer left armed"


def _im_holding(rig: HostRig, conn: int, held_s: float) -> Reply:
    """host → IM (`delay` of `MiniportInitiateOffload`, `held_s`) → NIC: the host offloads
    the connection, and the IM holds the initiate that long."""
    im = rig.ndis.layers["im-nic0"]
    im.arm_fault(Delay(1, "MiniportInitiateOffload", int(held_s * 1000)))
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    rig.run()
    assert not offload.done and list(rig.target.connections()) == [], "the IM did not hold it"
    rig.advance(held_s)
    return offload


def test_an_im_delaying_the_initiate_does_not_put_the_expiry_off() -> None:
    """Offloaded 30 s into FIN_WAIT_2 with 90 s left, the initiate reaches the NIC 40 s
    later: it times the connection out 50 s after that, 120 s after the ACK of our FIN (not
    90 s after, at 160 s)."""
    rig = HostRig(im=True)
    conn = _host_in_fin_wait_2(rig)
    offload = _im_holding(rig, conn, HELD_S)
    _offloaded(rig, conn, offload)
    _expires_after(rig, conn, LEFT_S - HELD_S)
    _drained(rig, conn)


def test_an_im_holding_the_initiate_past_the_timer_has_it_time_out_at_once() -> None:
    """Held 100 s against 90 s left: the host's timer fell due with the initiate below and
    waited for it (spec §8); the NIC takes the connection and times it out at once."""
    rig = HostRig(im=True)
    conn = _host_in_fin_wait_2(rig)
    offload = _im_holding(rig, conn, LEFT_S + 10)
    assert offload.done and offload.error is None, offload
    rig.advance(0.5)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], "not timed out at once"
    _drained(rig, conn)


def test_a_mux_holding_the_initiate_does_not_put_the_expiry_off() -> None:
    """host → MUX → nic0, nic1. nic1 is back (RESUME) and the MUX asks its capabilities; the
    answer is held below for 40 s, and the MUX holds the initiate until it comes (it places
    no connection before it knows what each NIC carries). The NIC that takes the connection
    times it out 90 s after the host built the initiate, 50 s after it took it."""
    rig, mux = _team()
    conn = _host_in_fin_wait_2(rig)
    nic1 = rig.targets["nic1"]
    rig.ndis.NdisMIndicateStatusEx(nic1, S.NDIS_STATUS_OFFLOAD_PAUSE, [])
    rig.ndis.NdisMIndicateStatusEx(nic1, S.NDIS_STATUS_OFFLOAD_RESUME, [])
    asked = rig.hold_below("MiniportOidRequest")
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    rig.run()
    assert mux.deferred and not offload.done, "the MUX did not hold the initiate"
    rig.advance(HELD_S)
    assert not offload.done
    rig.release(asked)
    _offloaded(rig, conn, offload)
    assert _carrier(rig) in ("nic0", "nic1")
    _expires_after(rig, conn, LEFT_S - HELD_S)
    _drained(rig, conn)


def _queued_at_a_paused_nic(rig: HostRig, conn: int) -> Reply:
    """The host offloads `conn`; the NIC fails (PAUSE, UPLOAD_ALL) while the initiate is on its
    way, and queues it when it arrives (spec §5.5: "initiates already on their way may still
    arrive and the target should queue them for later")."""
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    on_its_way = rig.hold_below("MiniportInitiateOffload")
    # the kernel last heard the peer long ago (the ACK of our FIN): not since the initiate
    wire = rig.host.tcbs[conn].wire
    wire.info = replace(wire.info, last_data_recv_ms=10**7, last_ack_recv_ms=10**7)
    rig.target.fail_adapter()
    rig.run()
    rig.release(on_its_way)
    assert len(rig.target.paused_initiates) == 1 and not offload.done
    return offload


def test_an_initiate_a_paused_nic_queued_counts_from_its_arrival() -> None:
    """The initiate reaches the NIC 30 s into FIN_WAIT_2 with 90 s left, while it is paused;
    RESUME 40 s later. The NIC's clock runs from its initiate: it times the connection out
    120 s after the ACK of our FIN (50 s after the RESUME), not 90 s after the RESUME."""
    rig = HostRig()
    conn = _host_in_fin_wait_2(rig)
    offload = _queued_at_a_paused_nic(rig, conn)
    rig.advance(HELD_S)
    rig.target.recover_adapter()
    rig.run()
    _offloaded(rig, conn, offload)
    _expires_after(rig, conn, LEFT_S - HELD_S)
    _drained(rig, conn)


def test_due_while_a_paused_nic_queued_the_initiate_it_times_out_at_resume() -> None:
    """Paused longer than what was left (100 s against 90 s): the host's timer fell due with
    the initiate below and waited for it (spec §8); the NIC takes the connection at RESUME
    and times it out at once, not 90 s later."""
    rig = HostRig()
    conn = _host_in_fin_wait_2(rig)
    offload = _queued_at_a_paused_nic(rig, conn)
    rig.advance(LEFT_S + 10)
    assert _retrieves(rig, conn) == [] and "TcpIndicateAbort" not in rig.event_names(conn)
    rig.target.recover_adapter()
    rig.run()
    assert offload.done and offload.error is None, offload
    rig.advance(0.5)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], rig.events
    _drained(rig, conn)


def test_a_nic_delaying_its_own_initiate_does_not_put_the_expiry_off() -> None:
    """The NIC's own `delay` of `MiniportInitiateOffload` (40 s): the hold comes off the delta
    as an IM's does (`DriverLayer.held`), and the NIC times the connection out 50 s after it
    takes it, 120 s after the ACK of our FIN."""
    rig = HostRig()
    conn = _host_in_fin_wait_2(rig)
    rig.target.arm_fault(Delay(1, "MiniportInitiateOffload", int(HELD_S * 1000)))
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    rig.run()
    assert not offload.done and list(rig.target.connections()) == [], "the NIC did not hold it"
    rig.advance(HELD_S)
    _offloaded(rig, conn, offload)
    _expires_after(rig, conn, LEFT_S - HELD_S)
    _drained(rig, conn)
