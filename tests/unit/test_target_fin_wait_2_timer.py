"""The FIN_WAIT_2 timer of an offloaded connection (docs/spec.md §8 timer table): 120 s from
entering FIN_WAIT_2, restarted by each acceptable segment; on expiry the target asks for a
`TimeoutExpiration` upload (spec §5.2: mandatory) and hands the connection back CLOSED.

The kernel socket the target holds never times FIN_WAIT_2 out itself while its descriptor is
open (Linux's `tcp_fin_timeout` is for orphaned sockets), so an offloaded active closer whose
peer never closed stayed offloaded for ever. The target keeps the timer on the injected clock,
one per connection and only while it is in FIN_WAIT_2.

The real host stack over the target, on MemoryWires, with the invariant checker on; the clock
is the rig's `ManualClock` (no sockets, no sleeps)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from chimneyd.ndis.lifecycle import Phase, TcpState
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadConnectionState as TcpConn
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.hostrig import HostRig
from tests.unit.test_target_ndis_rules import Conn

SUCCESS = "NDIS_STATUS_SUCCESS"
TIMED_OUT = "timed out (TimeoutExpiration)"
FIN_WAIT_2_S = 120.0


def _retrieves(rig: HostRig, conn: int) -> list[str]:
    return [i["reason"] for c, e, i in rig.events if c == conn and e == "TcpIndicateRetrieve"]


def _timers(rig: HostRig) -> int:
    return int(rig.target.leftovers().get("fin_wait_2_timers", 0))


def _in_fin_wait_2(im: bool = False, **host_options: Any) -> tuple[HostRig, int, Any]:
    """An offloaded connection whose FIN the peer acknowledged (FIN_WAIT_2), at clock 0."""
    rig = HostRig(im=im, host_options=host_options or None)
    conn, wire = rig.open()
    rig.offload(conn)
    assert _timers(rig) == 0  # none while ESTABLISHED
    rig.half_close(conn, wire)
    (ctx,) = rig.contexts()
    assert ctx.tcp is TcpState.FIN_WAIT_2
    assert _timers(rig) == 1
    return rig, conn, wire


def _kernel_heard_nothing_since(wire: Any, ms: int = 10**9) -> None:
    """The kernel has heard nothing from the peer for `ms`: read when the target stopped
    reading the socket (back-pressure) and sees no segment itself."""
    wire.info = replace(wire.info, last_data_recv_ms=ms, last_ack_recv_ms=ms)


def _closed_and_drained(rig: HostRig, conn: int) -> None:
    close = rig.call(rig.host.app_close, conn)
    assert close.value is True and close.error is None, close
    assert rig.problems() == []
    assert all(v == 0 for v in rig.target.leftovers().values()), rig.target.leftovers()
    assert len(rig.target.table) == 0


@pytest.mark.parametrize("im", [False, True], ids=["direct", "through_an_im"])
@pytest.mark.parametrize("host_room", [1 << 16, 4], ids=["host_takes_all", "target_holds"])
def test_expiry_asks_for_a_timeout_upload_and_the_host_reads_every_byte_then_the_timeout(
    im: bool, host_room: int
) -> None:
    """The peer sends bytes and never its FIN; the application reads none. 120 s after the
    last of them the target asks for the upload (`TimeoutExpiration`, once), the connection
    comes back CLOSED, not reset by an RST (no `TcpIndicateAbort`) and not a graceful end:
    the application reads every byte, then the timeout, once."""
    rig, conn, wire = _in_fin_wait_2(im, rx_buffer_bytes=host_room)
    wire.peer_send(b"half ")
    wire.peer_send(b"closed")
    rig.run()
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S - 1)
    assert _retrieves(rig, conn) == [] and rig.contexts() != []
    rig.advance(2)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"], rig.events
    assert "TcpIndicateAbort" not in rig.event_names(conn)
    assert rig.contexts() == [], "not uploaded"
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.phase is Phase.IDLE and tcb.lifecycle.tcp is TcpState.RESET
    assert _timers(rig) == 0
    got = b""
    for _ in range(32):
        r = rig.call(rig.host.app_recv, conn, 3, False)
        assert r.done, r
        if r.error is not None:
            assert TIMED_OUT in str(r.error), r
            break
        assert r.value, "an end of stream the peer never sent"
        got += r.value
    else:
        raise AssertionError("no timeout read")
    assert got == b"half closed"
    rig.advance(FIN_WAIT_2_S * 3)  # nothing further is asked for
    assert _retrieves(rig, conn) == ["TimeoutExpiration"]
    _closed_and_drained(rig, conn)


def test_each_segment_restarts_the_timer() -> None:
    """Bytes from the peer every 100 s keep the connection: the timer runs 120 s from the
    last of them, and only then expires."""
    rig, conn, wire = _in_fin_wait_2()
    pending = rig.clock.pending
    for i in range(3):
        rig.advance(100)
        wire.peer_send(b"tick %d " % i)
        rig.run()
        assert rig.clock.pending == pending, "a timer per segment"
    rig.advance(FIN_WAIT_2_S - 1)
    assert _retrieves(rig, conn) == []
    rig.advance(2)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"]
    first = rig.call(rig.host.app_recv, conn, 64, False)
    assert first.value == b"tick 0 tick 1 tick 2 ", first
    _closed_and_drained(rig, conn)


def test_the_peer_s_fin_cancels_the_timer() -> None:
    """The peer's FIN before the 120 s: TIME_WAIT, the upload asked for as such
    (`UploadRequested`), the timer gone; no timeout later, the application reads the end."""
    rig, conn, wire = _in_fin_wait_2()
    rig.advance(100)
    wire.peer_send(b"bye")
    wire.peer_fin()
    rig.run()
    assert _timers(rig) == 0
    rig.advance(FIN_WAIT_2_S * 3)
    assert _retrieves(rig, conn) == ["UploadRequested"], rig.events
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.TIME_WAIT
    assert rig.call(rig.host.app_recv, conn, 64, False).value == b"bye"
    assert rig.call(rig.host.app_recv, conn, 64, False).value == b""
    _closed_and_drained(rig, conn)


@pytest.mark.parametrize("how", ["upload", "close", "peer_reset"])
def test_leaving_fin_wait_2_otherwise_cancels_the_timer(how: str) -> None:
    """An upload the application asks for, `tcp.close`, an RST: the timer goes with the
    state, and its expiry time passes with nothing asked for."""
    rig, conn, wire = _in_fin_wait_2()
    rig.advance(60)
    if how == "upload":
        assert rig.call(rig.host.app_upload, conn).done
    elif how == "close":
        assert rig.call(rig.host.app_close, conn).value is True
    else:
        wire.peer_reset()
        rig.run()
    assert _timers(rig) == 0
    rig.advance(FIN_WAIT_2_S * 3)
    assert "TimeoutExpiration" not in _retrieves(rig, conn), rig.events
    assert rig.problems() == []
    if how != "close":
        _closed_and_drained(rig, conn)


def test_no_timer_outside_fin_wait_2() -> None:
    """ESTABLISHED, CLOSE_WAIT, LAST_ACK: no timer, however long the connection idles."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    rig.advance(FIN_WAIT_2_S * 3)
    wire.peer_fin()
    rig.run()
    rig.advance(FIN_WAIT_2_S * 3)
    disconnect = rig.call(rig.host.app_disconnect, conn, False)
    rig.advance(FIN_WAIT_2_S * 3)  # LAST_ACK: the FIN's retransmission is the kernel's
    assert not disconnect.done
    assert _timers(rig) == 0 and _retrieves(rig, conn) == []
    wire.ack()
    rig.run()
    assert disconnect.value == SUCCESS
    _closed_and_drained(rig, conn)


