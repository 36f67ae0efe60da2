"""The FIN_WAIT_2 timer when reading the socket starts again (docs/spec.md §8 timer table:
restarted by each acceptable segment).

While reading is stopped the target sees no segment, and its timer counts the kernel's news
of the peer ([EMU] `fin_wait_2.heard_by_kernel`: the peer's window probes are acceptable
segments). When back-pressure lifts and reading starts again with nothing new to read, that
news must stay counted: dropped, the timer ran from the last segment the target read itself
and fired up to the length of the pause early, on a peer the kernel had just heard.

Counted at every start of reading, the kernel's news would override the host's
`RetransmitTimeoutDelta` at an offload in FIN_WAIT_2 too (the target takes the socket with
reading stopped and starts it at the initiate's completion): the kernel heard the peer while
the host had the connection, which the host's delta already covers (spec §8). The news
counts from the offload on.

The injected clock (`ManualClock`), MemoryWires; no sockets, no sleeps."""

from __future__ import annotations

from dataclasses import replace

from chimneyd.ndis.lifecycle import TcpState
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadConnectionState as TcpConn
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.hostrig import HostRig
from chimneyd.testing.memwire import MemoryWire
from tests.unit.test_target_ndis_rules import Conn

FIN_WAIT_2_S = 120.0


def _retrieves(rig: HostRig, conn: int) -> list[str]:
    return [i["reason"] for c, e, i in rig.events if c == conn and e == "TcpIndicateRetrieve"]


def _kernel_heard_the_peer_ago(wire: MemoryWire, seconds: float) -> None:
    ms = int(seconds * 1000)
    wire.info = replace(wire.info, last_data_recv_ms=ms, last_ack_recv_ms=ms)


def test_the_kernel_s_news_during_the_pause_counts_after_reading_resumes() -> None:
    """FIN_WAIT_2 at 0 s; the peer's bytes fill the host and the target stops reading. At
    100 s the kernel heard the peer 1 s ago (99 s); the application reads everything and the
    target reads the socket again, finding nothing new. The timer runs 120 s from 99 s: no
    timeout at 121 s, one just after 219 s."""
    rig = HostRig(host_options={"rx_buffer_bytes": 4})
    conn, wire = rig.open()
    rig.offload(conn)
    rig.half_close(conn, wire)
    wire.peer_send(b"more than the host takes")
    rig.run()
    (ctx,) = rig.contexts()
    assert ctx.tcp is TcpState.FIN_WAIT_2 and ctx.paused
    rig.advance(100)
    _kernel_heard_the_peer_ago(wire, 1)
    got = b""
    while len(got) < len(b"more than the host takes"):
        r = rig.call(rig.host.app_recv, conn, 64, False)
        assert r.done and r.error is None and r.value, r
        got += r.value
    assert got == b"more than the host takes"
    assert not ctx.paused, "reading did not start again"
    rig.advance(FIN_WAIT_2_S - 100 + 1)  # 121 s
    assert _retrieves(rig, conn) == [], "the kernel's news of the pause was dropped"
    rig.advance(219 - 121 - 1)  # 218 s
    assert _retrieves(rig, conn) == []
    rig.advance(2)  # 220 s
    assert _retrieves(rig, conn) == ["TimeoutExpiration"]
    assert rig.problems() == []


def test_an_offload_in_fin_wait_2_keeps_the_host_s_delta_when_reading_starts() -> None:
    """The host offloads in FIN_WAIT_2 with 5 s left; its kernel heard the peer 1 s before.
    Reading starts at the completion: the timer still expires at 5 s, not 119 s."""
    c = Conn()
    c.wire.write_eof()
    c.wire.ack()  # our FIN was sent and acknowledged before the offload
    _kernel_heard_the_peer_ago(c.wire, 1)
    tree = c.top.connection_tree([])
    path = tree.root.dependent_block_list
    assert path is not None
    block = path.add_dependent(c.top.tcp_block(c.wire))
    block.delegated.State = TcpConn.TcpConnectionFinWait2
    block.delegated.RetransmitTimeoutDelta = 5 * 1000  # ticks: the default TicksPerSecond
    assert block.offload_handle is not None
    c.handle = block.offload_handle
    c.top.initiate(tree.root)
    c.st.run()
    assert c.top.state_completions[-1].statuses[-1] == S.NDIS_STATUS_SUCCESS
    (ctx,) = c.st.under_test[0].connections()
    assert not ctx.paused, "reading did not start at the completion"
    c.st.advance(4.5)
    assert c.events() == []
    c.st.advance(1)
    assert c.events() == [
        (TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.TimeoutExpiration)
    ]
