"""The host takes no FIN from a segment that carries SYN, and sends no SYN back down.

RFC 793 ("SEGMENT ARRIVES") checks the SYN bit before the FIN bit, and a SYN in a synchronized
state ends the segment's processing there: its FIN is never taken (nor its data; the RST bit,
checked before it, still counts). The kernel that owns the real connection has answered the SYN
itself ([EMU]), so the host has nothing left to do with it.

Two roads bring one to the host: a forward the target refused because an upload was asked for
already (UPLOAD_IN_PROGRESS, spec §3.6.4), whose segments the host takes back with their flags
and processes after the upload; and the ordinary path (spec §4.7), where a SYN the target passed
up must not go round again in a forward while the connection is offloaded (spec §4.6): the
host's forward kept the FIN and dropped the SYN, and the target took the FIN for the peer's.

The real host stack over the target, on a MemoryWire (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.segment import TH_FIN, TH_RST, TH_SYN
from chimneyd.drivers.target import events
from chimneyd.ndis.lifecycle import TcpState
from chimneyd.ndis.status import TcpUploadReason
from chimneyd.testing.hostrig import HostRig
from chimneyd.testing.memwire import MemoryWire


def _no_end_of_stream(rig: HostRig, conn: int, wire: MemoryWire, sent: bytes) -> None:
    """The application reads what the peer sent and no end of stream, until the peer's FIN."""
    tcb = rig.host.tcbs[conn]
    read = rig.call(rig.host.app_recv, conn, 64, False)
    assert read.value == sent, read
    assert tcb.lifecycle.tcp is TcpState.ESTABLISHED, "the SYN's FIN was taken for the peer's"
    assert "TcpIndicateDisconnect" not in rig.event_names(conn), rig.events
    again = rig.call(rig.host.app_recv, conn, 64, False)
    assert not again.done, f"an end of stream the peer never sent: {again}"
    wire.peer_fin()
    rig.run()
    assert again.value == b"", f"the peer's FIN is no end of stream: {again}"
    assert rig.event_names(conn).count("TcpIndicateDisconnect") == 1, rig.events
    assert rig.problems() == []


@pytest.mark.parametrize("flags", [TH_SYN | TH_FIN, TH_SYN], ids=["syn_fin", "syn"])
def test_a_refused_forward_s_syn_fin_is_no_end_of_stream(flags: int) -> None:
    """The target asked for the upload; the host's terminate waits behind a query (spec §3.1)
    and its forward of a SYN (with FIN) at RcvNxt is refused UPLOAD_IN_PROGRESS: the host
    processes it after the upload, and takes no FIN from it."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    n = ctx.rx.rcv_nxt
    _query, held = rig.query_held_below(conn)
    events.request_upload(rig.target, ctx, TcpUploadReason.UploadRequested)
    rig.run()
    rig.forward(conn, (n, flags))
    rig.run()
    refused = [
        nbl.status.name
        for d in rig.scheduler.delivered(handler="ProtocolTcpOffloadForwardComplete")
        for nbl in [d.args[-1]]
    ]
    assert refused == ["NDIS_STATUS_UPLOAD_IN_PROGRESS"], refused
    wire.peer_send(b"after the request")
    rig.run()
    rig.release(held)
    assert rig.host.tcbs[conn].lifecycle.phase.name == "IDLE", "not uploaded"
    _no_end_of_stream(rig, conn, wire, b"after the request")


@pytest.mark.parametrize("flags", [TH_SYN | TH_FIN, TH_SYN], ids=["syn_fin", "syn"])
def test_a_syn_up_the_ordinary_path_does_not_go_back_down(flags: int) -> None:
    """An offloaded connection: a SYN (with FIN) comes up the ordinary path. The host forwards
    other segments it gets there down to the target (spec §4.6); a SYN it keeps: no forward,
    and no FIN for anyone."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    forwards = len(rig.scheduler.delivered(handler="MiniportTcpOffloadForward"))
    rig.ndis.NdisMIndicateReceiveNetBufferLists(rig.target, wire, ctx.rx.rcv_nxt, b"", flags)
    rig.run()
    assert len(rig.scheduler.delivered(handler="MiniportTcpOffloadForward")) == forwards
    assert ctx.lifecycle.tcp is TcpState.ESTABLISHED, "the target took the SYN's FIN"
    wire.peer_send(b"still open")
    rig.run()
    _no_end_of_stream(rig, conn, wire, b"still open")


def test_a_syn_with_rst_is_an_rst() -> None:
    """RFC 793 checks the RST bit before the SYN bit: the host does not drop a SYN|RST, and it
    goes down as the RST it is (spec §4.6)."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    forwards = len(rig.scheduler.delivered(handler="MiniportTcpOffloadForward"))
    rig.ndis.NdisMIndicateReceiveNetBufferLists(
        rig.target, wire, ctx.rx.rcv_nxt, b"", TH_SYN | TH_RST
    )
    rig.run()
    assert len(rig.scheduler.delivered(handler="MiniportTcpOffloadForward")) == forwards + 1
    assert rig.host.tcbs[conn].lifecycle.tcp is TcpState.RESET
    read = rig.call(rig.host.app_recv, conn, 64, False)
    assert "connection reset" in str(read.error), read