def test_while_reading_is_stopped_the_kernel_s_news_of_the_peer_restarts_the_timer() -> None:
    """[EMU] The host reads nothing and the target's bound is reached: the target stops
    reading the socket and sees no segment, but the kernel hears the peer (its window probes
    are acceptable segments). At the 120 s the kernel last heard it 10 s ago: the timer runs
    on, 120 s from then; once the kernel has heard nothing for that long, it expires."""
    rig, conn, wire = _in_fin_wait_2(rx_buffer_bytes=4)
    wire.peer_send(b"more than the host takes")
    rig.run()
    (ctx,) = rig.contexts()
    assert ctx.paused, "the target still reads the socket"
    _kernel_heard_nothing_since(wire, 10_000)
    rig.advance(FIN_WAIT_2_S + 1)
    assert _retrieves(rig, conn) == [] and _timers(rig) == 1
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S - 10)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"]
    got = b""
    while True:
        r = rig.call(rig.host.app_recv, conn, 64, False)
        if r.error is not None:
            assert TIMED_OUT in str(r.error), r
            break
        got += r.value
    assert got == b"more than the host takes"
    _closed_and_drained(rig, conn)


def test_a_query_tells_what_is_left_and_a_re_offload_starts_the_timer_again() -> None:
    """In FIN_WAIT_2 the delegated `RetransmitTimeoutDelta` is the FIN_WAIT_2 timer (spec §8):
    a query 30 s in reads 90 s (in ticks); uploaded and offloaded again (the host keeps no
    FIN_WAIT_2 timer and hands down -1), the connection has its timer once more."""
    rig, conn, _wire = _in_fin_wait_2()
    rig.advance(30)
    query = rig.call(rig.host.app_query, conn)
    ticks = rig.target.params.TicksPerSecond
    assert query.value["RetransmitTimeoutDelta"] == 90 * ticks, query
    assert rig.call(rig.host.app_upload, conn).done
    assert _timers(rig) == 0
    rig.offload(conn)
    assert _timers(rig) == 1
    rig.advance(FIN_WAIT_2_S + 1)
    assert _retrieves(rig, conn) == ["TimeoutExpiration"]
    _closed_and_drained(rig, conn)


