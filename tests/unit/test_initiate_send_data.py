"""Outstanding send data handed down with an initiate (spec §3.2.5), at the offload target over
an in-memory wire: the chain starts at SndUna; what lies in [SndUna, SndMax) is already on the
wire and is not sent again, the rest the target sends at once, in order; each NBL completes,
in order, once the peer has acknowledged all of its bytes. No sockets."""

from __future__ import annotations

from chimneyd.drivers.tcp import seq
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing import MemoryWire, ProtocolStub, Stack
from chimneyd.testing.factories import loopback_target_stack


def _offload(send: list[bytes], on_the_wire: bytes = b"") -> tuple[Stack, ProtocolStub, MemoryWire]:
    """Initiate one connection whose host holds `send`; the first `on_the_wire` bytes of it
    the host wrote before the initiate (unacknowledged: SndMax past SndUna)."""
    st = loopback_target_stack()
    top = st.top
    wire = st.wires.open()
    root = top.neighbor_block()
    path = root.add_dependent(top.path_block())
    tcp = path.add_dependent(top.tcp_block(wire, send=send))
    if on_the_wire:
        wire.write([memoryview(on_the_wire)])
        assert tcp.delegated is not None
        tcp.delegated.SndNxt = tcp.delegated.SndMax = seq(wire.isn, wire.bytes_written)
    top.initiate(root)
    st.run()
    assert tcp.status == S.NDIS_STATUS_SUCCESS
    return st, top, wire


def test_send_data_never_sent_goes_out_at_the_initiate_and_completes_when_acknowledged() -> None:
    st, top, wire = _offload([b"outstanding ", b"send data"])
    assert bytes(wire.peer_received) == b"outstanding send data"
    assert top.completed("send") == []  # nothing is acknowledged yet
    wire.ack(12)  # the first NBL's bytes only
    st.run()
    assert [n.tcp_offload_bytes_transferred for n in top.completed("send")] == [12]
    wire.ack()
    st.run()
    done = top.completed("send")
    assert [n.status for n in done] == [S.NDIS_STATUS_SUCCESS] * 2
    assert [n.tcp_offload_bytes_transferred for n in done] == [12, 9]
    assert top.stats.outstanding_nbls == 0
    assert st.audit.violations == []


def test_send_data_already_on_the_wire_is_not_sent_again() -> None:
    # the host wrote the first NBL and half of the second before the initiate
    st, top, wire = _offload([b"on the wire, ", b"half sent; the rest"], b"on the wire, half sent")
    assert bytes(wire.peer_received) == b"on the wire, half sent; the rest"  # each byte once
    wire.ack()
    st.run()
    done = top.completed("send")
    assert [n.status for n in done] == [S.NDIS_STATUS_SUCCESS] * 2
    assert [n.tcp_offload_bytes_transferred for n in done] == [13, 19]
    assert top.stats.outstanding_nbls == 0
    assert st.audit.violations == []
