"""The host's FIN_WAIT_2 timer (docs/spec.md §8 timer table) against what else may happen to
the connection: a failover's upload and re-offload (UPLOAD_ALL, RESUME: spec §5.5), an offload
asked after it expired, the peer's FIN or the kernel's own end arriving as it falls due, an
offload that succeeds after it fell due below, an upload in flight.

The real host stack over the target, on MemoryWires, with the invariant checker on; the clock
is the rig's `ManualClock` (no sockets, no sleeps)."""

from __future__ import annotations

from typing import Any

from chimneyd.ndis.lifecycle import Phase, TcpState
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_host_fin_wait_2 import (
    _closed_and_drained,
    _host_in_fin_wait_2,
    _host_timers,
    _retrieves,
)
from tests.unit.test_target_fin_wait_2_timer import _in_fin_wait_2

FIN_WAIT_2_S = 120.0


def _aborts(rig: HostRig, conn: int) -> list[dict[str, Any]]:
    return [i for c, e, i in rig.events if c == conn and e == "TcpIndicateAbort"]


def test_a_failover_s_upload_and_resume_carry_what_is_left() -> None:
    """UPLOAD_ALL 30 s into FIN_WAIT_2 (a failover, spec §5.5), 30 s in the host while the
    binding is paused, RESUME: offloaded again by the host with 60 s left, and the target times
    it out 60 s later; neither the failover's upload nor its re-offload starts a fresh 120 s."""
    rig, conn, _wire = _in_fin_wait_2()
    rig.advance(30)
    rig.ndis.NdisMIndicateStatusEx(rig.target, S.NDIS_STATUS_UPLOAD_ALL, [])
    rig.run()
    assert rig.contexts() == [] and _host_timers(rig) == 1
    rig.advance(30)
    rig.ndis.NdisMIndicateStatusEx(rig.target, S.NDIS_STATUS_OFFLOAD_RESUME, [])
    rig.run()
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.OFFLOADED
    assert _host_timers(rig) == 0
    rig.advance(60 - 1)
    assert "TimeoutExpiration" not in _retrieves(rig, conn)
    rig.advance(2)
    assert _retrieves(rig, conn)[-1] == "TimeoutExpiration"
    _closed_and_drained(rig, conn)


def test_expired_while_paused_it_is_not_offloaded_again_at_resume() -> None:
    """Uploaded by a failover, it times out in the host before the RESUME: the RESUME offloads
    nothing (a reset connection is not offloadable, spec §2.2) and nothing is left waiting."""
    rig, conn, wire = _in_fin_wait_2()
    rig.ndis.NdisMIndicateStatusEx(rig.target, S.NDIS_STATUS_UPLOAD_ALL, [])
    rig.run()
    rig.advance(FIN_WAIT_2_S + 1)
    assert _aborts(rig, conn) == [{"path": "host", "reason": "TimeoutExpiration"}]
    assert wire.reset_sent
    rig.ndis.NdisMIndicateStatusEx(rig.target, S.NDIS_STATUS_OFFLOAD_RESUME, [])
    rig.run()
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.IDLE
    assert rig.contexts() == []
    offload = rig.call(rig.host.app_offload, conn, None)
    assert offload.done and offload.error is not None, offload
    assert _host_timers(rig) == 0
    _closed_and_drained(rig, conn)


def test_the_peer_s_fin_queued_as_it_falls_due_wins() -> None:
    """The peer's FIN is in before the expiry runs: TIME_WAIT, no timeout, no RST."""
    rig, conn, wire = _host_in_fin_wait_2()
    rig.advance(FIN_WAIT_2_S - 1)
    wire.peer_fin()  # posted, not yet delivered
    rig.advance(2)
    assert rig.host.tcbs[conn].lifecycle.tcp is TcpState.TIME_WAIT
    assert _aborts(rig, conn) == [] and not wire.reset_sent
    assert _host_timers(rig) == 0
    _closed_and_drained(rig, conn)


def test_the_kernel_s_own_timeout_as_it_falls_due_is_one_abort() -> None:
    """The kernel gives up (its socket closed, `WireTimeout` on its way) as the host's timer
    falls due: one `TcpIndicateAbort`, no RST written on the closed socket."""
    rig, conn, wire = _host_in_fin_wait_2()
    rig.advance(FIN_WAIT_2_S - 1)
    wire.kernel_timeout()  # posted, not yet delivered
    rig.advance(2)
    assert rig.host.tcbs[conn].lifecycle.tcp is TcpState.RESET
    assert _aborts(rig, conn) == [{"path": "host", "reason": "TimeoutExpiration"}]
    assert not wire.reset_sent
    assert _host_timers(rig) == 0
    _closed_and_drained(rig, conn)


def test_the_peer_s_reset_as_it_falls_due_is_one_abort() -> None:
    """The peer's RST (its `WireReset` on its way) as the timer falls due: one abort, the
    peer's, the timer gone."""
    rig, conn, wire = _host_in_fin_wait_2()
    rig.advance(FIN_WAIT_2_S - 1)
    wire.peer_reset()
    rig.advance(2)
    assert len(_aborts(rig, conn)) == 1, rig.events
    assert _host_timers(rig) == 0
    _closed_and_drained(rig, conn)


