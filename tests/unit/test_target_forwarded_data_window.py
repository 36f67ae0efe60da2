"""A forwarded segment without URG, RST or SYN is not judged by the target's receive window,
and is answered with no ACK (docs/spec.md §4.6, §5.2).

RFC 793 answers an unacceptable segment with an ACK, and the target counts that ACK for a URG
segment that fails its checks (`ack_urg`): "Handling the Reception of Urgent Data" makes the
target check and discard it. A plain forwarded data segment is different in chimneyd [EMU]: its
bytes are the socket's, which the kernel accepted by its own window and acknowledged before
the host read and forwarded them. The peer sent nothing unacceptable and got the kernel's ACK;
the target's window (InitialRcvWnd, its own bound) is not the one the peer saw. So the target
takes every byte it lacks, wherever it lies (beyond its window too: held until the gap fills,
or handed up at the terminate), ignores the bytes it has, and counts no ACK.

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

from chimneyd.drivers.segment import TH_ACK, TH_PSH
from chimneyd.drivers.target.contexts import TcpContext
from chimneyd.drivers.target.target import OffloadTarget
from chimneyd.ndis.blocks import BlockKind, walk
from chimneyd.ndis.status import NdisStatus as S
from tests.unit.test_target_challenge_acks import _answers
from tests.unit.test_target_ndis_rules import Conn, _segment


def _context(c: Conn) -> TcpContext:
    (nic,) = c.st.under_test
    assert isinstance(nic, OffloadTarget)
    (ctx,) = nic.connections()
    return ctx


def test_data_beyond_the_window_is_kept_and_gets_no_ack() -> None:
    """A segment past RcvNxt + RcvWnd: not discarded (the kernel acknowledged it), no ACK
    counted, no upload asked for; its bytes go up at the terminate, once."""
    c = Conn().offload()
    ctx = _context(c)
    beyond = ctx.rx.rcv_nxt + max(1, ctx.rcv_bound - ctx.buffered_bytes) + 10
    (fwd,) = c.top.forward(c.handle, _segment(c, beyond, TH_ACK | TH_PSH, b"far"))
    c.st.run()
    assert fwd.status == S.NDIS_STATUS_SUCCESS
    assert _answers(c) == {}
    assert c.events() == []
    root = c.top.reference_tree(c.tree, None, True, True, "delegated")
    c.top.terminate(root)
    c.st.run()
    (block,) = [b for b in walk(root) if b.kind is BlockKind.TCP]
    assert block.status == S.NDIS_STATUS_SUCCESS
    assert [(off, data) for _, off, data, _ in c.top.ordinary] == [(beyond, b"far")]


def test_data_the_target_has_already_gets_no_ack_and_is_not_delivered_twice() -> None:
    """A segment wholly before RcvNxt (the host handed the bytes down twice; the peer sent
    them once): ignored, no ACK counted, the connection carries on."""
    c = Conn().offload()
    c.wire.peer_send(b"hello")
    c.st.run()
    assert _context(c).rx.rcv_nxt == 5
    (fwd,) = c.top.forward(c.handle, _segment(c, 0, TH_ACK | TH_PSH, b"hello"))
    c.st.run()
    assert fwd.status == S.NDIS_STATUS_SUCCESS
    assert _answers(c) == {}
    c.wire.peer_send(b" world")
    c.st.run()
    c.top.receive(c.handle, 64)
    c.st.run()
    assert c.top.received_data(c.handle) == b"hello world"
    assert c.events() == []
