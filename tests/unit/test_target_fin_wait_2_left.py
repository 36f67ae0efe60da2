"""What a query and the hand-back say is left of the FIN_WAIT_2 timer (docs/spec.md §8: in
FIN_WAIT_2 `Retransmit.TimeoutDelta` doubles as it; 0 returned by the target = expires at once
on the host) must be what the target itself goes by.

While back-pressure has stopped reading, the target's timer counts the kernel's news of the
peer too ([EMU], `disconnect.fin_wait_2_expired`): the peer's window probes are acceptable
segments the target never sees. A query or an upload then has to report the timer that
reading, not the one from the last segment the target itself saw: that one may be long due
on a connection the target keeps, and the host was told "expires at once".

The real host stack over the target, on MemoryWires, with the rig's ManualClock (no sockets,
no sleeps)."""

from __future__ import annotations

from dataclasses import replace

from chimneyd.ndis.lifecycle import TcpState
from chimneyd.testing.hostrig import HostRig

FIN_WAIT_2_S = 120


def _paused_in_fin_wait_2() -> tuple[HostRig, int]:
    """FIN_WAIT_2 at clock 0, the host's buffer full and the target's reading stopped."""
    rig = HostRig(host_options={"rx_buffer_bytes": 4})
    conn, wire = rig.open()
    rig.offload(conn)
    rig.half_close(conn, wire)
    wire.peer_send(b"more than the host takes")
    rig.run()
    (ctx,) = rig.contexts()
    assert ctx.tcp is TcpState.FIN_WAIT_2 and ctx.paused
    # the kernel last heard the peer 10 s ago: at 121 s the timer is due at 231 s
    wire.info = replace(wire.info, last_data_recv_ms=10_000, last_ack_recv_ms=10_000)
    rig.advance(FIN_WAIT_2_S + 1)
    assert rig.contexts() != [], "timed out though the kernel heard the peer"
    return rig, conn


def test_a_query_under_back_pressure_reports_the_timer_the_target_goes_by() -> None:
    rig, conn = _paused_in_fin_wait_2()
    query = rig.call(rig.host.app_query, conn)
    ticks = rig.target.params.TicksPerSecond
    assert query.value["RetransmitTimeoutDelta"] == 110 * ticks, query
    assert [e for c, e, _ in rig.events if c == conn and e == "TcpIndicateRetrieve"] == []


def test_the_hand_back_under_back_pressure_reports_the_timer_the_target_goes_by() -> None:
    rig, conn = _paused_in_fin_wait_2()
    upload = rig.call(rig.host.app_upload, conn)
    assert upload.done and upload.error is None, upload
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.FIN_WAIT_2
    assert tcb.delegated is not None
    ticks = rig.target.params.TicksPerSecond
    assert tcb.delegated.RetransmitTimeoutDelta == 110 * ticks, tcb.delegated.as_map()
    assert rig.problems() == []
