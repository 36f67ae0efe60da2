"""Status paths of the offload target, with no sockets: a protocol-edge stub over the NIC and an
in-memory wire whose acknowledgements the test controls (spec §4.1, §4.2, §4.5, §4.6, §5.1)."""

from __future__ import annotations

from typing import Any

from chimneyd.drivers.nic import OffloadTarget
from chimneyd.drivers.segment import TH_ACK, TH_PSH, build_segment
from chimneyd.drivers.wire import TcpInfo, seq
from chimneyd.ndis.blocks import (
    PathOffloadStateConst,
    TcpOffloadStateConst,
    TcpOffloadStateDelegated,
    new_neighbor_block,
    new_path_block,
    new_tcp_block,
)
from chimneyd.ndis.broker import Binding, Layer, Ndis, SyncScheduler
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpDisconnectFlags, TcpOffloadEventType, TcpUploadReason


class Proto(Layer):
    has_protocol_edge = True

    def __init__(self, ndis: Ndis) -> None:
        super().__init__("tcpip", ndis)
        self.done: dict[str, list[NetBufferList]] = {}
        self.events: list[tuple[TcpOffloadEventType, int]] = []
        self.indicated: list[bytes] = []

    def _record(self, kind: str, head: NetBufferList) -> None:
        self.done.setdefault(kind, []).extend(iter_chain(head))

    def ProtocolInitiateOffloadComplete(self, binding: Binding, root: Any) -> None:
        pass

    def ProtocolTcpOffloadSendComplete(self, binding: Binding, head: NetBufferList) -> None:
        self._record("send", head)

    def ProtocolTcpOffloadReceiveComplete(self, binding: Binding, head: NetBufferList) -> None:
        self._record("receive", head)

    def ProtocolTcpOffloadDisconnectComplete(self, binding: Binding, head: NetBufferList) -> None:
        self._record("disconnect", head)

    def ProtocolTcpOffloadForwardComplete(self, binding: Binding, head: NetBufferList) -> None:
        self._record("forward", head)

    def ProtocolTcpOffloadEvent(
        self, handle: NdisOffloadHandle, event: TcpOffloadEventType, info: int
    ) -> None:
        self.events.append((event, info))

    def ProtocolTcpOffloadReceiveIndicate(
        self, handle: NdisOffloadHandle, nbl: NetBufferList, status: S
    ) -> None:
        self.indicated.append(b"".join(nbl.views()))
        self.ndis.NdisReturnReceiveIndication(self, nbl, S.NDIS_STATUS_SUCCESS, nbl.data_length)


class MemoryWire:
    """The socket as the target sees it; the test says what the peer acknowledged."""

    local = ("127.0.0.1", 1000)
    remote = ("127.0.0.1", 80)
    isn = 1000
    irs = 5000

    def __init__(self) -> None:
        self.bytes_written = 0
        self.bytes_read = 0
        self.peer_acked = 0
        self.written = bytearray()
        self.eof_written = self.closed = self.reset_sent = False
        self.owner: Any = None
        self.ctx: Any = None

    def set_owner(self, layer: Any, ctx: Any) -> None:
        self.owner, self.ctx = layer, ctx

    def write(self, views: list[memoryview]) -> None:
        for v in views:
            self.written += v
            self.bytes_written += len(v)

    def write_eof(self) -> None:
        self.eof_written = True

    def abort(self) -> None:
        self.reset_sent = self.closed = True

    def acked(self) -> int:
        return self.peer_acked

    def fin_acked(self) -> bool:
        return self.eof_written and self.peer_acked == self.bytes_written

    def watch_acks(self) -> None:
        pass

    def tcp_info(self) -> TcpInfo:
        return TcpInfo()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Timers:
    def call_later(self, delay: float, fn: Any, *args: Any) -> Any:
        class Handle:
            def cancel(self) -> None:
                pass

        return Handle()


class Stack:
    def __init__(self) -> None:
        self.scheduler = SyncScheduler()
        self.ndis = Ndis(clock=lambda: 0, deliver=self.scheduler)
        self.proto = Proto(self.ndis)
        self.wire = MemoryWire()
        self.nic = OffloadTarget("nic0", self.ndis, Timers(), lambda *key: self.wire)
        self.binding = self.ndis.bind(self.proto, self.nic)
        self.handle = NdisOffloadHandle("tcpip", owner="TCB")
        n = new_neighbor_block(NdisOffloadHandle("tcpip", owner="N"))
        p = n.add_dependent(
            new_path_block(
                NdisOffloadHandle("tcpip", owner="P"),
                PathOffloadStateConst(b"\x7f\0\0\1", b"\x7f\0\0\1"),
            )
        )
        d = TcpOffloadStateDelegated(
            RcvNxt=seq(MemoryWire.irs, 0),
            SndUna=seq(MemoryWire.isn, 0),
            SndMax=seq(MemoryWire.isn, 0),
        )
        p.add_dependent(
            new_tcp_block(self.handle, TcpOffloadStateConst(LocalPort=1000, RemotePort=80), None, d)
        )
        self.ndis.NdisInitiateOffload(self.proto, self.binding, n)
        self.run()
        self.ctx = self.handle.miniport_offload_context
        assert self.ctx is not None

    def run(self) -> None:
        self.scheduler.run()

    def wire_event(self, name: str, *args: Any) -> None:
        self.ndis.post(self.nic, getattr(self.nic, name), (self.ctx, *args))
        self.run()

    def acked(self, n: int) -> None:
        self.wire.peer_acked = n
        self.wire_event("WireAcked", n)

    def send(self, *payloads: bytes) -> list[NetBufferList]:
        nbls = [NetBufferList.for_data(p) for p in payloads]
        head = link_chain(nbls)
        assert head is not None
        self.ndis.NdisOffloadTcpSend(self.proto, self.handle, head)
        self.run()
        return nbls


