"""Status paths of the offload target, with no sockets: the protocol stub over the target and a
MemoryWire whose acknowledgements the test controls (spec §4.1, §4.2, §4.5, §4.6, §5.1)."""

from __future__ import annotations

from chimneyd.drivers.segment import TH_ACK, TH_PSH, build_segment
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpDisconnectFlags, TcpOffloadEventType, TcpUploadReason
from chimneyd.testing import MemoryWire, OffloadTree, Stack
from chimneyd.testing.factories import loopback_target_stack

GRACEFUL = TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE
ABORTIVE = TcpDisconnectFlags.TCP_DISCONNECT_ABORTIVE_CLOSE


class Conn:
    """One offloaded connection on the target: the stack, its wire and its handle."""

    def __init__(self, push_ticks_ms: int = 500) -> None:
        self.st: Stack = loopback_target_stack(push_ticks_ms=push_ticks_ms)
        self.wire: MemoryWire = self.st.wires.open()
        self.wire.set_home(self.st.top, "host")
        self.top = self.st.top

    def offload(self, **tcp: object) -> Conn:
        tree = self.top.connection_tree([])
        path = tree.root.dependent_block_list
        assert path is not None
        block = path.add_dependent(self.top.tcp_block(self.wire, **tcp))  # type: ignore[arg-type]
        assert block.offload_handle is not None
        self.handle = block.offload_handle
        tree.tcp.append(self.handle)
        self.tree: OffloadTree = tree
        self.top.initiate(tree.root)
        self.st.run()
        assert self.top.state_completions[-1].statuses[-1] == S.NDIS_STATUS_SUCCESS
        return self

    def send(self, *payloads: bytes) -> list[NetBufferList]:
        nbls = self.top.send(self.handle, *payloads)
        self.st.run()
        return nbls

    def ack(self, upto: int | None = None) -> None:
        self.wire.ack(upto)
        self.st.run()

    def events(self) -> list[tuple[TcpOffloadEventType, int]]:
        return [(e.event_type, e.info) for e in self.top.events]


def test_send_completes_on_ack_not_on_write() -> None:
    c = Conn().offload()
    (nbl,) = c.send(b"x" * 1000)
    assert bytes(c.wire.peer_received) == b"x" * 1000 and c.top.completions == []
    c.ack(600)
    assert c.top.completions == []  # partly acknowledged is not complete (spec §4.1)
    c.ack(1000)
    assert c.top.completed("send") == [nbl] and nbl.status == S.NDIS_STATUS_SUCCESS
    assert nbl.tcp_offload_bytes_transferred == 1000 and nbl.data_length == 0


def test_rst_fails_sends_with_one_partial_then_aborted() -> None:
    c = Conn().offload()
    a, b, d = c.send(b"a" * 100, b"b" * 100, b"c" * 100)
    c.ack(150)  # a acknowledged, b half
    c.wire.peer_reset()
    c.st.run()
    # exactly one abort, raised before the outstanding sends complete (spec §5.1)
    assert c.events() == [(TcpOffloadEventType.TcpIndicateAbort, 0)]
    up = [d.handler for d in c.st.scheduler.delivered(c.top)]
    abort_at = up.index("ProtocolTcpOffloadEvent")
    assert up.index("ProtocolTcpOffloadSendComplete", abort_at) > abort_at
    assert c.top.completed("send") == [a, b, d]
    assert a.status == S.NDIS_STATUS_SUCCESS
    assert b.status == S.NDIS_STATUS_REQUEST_ABORTED
    # bytes transferred always equal the advance (spec §9 item 3)
    assert b.tcp_offload_bytes_transferred == 100 - b.data_length
    assert d.status == S.NDIS_STATUS_REQUEST_ABORTED and d.tcp_offload_bytes_transferred == 0
    # after the RST: every I/O is refused as aborted
    (late,) = c.send(b"late")
    assert late.status == S.NDIS_STATUS_REQUEST_ABORTED
    (post,) = c.top.receive(c.handle, 10)
    disc = c.top.disconnect(c.handle, GRACEFUL)
    w = c.wire
    (fwd,) = c.top.forward(
        c.handle, build_segment(w.remote[1], w.local[1], seq(w.irs, 0), 0, TH_ACK, b"x")
    )
    c.st.run()
    assert post.status == disc.status == fwd.status == S.NDIS_STATUS_REQUEST_ABORTED


def test_rst_reports_the_bytes_acknowledged_before_it() -> None:
    """The partial NBL of a failed send carries the bytes acknowledged (spec §4.1)."""
    c = Conn().offload()
    _, b = c.send(b"a" * 100, b"b" * 100)
    c.ack(150)
    c.wire.peer_reset()
    c.st.run()
    assert b.tcp_offload_bytes_transferred == 50 and b.data_length == 50


