"""The host's FIN_WAIT_2 timer (docs/spec.md §8 timer table: "FIN_WAIT_2 | carried:
Retransmit.TimeoutDelta doubles as it | initial 120 s; restarted by each acceptable segment").

The target keeps the timer while the connection is offloaded and hands back what is left of it
in `RetransmitTimeoutDelta` at an upload. A connection the host carries in FIN_WAIT_2 (after an
upload, or after its own FIN was acknowledged in host mode) runs the timer on the host's clock:
from the delta handed back (-1: 120 s; 0: at once), restarted by each segment the host reads
from the peer, stopped by the peer's FIN, an RST, `tcp.close` and an offload, which hands down
what is left. On expiry the connection ends as at the kernel's timeout: the application reads
every byte, then the timeout, once.

The real host stack over the target, on MemoryWires, with the invariant checker on; the clock
is the rig's `ManualClock` (no sockets, no sleeps)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from chimneyd.ndis.lifecycle import Phase, TcpState
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadConnectionState as TcpConn
from chimneyd.testing.factories import fail_next
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_target_fin_wait_2_timer import _in_fin_wait_2

SUCCESS = "NDIS_STATUS_SUCCESS"
TIMED_OUT = "timed out (TimeoutExpiration)"
FIN_WAIT_2_S = 120.0
NS = 1_000_000_000


def _retrieves(rig: HostRig, conn: int) -> list[str]:
    return [i["reason"] for c, e, i in rig.events if c == conn and e == "TcpIndicateRetrieve"]


def _host_timers(rig: HostRig) -> int:
    return int(rig.host.leftovers().get("fin_wait_2_timers", 0))


def _host_in_fin_wait_2(**host_options: Any) -> tuple[HostRig, int, Any]:
    """A connection the host carries, its own FIN acknowledged (FIN_WAIT_2), at clock 0."""
    rig = HostRig(host_options=host_options or None)
    conn, wire = rig.open()
    assert _host_timers(rig) == 0
    rig.half_close(conn, wire)
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.phase is Phase.IDLE and tcb.lifecycle.tcp is TcpState.FIN_WAIT_2
    assert _host_timers(rig) == 1
    return rig, conn, wire


def _alive(rig: HostRig, conn: int) -> bool:
    tcb = rig.host.tcbs[conn]
    return tcb.lifecycle.tcp is TcpState.FIN_WAIT_2 and "TcpIndicateAbort" not in (
        rig.event_names(conn)
    )


def _timed_out(rig: HostRig, conn: int, wire: Any, expected: bytes) -> None:
    """The connection ended as at a kernel timeout: reset, one `TcpIndicateAbort` saying
    `TimeoutExpiration`; the application reads every byte, then the timeout, once, then the
    same error as any read of a dead connection; the peer was sent an RST."""
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.RESET, tcb.lifecycle.tcp
    aborts = [i for c, e, i in rig.events if c == conn and e == "TcpIndicateAbort"]
    assert aborts == [{"path": "host", "reason": "TimeoutExpiration"}], rig.events
    assert _host_timers(rig) == 0
    got = b""
    for _ in range(32):
        r = rig.call(rig.host.app_recv, conn, 4, False)
        assert r.done, r
        if r.error is not None:
            assert TIMED_OUT in str(r.error), r
            break
        assert r.value, "an end of stream the peer never sent"
        got += r.value
    else:
        raise AssertionError("no timeout read")
    assert got == expected
    # at the expiry, or once the application read what the kernel held (reading stopped)
    assert wire.reset_sent, "the peer was not told"


def _closed_and_drained(rig: HostRig, conn: int) -> None:
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True and close.error is None, close
    assert rig.problems() == []
    assert all(v == 0 for v in rig.host.leftovers().values()), rig.host.leftovers()
    assert all(v == 0 for v in rig.target.leftovers().values()), rig.target.leftovers()
    assert rig.clock.pending == 0, "a timer left armed"


def test_after_an_upload_the_host_times_out_with_what_the_target_handed_back() -> None:
    """Uploaded 30 s into FIN_WAIT_2, the peer's bytes unread: the target hands back 90 s,
    and 90 s later the host ends the connection as timed out; not before."""
    rig, conn, wire = _in_fin_wait_2()
    wire.peer_send(b"half closed")
    rig.run()
    rig.advance(30)
    assert rig.call(rig.host.app_upload, conn).done
    assert rig.contexts() == []
    assert _host_timers(rig) == 1
    rig.advance(90 - 1)
    assert _alive(rig, conn)
    rig.advance(2)
    assert not _retrieves(rig, conn)  # the host's own: no target to ask
    _timed_out(rig, conn, wire, b"half closed")
    rig.advance(FIN_WAIT_2_S * 3)  # once
    assert [e for e in rig.event_names(conn) if e == "TcpIndicateAbort"] == ["TcpIndicateAbort"]
    _closed_and_drained(rig, conn)


def test_a_delta_of_zero_expires_at_once_on_the_host() -> None:
    """The target's timer was due when the terminate took it (spec §8: 0 returned by the
    target expires at once on the host): timed out with no time passing."""
    rig, conn, wire = _in_fin_wait_2()
    (ctx,) = rig.contexts()
    # the peer last heard 200 s ago as far as the target's timer goes (its record, no function)
    rig.target.fin_wait_2[ctx.id].heard_ns -= 200 * NS
    assert rig.call(rig.host.app_upload, conn).done
    rig.advance(0)
    _timed_out(rig, conn, wire, b"")
    _closed_and_drained(rig, conn)


def test_host_mode_fin_acked_starts_it_and_each_segment_restarts_it() -> None:
    """Carried by the host throughout: 120 s from its FIN's ACK, restarted by each segment
    read from the peer; one timer, not one per segment."""
    rig, conn, wire = _host_in_fin_wait_2()
    assert _host_timers(rig) == 1
    pending = rig.clock.pending
    for i in range(3):
        rig.advance(100)
        wire.peer_send(b"tick %d " % i)
        rig.run()
        assert rig.clock.pending == pending, "a timer per segment"
        assert _alive(rig, conn)
    rig.advance(FIN_WAIT_2_S - 1)
    assert _alive(rig, conn)
    rig.advance(2)
    _timed_out(rig, conn, wire, b"tick 0 tick 1 tick 2 ")
    _closed_and_drained(rig, conn)


@pytest.mark.parametrize("uploaded", [False, True], ids=["host_mode", "after_upload"])
def test_the_peer_s_fin_cancels_it(uploaded: bool) -> None:
    """The peer's FIN before the time is up: TIME_WAIT, the timer gone, no timeout ever; the
    application reads the end of stream."""
    if uploaded:
        rig, conn, wire = _in_fin_wait_2()
        assert rig.call(rig.host.app_upload, conn).done
    else:
        rig, conn, wire = _host_in_fin_wait_2()
    assert _host_timers(rig) == 1
    rig.advance(100)
    wire.peer_send(b"bye")
    wire.peer_fin()
    rig.run()
    assert rig.host.tcbs[conn].lifecycle.tcp is TcpState.TIME_WAIT
    assert _host_timers(rig) == 0
    rig.advance(FIN_WAIT_2_S * 3)
    assert "TcpIndicateAbort" not in rig.event_names(conn)
    assert rig.call(rig.host.app_recv, conn, 64, False).value == b"bye"
    assert rig.call(rig.host.app_recv, conn, 64, False).value == b""
    _closed_and_drained(rig, conn)


@pytest.mark.parametrize("how", ["close", "peer_reset", "abortive_disconnect"])
def test_close_and_reset_cancel_it(how: str) -> None:
    """`tcp.close`, the peer's RST, the application's abortive disconnect: the timer goes."""
    rig, conn, wire = _host_in_fin_wait_2()
    rig.advance(60)
    if how == "close":
        assert rig.call(rig.host.app_close, conn).value is True
    elif how == "peer_reset":
        wire.peer_reset()
        rig.run()
    else:
        assert rig.call(rig.host.app_disconnect, conn, True).value == SUCCESS
    assert _host_timers(rig) == 0
    rig.advance(FIN_WAIT_2_S * 3)
    assert all(i.get("reason") != "TimeoutExpiration" for c, e, i in rig.events), rig.events
    if how != "close":
        _closed_and_drained(rig, conn)
    else:
        assert rig.problems() == [] and rig.clock.pending == 0


def test_an_offload_hands_down_what_is_left() -> None:
    """30 s into FIN_WAIT_2 in the host, offloaded: `RetransmitTimeoutDelta` says 90 s (in
    ticks), the host's timer is gone, and the target times the connection out 90 s later."""
    rig, conn, _wire = _host_in_fin_wait_2()
    rig.advance(30)
    rig.offload(conn)
    assert _host_timers(rig) == 0
    query = rig.call(rig.host.app_query, conn)
    ticks = rig.target.params.TicksPerSecond
    assert query.value["RetransmitTimeoutDelta"] == 90 * ticks, query
    rig.advance(90 - 1)
    assert _retrieves(rig, conn) == []
    rig.advance(2)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"]
    _closed_and_drained(rig, conn)