def test_send_completes_on_ack_not_on_write() -> None:
    st = Stack()
    (nbl,) = st.send(b"x" * 1000)
    assert bytes(st.wire.written) == b"x" * 1000 and "send" not in st.proto.done
    st.acked(600)
    assert "send" not in st.proto.done  # partly acknowledged is not complete (spec §4.1)
    st.acked(1000)
    assert st.proto.done["send"] == [nbl] and nbl.status == S.NDIS_STATUS_SUCCESS
    assert nbl.tcp_offload_bytes_transferred == 1000 and nbl.data_length == 0


def test_rst_fails_sends_with_one_partial_then_aborted() -> None:
    st = Stack()
    a, b, c = st.send(b"a" * 100, b"b" * 100, b"c" * 100)
    st.acked(150)  # a acknowledged, b half
    st.wire_event("WireReset", "ECONNRESET")
    assert (
        st.proto.events[-3:] == [] or (TcpOffloadEventType.TcpIndicateAbort, 0) in st.proto.events
    )
    done = st.proto.done["send"]
    assert done == [a, b, c]
    assert a.status == S.NDIS_STATUS_SUCCESS
    assert b.status == S.NDIS_STATUS_REQUEST_ABORTED and b.tcp_offload_bytes_transferred == 50
    assert b.data_length == 50  # advanced by the acknowledged bytes
    assert c.status == S.NDIS_STATUS_REQUEST_ABORTED and c.tcp_offload_bytes_transferred == 0
    # after the RST: every I/O is refused as aborted
    (d,) = st.send(b"late")
    assert d.status == S.NDIS_STATUS_REQUEST_ABORTED
    post = NetBufferList.for_receive(10)
    st.ndis.NdisOffloadTcpReceive(st.proto, st.handle, post)
    disc = NetBufferList.for_data(b"")
    st.ndis.NdisOffloadTcpDisconnect(
        st.proto, st.handle, disc, TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE
    )
    fwd = NetBufferList.for_data(build_segment(80, 1000, seq(MemoryWire.irs, 0), 0, TH_ACK, b"x"))
    st.ndis.NdisOffloadTcpForward(st.proto, st.handle, fwd)
    st.run()
    assert post.status == disc.status == fwd.status == S.NDIS_STATUS_REQUEST_ABORTED


def test_mandatory_retrieve_refuses_sends_upload_in_progress() -> None:
    st = Stack()
    st.nic.request_upload(st.ctx, TcpUploadReason.UploadRequested)
    st.run()
    assert (
        TcpOffloadEventType.TcpIndicateRetrieve,
        TcpUploadReason.UploadRequested,
    ) in st.proto.events
    (nbl,) = st.send(b"after the request")
    assert nbl.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS and st.wire.written == b""


def test_receive_posted_after_fin_is_invalid_state() -> None:
    st = Stack()
    st.wire.bytes_read = 5
    st.wire_event("WireData", 0, b"hello")
    st.wire_event("WireEof", 5)
    assert st.proto.indicated == [b"hello"]
    assert st.proto.events[-1] == (TcpOffloadEventType.TcpIndicateDisconnect, 0)
    post = NetBufferList.for_receive(10)
    st.ndis.NdisOffloadTcpReceive(st.proto, st.handle, post)
    st.run()
    assert post.status == S.NDIS_STATUS_INVALID_STATE and post.tcp_offload_bytes_transferred == 0
    # the send half stays usable after the peer's FIN (spec §5.1)
    (nbl,) = st.send(b"reply")
    st.acked(5)
    assert nbl.status == S.NDIS_STATUS_SUCCESS


def test_graceful_disconnect_waits_for_earlier_sends_and_the_fin_ack() -> None:
    st = Stack()
    (nbl,) = st.send(b"data")
    disc = NetBufferList.for_data(b"")
    st.ndis.NdisOffloadTcpDisconnect(
        st.proto, st.handle, disc, TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE
    )
    st.run()
    assert st.wire.eof_written and "disconnect" not in st.proto.done
    st.acked(4)
    assert st.proto.done["send"] == [nbl]
    assert st.proto.done["disconnect"] == [disc] and disc.status == S.NDIS_STATUS_SUCCESS


def test_abortive_disconnect_sends_rst_and_aborts_sends() -> None:
    st = Stack()
    (nbl,) = st.send(b"never acknowledged")
    disc = NetBufferList.for_data(b"")
    st.ndis.NdisOffloadTcpDisconnect(
        st.proto, st.handle, disc, TcpDisconnectFlags.TCP_DISCONNECT_ABORTIVE_CLOSE
    )
    st.run()
    assert st.wire.reset_sent
    assert nbl.status == S.NDIS_STATUS_REQUEST_ABORTED
    assert disc.status == S.NDIS_STATUS_SUCCESS  # the RST went out


def test_forward_puts_segments_in_order_with_wire_data() -> None:
    st = Stack()
    # bytes 5.. arrive from the wire first; bytes 0..5 come later by NdisOffloadTcpForward
    st.wire_event("WireData", 5, b" world")
    assert st.proto.indicated == []  # held: out of order
    fwd = NetBufferList.for_data(
        build_segment(80, 1000, seq(MemoryWire.irs, 0), 0, TH_ACK | TH_PSH, b"hello")
    )
    st.ndis.NdisOffloadTcpForward(st.proto, st.handle, fwd)
    st.run()
    assert fwd.status == S.NDIS_STATUS_SUCCESS
    assert b"".join(st.proto.indicated) == b"hello world"
