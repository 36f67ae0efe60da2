"""The push timer where the emulation can know (spec §4.2): a pre-filled push-mode request, data
without PSH (forwarded segments, BufferedData handed down at offload), the restart on new data —
and a read from the socket still completing a push-mode request at once."""

from __future__ import annotations

from chimneyd.drivers.segment import TH_ACK, TH_PSH, build_segment, parse_segment
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.nbl import NetBufferList, iter_chain
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing import MemoryWire, Stack
from chimneyd.testing.clock import Delivery
from chimneyd.testing.factories import loopback_target_stack
from chimneyd.testing.hostrig import HostRig

TICKS = 0.2  # engine.push_ticks_ms = 200


class Conn:
    def __init__(self, buffered: bytes = b"", refuse: bool = False) -> None:
        self.st: Stack = loopback_target_stack(push_ticks_ms=int(TICKS * 1000))
        if refuse:
            self.st.top.receive_policy = lambda nbl: (S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0)
        self.wire: MemoryWire = self.st.wires.open()
        if buffered:
            self.wire.peer_send(buffered)  # read by the host before the offload
        self.st.run()
        top = self.top = self.st.top
        tree = top.connection_tree([])
        path = tree.root.dependent_block_list
        assert path is not None
        block = path.add_dependent(top.tcp_block(self.wire, buffered=buffered))
        assert block.offload_handle is not None
        self.handle = block.offload_handle
        top.initiate(tree.root)
        self.st.run()

    def segment(self, offset: int, data: bytes, flags: int = TH_ACK) -> None:
        w = self.wire
        self.top.forward(
            self.handle, build_segment(w.remote[1], w.local[1], seq(w.irs, offset), 0, flags, data)
        )
        self.st.run()

    def received(self) -> list[NetBufferList]:
        return self.top.completed("receive")


def test_a_read_from_the_socket_completes_a_push_mode_request_at_once() -> None:
    c = Conn()
    (post,) = c.top.receive(c.handle, 100)
    c.st.run()
    c.wire.peer_send(b"abc")
    c.st.run()
    assert c.received() == [post] and post.tcp_offload_bytes_transferred == 3


def test_new_data_restarts_the_push_timer() -> None:
    c = Conn()
    (post,) = c.top.receive(c.handle, 100)
    c.st.run()
    c.segment(0, b"abc")  # no PSH: the timer starts
    c.st.advance(0.15)
    c.segment(3, b"de")  # more data while it runs: it starts again (spec §4.2)
    c.st.advance(0.15)
    assert c.received() == []  # 0.3 s after the first byte, but 0.15 s after the last
    c.st.advance(0.06)
    assert c.received() == [post] and post.tcp_offload_bytes_transferred == 5
    assert c.top.received_data(c.handle) == b"abcde"


def test_a_pushed_segment_completes_the_partly_filled_request() -> None:
    c = Conn()
    (post,) = c.top.receive(c.handle, 100)
    c.st.run()
    c.segment(0, b"abc")
    c.segment(3, b"de", TH_ACK | TH_PSH)
    assert c.received() == [post] and post.tcp_offload_bytes_transferred == 5


def test_a_prefilled_push_mode_request_completes_on_the_timer() -> None:
    """The host placed bytes before posting (`TcpReceiveBytesTransferred` != 0): the push timer
    starts at once and completes the request even if nothing more arrives (spec §4.2)."""
    c = Conn()
    req = NetBufferList.for_receive(100)
    req.tcp_receive_bytes_transferred = 7  # in front of the NB's data [EMU]
    c.top.io_returns.append(
        c.st.ndis.NdisOffloadTcpReceive(c.top, c.handle, c.top._nbls(c.handle, [req]))
    )
    c.st.run()
    c.st.advance(TICKS - 0.01)
    assert c.received() == []
    c.st.advance(0.02)
    assert c.received() == [req]
    assert req.status == S.NDIS_STATUS_SUCCESS and req.tcp_offload_bytes_transferred == 0


def test_buffered_data_handed_down_is_not_pushed() -> None:
    c = Conn(buffered=b"hello", refuse=True)
    assert [i.data for i in c.top.indications] == [b"hello"]  # indicated first (spec §3.2.7)
    (post,) = c.top.receive(c.handle, 100)  # refused, then a larger request
    c.st.run()
    assert c.received() == []  # partly filled by data whose PSH nobody handed down
    c.st.advance(TICKS - 0.01)
    assert c.received() == []
    c.st.advance(0.02)
    assert c.received() == [post] and c.top.received_data(c.handle) == b"hello"


def test_the_host_forwards_one_read_with_psh_on_its_last_segment_only() -> None:
    rig = HostRig()
    conn, wire = rig.open()
    segments: list[tuple[int, int, bytes]] = []

    def seen(d: Delivery) -> None:  # read before the target consumes them
        if d.handler == "MiniportTcpOffloadForward":
            for nbl in iter_chain(d.args[1]):
                sequence, flags, payload = parse_segment(b"".join(nbl.views()))
                segments.append((sequence, flags, bytes(payload)))

    rig.scheduler.observers.append(seen)
    done: list[object] = []
    rig.host.app_offload(conn, None, lambda v, e: done.append(v))  # queued for this drain
    rig.host.after_batch()  # the drain ends: the initiate goes down
    big = bytes(range(256)) * 400  # one read, more than one segment's payload
    wire.peer_send(big)  # arrives while the initiate is in flight: forwarded after it
    rig.run()
    assert done and rig.host.tcbs[conn].state == "offloaded"
    assert len(segments) == 2
    assert [bool(flags & TH_PSH) for _, flags, _ in segments] == [False, True]
    assert b"".join(p for _, _, p in segments) == big
