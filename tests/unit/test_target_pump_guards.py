"""`pump` calls `_check_fin` only once a FIN was seen and `_flow` only while reading is paused
or the held bytes are at their bound; `wire_acked` calls `release_refusals` only while refused
I/O is held. The states where each of them still has work (spec §4.4 delivery, §5.1 the
peer's FIN, §9 item 2 completion order), through the protocol stub over a MemoryWire."""

from __future__ import annotations

from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType
from chimneyd.testing.records import refuse_all
from tests.unit.target_rig import OffloadedConn

DISCONNECT = TcpOffloadEventType.TcpIndicateDisconnect


def _disconnects(c: OffloadedConn) -> int:
    return sum(1 for e in c.top.events if e.event_type is DISCONNECT)


def test_a_fin_behind_paused_reading_is_indicated_once_the_held_bytes_go() -> None:
    """Held bytes at the bound pause reading with the peer's FIN behind them in the kernel; a
    posted request that takes them resumes reading (`_flow` while paused), the FIN comes, and
    `TcpIndicateDisconnect` goes up with nothing held (`_check_fin`, spec §5.1)."""
    c = OffloadedConn()
    c.top.receive_policy = refuse_all  # the bytes stay held at the target
    c.ctx.rcv_bound = 4
    c.wire.peer_send(b"abcdef")
    c.wire.peer_fin()
    c.st.run()
    assert c.ctx.paused and not c.wire.reading and c.ctx.buffered_bytes == 6
    assert _disconnects(c) == 0
    (req,) = c.top.receive(c.handle, 6)
    c.st.run()
    assert c.wire.reading and not c.ctx.paused
    assert [(x.nbl, x.status, x.bytes_transferred) for x in c.top.completions] == [
        (req, S.NDIS_STATUS_SUCCESS, 6)
    ]
    assert _disconnects(c) == 1


def test_held_bytes_below_the_bound_resume_reading() -> None:
    """Reading paused at the bound; a posted request takes part of the held bytes, leaving
    them below the bound but not gone: the socket is read again (spec §4.4, `_flow` while
    paused with bytes still held)."""
    c = OffloadedConn()
    c.top.receive_policy = refuse_all
    c.ctx.rcv_bound = 4
    c.wire.peer_send(b"abcdef")
    c.st.run()
    assert c.ctx.paused
    c.top.receive(c.handle, 5)
    c.st.run()
    assert c.ctx.buffered_bytes == 1 and not c.ctx.paused and c.wire.reading
    c.wire.peer_send(b"g")
    c.st.run()
    assert c.ctx.buffered_bytes == 2  # read, not left in the kernel


def test_a_refused_send_held_behind_one_unacked_completes_at_its_ack() -> None:
    """A send refused while an earlier one waits for its ACK is held (completion order, spec §9
    item 2); the ACK of the earlier one completes it right after (`release_refusals` from
    `wire_acked`), nothing else being held."""
    c = OffloadedConn()
    (first,) = c.top.send(c.handle, b"one")
    c.st.run()
    c.ctx.send_failed = True  # every later send is refused (spec §4.1)
    (second,) = c.top.send(c.handle, b"two")
    c.st.run()
    assert c.ctx.held_refusals and not c.top.completions
    c.wire.ack()
    c.st.run()
    done = [(x.nbl.id, x.status) for x in c.top.completions if x.kind == "send"]
    assert done == [
        (first.id, S.NDIS_STATUS_SUCCESS),
        (second.id, S.NDIS_STATUS_UPLOAD_IN_PROGRESS),
    ]