def test_due_while_an_offload_is_below_it_expires_in_the_host_when_the_offload_fails() -> None:
    """The timer falls due while the initiate is below (it handed down what was left): the
    connection is not the host's to end then; the initiate fails, and it times out at once."""
    rig, conn, wire = _host_in_fin_wait_2()
    wire.peer_send(b"late")
    rig.run()
    rig.advance(100)
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    offload = Reply()
    rig.host.app_offload(conn, None, offload)
    held = rig.hold_below("MiniportInitiateOffload")
    rig.advance(30)
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.OFFLOADING
    assert _alive(rig, conn)
    rig.release(held)
    assert offload.done and offload.error is not None, offload
    rig.advance(0)
    _timed_out(rig, conn, wire, b"late")
    _closed_and_drained(rig, conn)


def test_uploads_and_offloads_in_turn_do_not_put_the_end_off() -> None:
    """50 s offloaded, 50 s in the host, offloaded again: 20 s later it times out, 120 s after
    the peer was last heard, wherever the connection was meanwhile."""
    rig, conn, _wire = _in_fin_wait_2()
    rig.advance(50)
    assert rig.call(rig.host.app_upload, conn).done
    rig.advance(50)
    rig.offload(conn)
    rig.advance(20 - 1)
    assert _retrieves(rig, conn) == []
    rig.advance(2)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"]
    _closed_and_drained(rig, conn)


