"""After urgent data the target stops processing the connection (spec §5.2).

`ReceivedUrgentData` is a mandatory reason: the target acknowledges nothing more and processes
nothing more, as after any mandatory request (docs/spec.md §5.2, "What stopped processing
means for received data"). So the socket is read no more until the terminate (what the peer
sends waits in the kernel, not in the target's memory), and bytes that arrive after the request
— those before the urgent byte too, when the urgent segment came ahead of a gap — fill no posted
request and leave `RcvNxt` where it was; at the terminate every byte goes up the ordinary path,
once, in order.

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

from chimneyd.drivers.segment import TH_ACK, TH_FIN, TH_URG
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.blocks import BlockKind, OffloadBlock, walk
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from tests.unit.test_target_ndis_rules import Conn, _segment

URGENT = (TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.ReceivedUrgentData)


def _terminate(c: Conn) -> OffloadBlock:
    root = c.top.reference_tree(c.tree, None, True, True, "delegated")
    c.top.terminate(root)
    c.st.run()
    (block,) = [b for b in walk(root) if b.kind is BlockKind.TCP]
    assert block.status == S.NDIS_STATUS_SUCCESS
    return block


def _stream_after_terminate(c: Conn, start: int) -> bytes:
    """The bytes from `start` on as the host gets them after the terminate: the ordinary path
    and the socket's own events once it is home again, put in order by offset (§4.6)."""
    pieces = [(off, data) for _, off, data, _ in c.top.ordinary]
    pieces += [(e.args[0], e.args[1]) for e in c.top.wire_events if e.name == "WireData"]
    out = bytearray()
    for off, data in sorted(pieces):
        at = start + len(out)
        if off <= at < off + len(data):
            out += data[at - off :]
    return bytes(out)


def test_after_urgent_data_the_socket_is_read_no_more() -> None:
    """The urgent segment asks for the upload; the socket's next read is the last one: the
    peer's later bytes wait in the kernel until the terminate reads them for the host,
    instead of piling up in the target (which acknowledges nothing more, spec §5.2)."""
    c = Conn().offload()
    c.top.forward(c.handle, _segment(c, 0, TH_URG | TH_ACK, b"!"))
    c.st.run()
    assert c.events() == [URGENT]
    c.wire.peer_send(b"!then")  # the urgent byte again by the wire, and what follows
    c.st.run()
    assert not c.wire.reading, "the target still reads the socket after urgent data"
    c.wire.peer_send(b" more")
    c.wire.peer_send(b" and more")
    c.st.run()
    block = _terminate(c)
    assert block.delegated is not None and block.delegated.RcvNxt == seq(c.wire.irs, 0)
    assert _stream_after_terminate(c, 0) == b"!then more and more"
    assert c.top.received_data(c.handle) == b""
    assert c.st.drain_problems() == []


def test_bytes_before_an_urgent_segment_ahead_are_not_processed_once_it_asked() -> None:
    """The urgent segment lies ahead of a gap (a forward carries what the host has, §4.6):
    the request goes up at once, and the gap's bytes, arriving after it from the socket, are
    not processed either: the request posted before stays pending, RcvNxt stays, and the
    gap goes up the ordinary path with the urgent data, in order."""
    c = Conn().offload()
    (post,) = c.top.receive(c.handle, 10)
    c.st.run()
    c.top.forward(c.handle, _segment(c, 5, TH_URG | TH_ACK, b"URG"))
    c.st.run()
    assert c.events() == [URGENT]
    c.wire.peer_send(b"gap..")  # offsets 0-4, after the mandatory request
    c.st.run()
    c.wire.peer_send(b"URG, then")
    c.wire.peer_fin()
    c.st.run()
    assert post.status == S.NDIS_STATUS_PENDING, "a request filled after the mandatory request"
    assert c.top.received_data(c.handle) == b""
    block = _terminate(c)
    assert post.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS
    assert post.tcp_offload_bytes_transferred == 0
    d = block.delegated
    assert d is not None and d.BufferedData is None and d.RcvNxt == seq(c.wire.irs, 0)
    assert _stream_after_terminate(c, 0) == b"gap..URG, then"
    fins = [off for _, off, _, fl in c.top.ordinary if fl & TH_FIN]
    fins += [e.args[0] for e in c.top.wire_events if e.name == "WireEof"]
    assert fins == [14]
    assert c.st.drain_problems() == []
