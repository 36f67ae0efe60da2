"""The kernel's timeout the target meets after the host's terminate began, marked on the
ordinary path (`wire.TIMEOUT_MARK`, [EMU] spec §4.7, §5.2), where the roads it takes end.

- A NIC that fails under the MUX (spec §5.5: PAUSE and UPLOAD_ALL, and the MUX asks up only
  its connections, one `TcpIndicateRetrieve` each): its terminate is the host's like any
  other, and the timeout comes up through the MUX and the IM above it behind the peer's
  bytes, read as the timeout, not as the peer's reset.
- A host that closed and forgot the connection before the mark reached it: the target no
  longer asks whether anyone is home (it used to, posting the timeout to the socket's home),
  so the host's ordinary path drops it, as the target did before; nothing else hears of it.

The real host stack over the target(s), on MemoryWires: no sockets, no sleeps."""

from __future__ import annotations

from chimneyd.drivers.segment import TH_RST
from chimneyd.drivers.wire import TIMEOUT_MARK
from chimneyd.ndis.lifecycle import Phase, TcpState
from tests.unit.test_timeout_hop_by_hop import ORDINARY, HostTimeline, Rig, _read_all


def test_a_failed_nic_s_connection_reads_the_bytes_then_the_timeout() -> None:
    rig = Rig("team")
    conn, wire = rig.open()
    rig.offload(conn)
    target = rig.target
    timeline = HostTimeline(rig, conn)
    target.fail_adapter()
    queue = rig.scheduler.queue
    while not (
        queue[0][0] is target and getattr(queue[0][1], "__name__", "") == "MiniportTerminateOffload"
    ):
        rig.scheduler.run_one()
        rig.host.after_batch()
    wire.peer_send(b"late bytes")  # posted to the target, behind the terminate
    wire.kernel_timeout()  # and its WireTimeout behind them
    rig.run()
    assert timeline.im_held_segments_at_timeout  # the MUX or the IM held the bytes then
    assert timeline.order() == ["data@0", "timeout"]
    tcb = rig.host.tcbs[conn]
    assert tcb.lifecycle.tcp is TcpState.RESET
    got, ended = _read_all(rig, conn)
    assert got == b"late bytes" and "timed out" in ended, (got, ended)
    aborts = [i for c, e, i in rig.events if c == conn and e == "TcpIndicateAbort"]
    assert aborts == [{"path": "host", "reason": "TimeoutExpiration"}], rig.events
    assert rig.problems() == []


def test_the_timeout_of_a_connection_the_host_forgot_reaches_nobody() -> None:
    rig = Rig("two_ims")
    conn, wire = rig.open()
    rig.offload(conn)
    rig.host.app_upload(conn, lambda value, error: None)
    rig.host.after_batch()
    target = rig.target
    queue = rig.scheduler.queue
    while not (
        queue[0][0] is target and getattr(queue[0][1], "__name__", "") == "MiniportTerminateOffload"
    ):
        rig.scheduler.run_one()
        rig.host.after_batch()
    wire.kernel_timeout()  # its WireTimeout is posted to the target, behind the terminate
    tcb = rig.host.tcbs[conn]
    while tcb.lifecycle.phase is not Phase.IDLE:  # until the host has the connection back
        rig.scheduler.run_one()
        rig.host.after_batch()
    marked = [d for d in rig.scheduler.queue if getattr(d[1], "__name__", "") == ORDINARY]
    assert len(marked) == 1  # the timeout, still on its way up
    homes: list[object] = []  # whom the socket names as its home as each reaches the host
    rig.scheduler.observers.append(
        lambda d: (
            homes.append(wire.home_ctx) if d.layer is rig.host and d.handler == ORDINARY else None
        )
    )
    close = rig.call(rig.host.app_close, conn)
    assert close.done and close.error is None, close
    assert conn not in rig.host.tcbs
    assert homes == [None]  # closed and forgotten before the timeout reached the host
    reached = rig.scheduler.delivered(rig.host, ORDINARY)
    assert [d.args[2:] for d in reached] == [(0, b"", TH_RST | TIMEOUT_MARK)]
    names = rig.event_names(conn)
    assert "TcpIndicateAbort" not in names and names[-1] == "closed", names
    assert rig.problems() == []