def test_no_timer_outside_fin_wait_2() -> None:
    """ESTABLISHED, CLOSE_WAIT, LAST_ACK in the host: no timer, however long it idles."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.advance(FIN_WAIT_2_S * 3)
    assert _host_timers(rig) == 0 and rig.clock.pending == 0
    wire.peer_fin()
    rig.run()
    rig.advance(FIN_WAIT_2_S * 3)
    disconnect = rig.call(rig.host.app_disconnect, conn, False)
    wire.ack()
    rig.run()
    assert disconnect.value == SUCCESS
    assert _host_timers(rig) == 0 and rig.clock.pending == 0
    assert "TcpIndicateAbort" not in rig.event_names(conn)
    _closed_and_drained(rig, conn)


def _kernel_heard_nothing_since(wire: Any, ms: int = 10**9) -> None:
    wire.info = replace(wire.info, last_data_recv_ms=ms, last_ack_recv_ms=ms)


def test_while_the_host_reads_nothing_the_kernel_s_news_of_the_peer_counts() -> None:
    """[EMU] The application reads nothing and the host's buffer is full: it stops reading
    the socket and reads no segment, but the kernel hears the peer. At the 120 s the kernel
    last heard it 10 s ago: the timer runs on, 120 s from then; once the kernel has heard
    nothing for that long, it expires."""
    rig, conn, wire = _host_in_fin_wait_2(rx_buffer_bytes=4)
    wire.peer_send(b"more than the host takes")
    rig.run()
    assert rig.host.tcbs[conn].read_paused
    _kernel_heard_nothing_since(wire, 10_000)
    rig.advance(FIN_WAIT_2_S + 1)
    assert _alive(rig, conn) and _host_timers(rig) == 1
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S - 10)
    _timed_out(rig, conn, wire, b"more than the host takes")
    _closed_and_drained(rig, conn)


def test_a_fin_the_kernel_holds_behind_unread_bytes_is_no_timeout() -> None:
    """[EMU] Reading stopped, the peer's FIN waits in the kernel, which left FIN_WAIT_2 on it
    (its socket CLOSED): no timeout, however long the application waits; once it reads, the
    FIN comes (TIME_WAIT), and the application reads every byte, then the end of stream."""
    rig, conn, wire = _host_in_fin_wait_2(rx_buffer_bytes=4)
    wire.peer_send(b"more than the host takes")
    rig.run()
    assert rig.host.tcbs[conn].read_paused
    wire.peer_send(b", then a FIN")
    wire.peer_fin()
    rig.run()
    wire.info = replace(wire.info, state=7)  # TCP_CLOSE: the kernel took the FIN
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S * 5)
    assert _alive(rig, conn)
    got = b""
    while True:
        r = rig.call(rig.host.app_recv, conn, 64, False)
        assert r.done and r.error is None, r
        if r.value == b"":
            break
        got += r.value
    assert got == b"more than the host takes, then a FIN"
    assert rig.host.tcbs[conn].lifecycle.tcp is TcpState.TIME_WAIT
    assert _host_timers(rig) == 0
    _closed_and_drained(rig, conn)


def test_a_fin_acknowledged_while_the_upload_is_in_flight_starts_a_fresh_120_s() -> None:
    """The peer acknowledges the data and the FIN once the target has handed the connection
    back, before the host has taken it: the hand-back says FIN_WAIT_1, with the retransmit
    timer running in `RetransmitTimeoutDelta` and no FIN_WAIT_2 timer (the target never was
    in FIN_WAIT_2). The host reaches FIN_WAIT_2 on its own news of the ACK and reads no
    FIN_WAIT_2 time in that delta (spec §8: it doubles as the FIN_WAIT_2 timer only in
    FIN_WAIT_2): 120 s from the ACK, not the retransmit timer's 200 ms."""
    rig = HostRig()
    conn, wire = rig.open()
    wire.info = replace(wire.info, rto_us=200_000)
    rig.offload(conn)
    sent = rig.call(rig.host.app_send, conn, b"request")
    disconnect = rig.call(rig.host.app_disconnect, conn, False)
    assert not sent.done and not disconnect.done
    upload = Reply()
    rig.host.app_upload(conn, upload)
    rig.run_until("MiniportTerminateOffload")
    rig.scheduler.run_one()  # the terminate at the target, handed back at once
    wire.ack()
    rig.run()
    assert upload.done and sent.value == len(b"request") and disconnect.value == SUCCESS
    assert rig.contexts() == []
    tcb = rig.host.tcbs[conn]
    handed_back = tcb.delegated.state()
    assert handed_back.State is TcpConn.TcpConnectionFinWait1, handed_back.State
    assert handed_back.RetransmitTimeoutDelta >= 0, "no retransmit timer ran at the hand-back"
    assert tcb.lifecycle.tcp is TcpState.FIN_WAIT_2 and _host_timers(rig) == 1
    rig.advance(FIN_WAIT_2_S - 1)
    assert _alive(rig, conn)
    rig.advance(2)
    _timed_out(rig, conn, wire, b"")
    _closed_and_drained(rig, conn)