def test_mandatory_retrieve_refuses_sends_upload_in_progress() -> None:
    c = Conn().offload()
    (nic,) = c.st.under_test
    ctx = c.handle.miniport_offload_context
    nic.retrieve(ctx, TcpUploadReason.UploadRequested)  # type: ignore[attr-defined]
    c.st.run()
    assert c.events() == [
        (TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.UploadRequested)
    ]
    nic.retrieve(ctx, TcpUploadReason.UploadRequested)  # type: ignore[attr-defined]
    c.st.run()
    assert len(c.events()) == 1  # asked once: the request stands
    (nbl,) = c.send(b"after the request")
    assert nbl.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS and c.wire.peer_received == b""
    assert nbl.tcp_offload_bytes_transferred == 0


def test_receive_posted_after_fin_is_invalid_state() -> None:
    c = Conn().offload()
    c.wire.peer_send(b"hello")
    c.wire.peer_fin()
    c.st.run()
    assert [i.data for i in c.top.indications] == [b"hello"]
    assert c.events()[-1] == (TcpOffloadEventType.TcpIndicateDisconnect, 0)
    (post,) = c.top.receive(c.handle, 10)
    c.st.run()
    assert post.status == S.NDIS_STATUS_INVALID_STATE and post.tcp_offload_bytes_transferred == 0
    # the send half stays usable after the peer's FIN (spec §5.1)
    (nbl,) = c.send(b"reply")
    c.ack(5)
    assert nbl.status == S.NDIS_STATUS_SUCCESS


def test_graceful_disconnect_waits_for_earlier_sends_and_the_fin_ack() -> None:
    c = Conn().offload()
    (nbl,) = c.send(b"data")
    disc = c.top.disconnect(c.handle, GRACEFUL)
    c.st.run()
    assert c.wire.eof_written and c.top.completed("disconnect") == []
    c.ack(4)  # the data, not the FIN
    assert c.top.completed("send") == [nbl] and c.top.completed("disconnect") == []
    c.ack()
    assert c.top.completed("disconnect") == [disc] and disc.status == S.NDIS_STATUS_SUCCESS


def test_abortive_disconnect_sends_rst_and_aborts_sends() -> None:
    c = Conn().offload()
    (nbl,) = c.send(b"never acknowledged")
    disc = c.top.disconnect(c.handle, ABORTIVE)
    c.st.run()
    assert c.wire.reset_sent
    assert nbl.status == S.NDIS_STATUS_REQUEST_ABORTED
    assert disc.status == S.NDIS_STATUS_SUCCESS  # the RST went out


def test_forward_puts_segments_in_order_with_wire_data() -> None:
    c = Conn()
    c.wire.peer_send(b"hello")  # read by the host before the offload, not processed
    c.st.run()
    c.offload(rcv_nxt=0)
    c.wire.peer_send(b" world")  # after the gap: held until the forward fills it
    c.st.run()
    assert c.top.indications == []
    w = c.wire
    segment = build_segment(w.remote[1], w.local[1], seq(w.irs, 0), 0, TH_ACK | TH_PSH, b"hello")
    (fwd,) = c.top.forward(c.handle, segment)
    c.st.run()
    assert fwd.status == S.NDIS_STATUS_SUCCESS
    assert c.top.received_data(c.handle) == b"hello world"


def test_push_timer_completes_a_partly_filled_push_mode_receive() -> None:
    """A segment without PSH leaves a push-mode request partly filled; the push timer completes
    it after TcpPushTicks, and not before (spec §4.2)."""
    c = Conn(push_ticks_ms=200).offload()
    (post,) = c.top.receive(c.handle, 10)
    c.st.run()
    w = c.wire
    segment = build_segment(w.remote[1], w.local[1], seq(w.irs, 0), 0, TH_ACK, b"abc")
    c.top.forward(c.handle, segment)
    c.st.run()
    assert c.top.completed("receive") == []
    c.st.advance(0.15)
    assert c.top.completed("receive") == []
    c.st.advance(0.1)
    assert c.top.completed("receive") == [post]
    assert post.status == S.NDIS_STATUS_SUCCESS and post.tcp_offload_bytes_transferred == 3


def test_non_push_receive_waits_until_full() -> None:
    c = Conn(push_ticks_ms=200).offload()
    (post,) = c.top.receive(c.handle, 6, no_push=True)
    c.st.run()
    c.wire.peer_send(b"abc")  # pushed, but a non-push request ignores PSH (spec §4.2)
    c.st.run()
    c.st.advance(1.0)
    assert c.top.completed("receive") == []
    c.wire.peer_send(b"def")
    c.st.run()
    assert c.top.completed("receive") == [post] and c.top.received_data(c.handle) == b"abcdef"


def test_back_pressure_pauses_the_wire_and_resumes_it_when_drained() -> None:
    c = Conn()
    c.st = loopback_target_stack(rx_buffer_bytes=8)
    c.wire = c.st.wires.open()
    c.wire.set_home(c.st.top, "host")
    c.top = c.st.top
    c.offload()
    c.top.receive_policy = lambda nbl: (S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0)
    c.wire.peer_send(b"12345678")
    c.st.run()
    assert not c.wire.reading  # the target's buffer is full: TCP flow control holds the peer
    c.wire.peer_send(b"more")
    c.st.run()
    assert c.wire.bytes_read == 8  # the rest waits in the peer's "kernel"
    c.top.receive(c.handle, 8)
    c.st.run()
    assert c.wire.reading and c.wire.bytes_read == 12
