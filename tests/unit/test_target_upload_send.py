"""Sends at a target that asked for a mandatory upload (docs/spec.md §5.2 [INF], §3.6.3).

After a mandatory `TcpIndicateRetrieve` reason (or `NDIS_STATUS_UPLOAD_ALL`) the target stops
processing the connection's received segments, but it still completes a send once the peer
has acknowledged all of it, until the terminate: the acknowledgement was the kernel's, and the
bytes were delivered. They cannot go back in the terminate's `NetBufferListChain` (the host
would send them again) and SUCCESS is the only true status for them. What the peer has not
acknowledged when the terminate comes goes back there, the first NBL advanced to `SndUna`,
then the sends refused meanwhile. Every NBL is completed or handed back exactly once, and the
peer gets every byte once, in order.

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from chimneyd.drivers.tcp import seq
from chimneyd.ndis.nbl import iter_chain
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpUploadReason
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.test_target_upload_receive import Conn

SUCCESS = S.NDIS_STATUS_SUCCESS


def _retrieve(reason: TcpUploadReason) -> Callable[[Conn], None]:
    return lambda c: c.nic.retrieve(c.ctx, reason)


def _upload_all(c: Conn) -> None:
    c.nic.fail_adapter()  # PAUSE and UPLOAD_ALL (spec §5.5)


ASKS = {
    "UploadRequested": _retrieve(TcpUploadReason.UploadRequested),
    "InvalidState": _retrieve(TcpUploadReason.InvalidState),
    "ReceivedUrgentData": _retrieve(TcpUploadReason.ReceivedUrgentData),
    "UPLOAD_ALL": _upload_all,
}


@pytest.mark.parametrize("ask", list(ASKS.values()), ids=list(ASKS))
def test_a_send_the_peer_acknowledged_after_the_request_completes_once(
    ask: Callable[[Conn], None],
) -> None:
    """Three sends written before the request; the peer then acknowledges the first and half
    of the second: the first completes SUCCESS at once, the others wait. At the terminate the
    second goes back advanced past its acknowledged half, the third whole, SndUna where the
    peer's acknowledgement ended; nothing completes twice, nothing is both completed and
    handed back."""
    c = Conn()
    first, second, third = c.top.send(c.handle, b"a" * 10, b"b" * 10, b"c" * 10)
    c.st.run()
    ask(c)
    c.st.run()
    c.wire.ack(15)
    c.st.run()
    assert first.status == SUCCESS and first.tcp_offload_bytes_transferred == 10
    assert c.top.completed("send") == [first]
    (late,) = c.top.send(c.handle, b"refused")  # refused meanwhile: handed back after them
    c.st.run()
    block = c.terminate()
    returned = list(iter_chain(block.net_buffer_list_chain))
    assert returned == [second, third, late]
    assert [b"".join(n.views()) for n in returned] == [b"b" * 5, b"c" * 10, b"refused"]
    assert c.top.completed("send") == [first]  # nothing handed back was completed too
    d = block.delegated
    assert d is not None and d.SndUna == seq(c.wire.isn, 15)
    assert d.SndNxt == seq(c.wire.isn, 30)
    assert bytes(c.wire.peer_received) == b"a" * 10 + b"b" * 10 + b"c" * 10  # written once
    assert c.st.drain_problems() == []


def test_a_send_acknowledged_whole_before_the_terminate_is_not_handed_back() -> None:
    """Every byte acknowledged between the request and the terminate: the send completed
    SUCCESS, the terminate hands back no send data (NetBufferListChain NULL, spec §3.6.3)."""
    c = Conn()
    (only,) = c.top.send(c.handle, b"delivered")
    c.st.run()
    c.nic.retrieve(c.ctx, TcpUploadReason.UploadRequested)
    c.st.run()
    c.wire.ack()
    c.st.run()
    assert c.top.completed("send") == [only] and only.status == SUCCESS
    block = c.terminate()
    assert block.net_buffer_list_chain is None
    assert block.delegated is not None and block.delegated.SndUna == seq(c.wire.isn, 9)
    assert c.st.drain_problems() == []


@pytest.mark.parametrize("im", [False, True], ids=["direct", "through_an_im"])
def test_across_a_mandatory_upload_every_send_completes_once_and_the_peer_gets_each_byte_once(
    im: bool,
) -> None:
    """End to end: two application sends offloaded; the target asks for a mandatory upload;
    the peer acknowledges the first send and part of the second before the host's terminate
    reaches the target, the rest after the upload. Each send completes once with all its
    bytes, the peer received every byte once and in order, and no layer saw a violation."""
    rig = HostRig(im=im)
    conn, wire = rig.open(auto_ack=False)
    rig.offload(conn)
    one, two = Reply(), Reply()
    rig.host.app_send(conn, b"1" * 100, one)
    rig.host.app_send(conn, b"2" * 100, two)
    rig.run()
    assert wire.unacked == 200
    (ctx,) = rig.contexts()
    rig.target.retrieve(ctx, TcpUploadReason.UploadRequested)
    wire.ack(150)  # before the terminate reaches the target
    rig.run()
    assert rig.event_names(conn)[-1] == "uploaded"
    assert one.done and one.error is None and one.value == 100
    wire.ack()
    rig.run()
    assert two.done and two.error is None and two.value == 100
    assert bytes(wire.peer_received) == b"1" * 100 + b"2" * 100
    assert rig.problems() == []