def test_due_while_an_offload_is_below_then_offloaded_the_target_times_it_out() -> None:
    """The timer falls due while the initiate is below and the initiate succeeds: the host's
    timer goes (the target's from now on), the host never times it out itself, and the target
    does with what was handed down (20 s, from when it took the connection: a delta counts
    from its hand-over, spec §8), not a fresh 120 s."""
    rig, conn, _wire = _host_in_fin_wait_2()
    rig.advance(100)
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    held = rig.hold_below("MiniportInitiateOffload")
    rig.advance(30)
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.OFFLOADING
    assert _host_timers(rig) == 1
    rig.release(held)
    assert offload.done and offload.error is None, offload
    assert _host_timers(rig) == 0
    rig.advance(20 - 1)
    assert _retrieves(rig, conn) == []
    rig.advance(2)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"]
    assert all(i.get("path") != "host" for i in _aborts(rig, conn)), rig.events
    rig.advance(FIN_WAIT_2_S * 2)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"]
    _closed_and_drained(rig, conn)


def test_an_upload_in_flight_is_not_timed_out_by_the_host() -> None:
    """An upload of a FIN_WAIT_2 connection held up below (behind a query, spec §3.1): no host
    timer runs until it is done (the target's still holds), and the one started then counts
    from what the target handed back (5 s: 120 s after the ACK of our FIN)."""
    rig, conn, _wire = _in_fin_wait_2()
    rig.advance(110)
    query, held = rig.query_held_below(conn)  # the terminate waits behind the query
    upload = Reply()
    rig.host.app_upload(conn, upload)
    rig.run()
    rig.advance(5)  # the host's timer would have been due had it started at the request
    assert _host_timers(rig) == 0 and _aborts(rig, conn) == []
    rig.release(held)
    assert query.done and upload.done, (query, upload)
    assert _host_timers(rig) == 1
    rig.advance(5 - 1)
    assert _aborts(rig, conn) == []
    rig.advance(2)
    assert _aborts(rig, conn) == [{"path": "host", "reason": "TimeoutExpiration"}]
    _closed_and_drained(rig, conn)


def test_close_while_an_offload_is_below_with_the_timer_due_leaves_nothing() -> None:
    """Fell due while the initiate is below, then `tcp.close`: the timer (and its record, with
    no handle) goes with the connection."""
    rig, conn, _wire = _host_in_fin_wait_2()
    rig.advance(119)
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    held = rig.hold_below("MiniportInitiateOffload")
    rig.advance(5)
    close = Reply()
    rig.host.app_close(conn, close)
    rig.run()
    rig.release(held)
    assert offload.done and close.done, (offload, close)
    assert rig.problems() == []
    assert all(v == 0 for v in rig.host.leftovers().values()), rig.host.leftovers()
    assert all(v == 0 for v in rig.target.leftovers().values()), rig.target.leftovers()
    assert rig.clock.pending == 0, "a timer left armed"


def test_the_peer_s_fin_behind_the_expiry_changes_nothing() -> None:
    """The expiry is delivered first, the peer's FIN (read before the RST went out) right
    behind it: timed out once, no end of stream indicated after the abort, and the
    application reads every byte, then the timeout."""
    rig, conn, wire = _host_in_fin_wait_2()
    wire.peer_send(b"last")
    rig.run()
    rig.clock.advance(FIN_WAIT_2_S + 1)  # the expiry posted, not yet delivered
    wire.peer_fin()  # behind it
    rig.run()
    assert _aborts(rig, conn) == [{"path": "host", "reason": "TimeoutExpiration"}]
    assert "TcpIndicateDisconnect" not in rig.event_names(conn), rig.events
    assert rig.host.tcbs[conn].lifecycle.tcp is TcpState.RESET
    got = rig.call(rig.host.app_recv, conn, 64, False)
    assert got.value == b"last", got
    end = rig.call(rig.host.app_recv, conn, 64, False)
    assert end.error is not None and "TimeoutExpiration" in str(end.error), end
    _closed_and_drained(rig, conn)


def test_an_offload_queued_as_it_expires_is_refused() -> None:
    """An offload asked (queued for the next initiate) as the timer falls due: the connection
    times out in the host, and the offload is refused, nothing left queued."""
    rig, conn, wire = _host_in_fin_wait_2()
    rig.clock.advance(FIN_WAIT_2_S + 1)  # the expiry posted, not yet delivered
    offload = Reply()
    rig.host.app_offload(conn, None, offload)  # queued behind it
    rig.run()
    assert offload.done and offload.error is not None, offload
    assert _aborts(rig, conn) == [{"path": "host", "reason": "TimeoutExpiration"}]
    assert rig.contexts() == [] and wire.reset_sent
    _closed_and_drained(rig, conn)
