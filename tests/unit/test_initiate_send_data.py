"""Outstanding send data handed down with an initiate (spec §3.2.5). At the offload target over
an in-memory wire: the chain starts at SndUna; what lies in [SndUna, SndMax) is already on the
wire and is not sent again, the rest the target sends at once, in order; each NBL completes,
in order, once the peer has acknowledged all of its bytes. At the host: an initiate that fails
leaves it its sends and its unread bytes (spec §3.2.4). No sockets."""

from __future__ import annotations

from typing import Any

import pytest

from chimneyd.drivers.tcp import seq
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.testing import MemoryWire, ProtocolStub, Stack
from chimneyd.testing.factories import fail_next, loopback_target_stack
from chimneyd.testing.hostrig import HostRig


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


@pytest.mark.parametrize("im", [False, True])
def test_an_initiate_that_fails_leaves_the_host_its_sends_and_unread_bytes(im: bool) -> None:
    """The host hands down its unacknowledged send and the bytes its application has not read
    (spec §3.2.3, §3.2.5); the target refuses the initiate: the host keeps both (spec §3.2.4),
    the send completes when the peer acknowledges it, and the bytes are still there to read."""
    rig = HostRig(im=im)
    conn, wire = rig.open()
    answers: list[tuple[Any, Any]] = []
    rig.host.app_send(conn, b"sent in host mode", lambda v, e: answers.append((v, e)))
    wire.peer_send(b"not read yet")
    rig.run()
    assert bytes(wire.peer_received) == b"sent in host mode" and answers == []
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_FAILURE)
    offload = rig.call(rig.host.app_offload, conn, None)
    assert "NDIS_STATUS_FAILURE" in str(offload.error)
    assert rig.host.tcbs[conn].state == "host" and answers == []
    wire.ack()
    rig.run()
    assert answers == [(17, None)]
    assert bytes(wire.peer_received) == b"sent in host mode"  # sent once, by the host
    assert rig.call(rig.host.app_recv, conn, 100, False).value == b"not read yet"
    assert rig.problems() == []