@pytest.mark.parametrize(("delta", "expires_s"), [(5, 5.0), (-1, FIN_WAIT_2_S), (0, 0.0)])
def test_an_offload_in_fin_wait_2_starts_from_the_host_s_delta(
    delta: int, expires_s: float
) -> None:
    """The host offloads a connection in FIN_WAIT_2 with its timer in `RetransmitTimeoutDelta`
    (ticks; -1 not running: a fresh 120 s; 0: expires at once, spec §8)."""
    c = Conn()
    c.wire.write_eof()
    c.wire.ack()  # our FIN was sent and acknowledged before the offload
    tree = c.top.connection_tree([])
    path = tree.root.dependent_block_list
    assert path is not None
    block = path.add_dependent(c.top.tcp_block(c.wire))
    block.delegated.State = TcpConn.TcpConnectionFinWait2
    ticks = 1000  # the parameters' TicksPerSecond (the stub sets none: the default)
    block.delegated.RetransmitTimeoutDelta = delta * ticks if delta > 0 else delta
    assert block.offload_handle is not None
    c.handle = block.offload_handle
    c.top.initiate(tree.root)
    c.st.run()
    assert c.top.state_completions[-1].statuses[-1] == S.NDIS_STATUS_SUCCESS
    if expires_s:
        c.st.advance(expires_s - 0.5)
        assert c.events() == []
    c.st.advance(1)
    assert c.events() == [
        (TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.TimeoutExpiration)
    ]


def test_a_fin_the_kernel_holds_behind_unread_bytes_is_no_timeout() -> None:
    """[EMU] Reading stopped by back-pressure, the peer's last bytes and its FIN wait in the
    kernel, which left FIN_WAIT_2 on the FIN (its socket CLOSED) and has heard nothing since:
    no timeout, however long the application waits. Once it reads, the target reads the
    socket again, takes the FIN (TIME_WAIT) and asks for the upload as such; the application
    reads every byte, then the end of stream."""
    rig, conn, wire = _in_fin_wait_2(rx_buffer_bytes=4)
    wire.peer_send(b"more than the host takes")
    rig.run()
    (ctx,) = rig.contexts()
    assert ctx.paused
    wire.peer_send(b", then a FIN")
    wire.peer_fin()
    rig.run()
    wire.info = replace(wire.info, state=7)  # TCP_CLOSE: the kernel took the FIN
    _kernel_heard_nothing_since(wire)
    rig.advance(FIN_WAIT_2_S * 5)
    assert _retrieves(rig, conn) == []
    got = b""
    while True:
        r = rig.call(rig.host.app_recv, conn, 64, False)
        assert r.done and r.error is None, r
        if r.value == b"":
            break
        got += r.value
    assert got == b"more than the host takes, then a FIN"
    assert _retrieves(rig, conn) == ["UploadRequested"]
    assert rig.host.tcbs[conn].lifecycle.tcp is TcpState.TIME_WAIT
    _closed_and_drained(rig, conn)
