"""The ordinary (non-chimney) receive path, `NdisMIndicateReceiveNetBufferLists` (spec §4.7,
§3.6.4): segments a target does not process go up every layer unchanged — relayed by the
pass-through IM and the MUX — to the host, which puts them in order with the rest of the
connection's bytes. No sockets."""

from __future__ import annotations

import functools

import pytest

from chimneyd.drivers.segment import TH_FIN, TH_PSH, TH_RST
from chimneyd.drivers.wire import TIMEOUT_MARK
from chimneyd.testing import MemoryWire, Stack
from chimneyd.testing.clock import Delivery
from chimneyd.testing.factories import (
    loopback_target_stack,
    mux_stack,
    passthrough_stack,
    teamed_target_stack,
)
from chimneyd.testing.hostrig import HostRig
from chimneyd.testing.stack import MakeStack

MIDDLE: dict[str, MakeStack] = {
    "passthrough": passthrough_stack,
    "passthrough-x2": functools.partial(passthrough_stack, depth=2),
    "mux": functools.partial(mux_stack, "top"),
    "mux-under-im": functools.partial(mux_stack, "under-im"),
    "mux-over-im": functools.partial(mux_stack, "over-im"),
}
BOTTOM: dict[str, MakeStack] = {
    "target": loopback_target_stack,
    "teamed-targets": teamed_target_stack,
}


@pytest.mark.parametrize("make", list(MIDDLE.values()), ids=list(MIDDLE))
def test_an_im_relays_the_ordinary_receive_path_up(make: MakeStack) -> None:
    """Each segment a NIC indicates on the ordinary path reaches the top once, with its wire,
    offset, bytes and flags unchanged, and in the order indicated; nothing goes up the
    chimney for it."""
    st = make()
    assert st.bottom is not None
    wire = st.wires.open()
    segments = [(wire, 0, b"first", TH_PSH), (wire, 5, b"second", 0), (wire, 11, b"", TH_FIN)]
    for segment in segments:
        st.ndis.NdisMIndicateReceiveNetBufferLists(st.bottom, *segment)
    st.run()
    assert st.top.ordinary == segments
    assert not st.top.indications and not st.top.events
    for layer in st.under_test:
        assert layer.stats.calls.get("NdisMIndicateReceiveNetBufferLists") == len(segments)


@pytest.mark.parametrize("make", list(BOTTOM.values()), ids=list(BOTTOM))
def test_out_of_order_bytes_held_at_terminate_go_up_the_ordinary_path(make: MakeStack) -> None:
    """Bytes the target received ahead of a gap (the gap's bytes were read by the host and
    not forwarded yet) are still held out of order when the connection is terminated: the
    target hands them up the ordinary path, at their offset, instead of dropping them — the
    kernel acknowledged them and will never send them again (chimneyd's departure, spec
    §3.6.3 [EMU])."""
    st: Stack = make()
    top = st.top
    w: MemoryWire = st.wires.open()
    w.set_home(top, "host")
    w.peer_send(b"hello")
    st.run()  # read by the host, never forwarded: the target starts at RcvNxt 0
    tree = top.connection_tree([])
    path = tree.root.dependent_block_list
    assert path is not None
    block = path.add_dependent(top.tcp_block(w, rcv_nxt=0))
    assert block.offload_handle is not None
    handle = block.offload_handle
    tree.tcp.append(handle)
    top.initiate(tree.root)
    st.run()
    w.peer_send(b" world")
    st.run()
    assert top.received_data(handle) == b"" and top.ordinary == []
    top.terminate(top.reference_tree(tree, None, True, True, state="delegated"))
    st.run()
    assert [(wire, offset, data) for wire, offset, data, _ in top.ordinary] == [(w, 5, b" world")]
    assert handle.dead
    assert st.drain_problems() == []


def _the_connections_terminate(rig: HostRig, d: Delivery) -> bool:
    """Whether `d` is the target's first terminate, the connection's: its path's and
    neighbor's follow in a call of their own (`terminate.flush_terminates`)."""
    return (
        d.handler == "MiniportTerminateOffload"
        and d.layer is rig.target
        and len(rig.scheduler.delivered(rig.target, "MiniportTerminateOffload")) == 1
    )


def test_a_segment_arriving_during_the_terminate_goes_up_the_ordinary_path() -> None:
    """host → IM → target: the peer's bytes reach the target after its terminate began; the
    target passes them up the ordinary path (never back into the chimney), the IM relays them,
    and the host delivers them after everything before them (spec §3.6.4, §4.7)."""
    rig = HostRig(im=True)
    conn, wire = rig.open()
    rig.offload(conn)
    wire.peer_send(b"before the upload, ")
    rig.run()

    def peer_sends_now(d: Delivery) -> None:
        # just before the target runs the connection's terminate: its segment is queued
        # behind it
        if _the_connections_terminate(rig, d):
            wire.peer_send(b"during the terminate")

    rig.scheduler.observers.append(peer_sends_now)
    upload = rig.call(rig.host.app_upload, conn)
    assert upload.done and upload.error is None and rig.host.tcbs[conn].state == "host"
    relayed = [
        d.layer.kind
        for d in rig.scheduler.delivered(handler="ProtocolReceiveNetBufferLists")
        if d.args[2] == 19 and d.args[3] == b"during the terminate"
    ]
    assert relayed == ["passthrough", "host"]
    read = rig.call(rig.host.app_recv, conn, 1000, False)
    assert read.value == b"before the upload, during the terminate"
    assert rig.problems() == []


@pytest.mark.parametrize("kind", ["peer_reset", "kernel_timeout"])
def test_a_reset_arriving_during_the_terminate_goes_up_the_ordinary_path(kind: str) -> None:
    """host → IM → target: the peer's RST (or the kernel giving up on the connection) reaches
    the target after its terminate began: the target passes the RST up the ordinary path at the
    end of the stream, and the timeout the same way, marked ([EMU] `TIMEOUT_MARK`: a plain RST
    would read as a reset), never as a chimney abort; the host delivers the bytes before it,
    then reports the connection reset, or timed out (spec §3.6.4, §4.7, §5.2)."""
    rig = HostRig(im=True)
    conn, wire = rig.open()
    rig.offload(conn)
    wire.peer_send(b"before the upload, ")
    rig.run()

    def reset_now(d: Delivery) -> None:
        if _the_connections_terminate(rig, d):
            getattr(wire, kind)()

    rig.scheduler.observers.append(reset_now)
    upload = rig.call(rig.host.app_upload, conn)
    assert upload.done and upload.error is None and rig.host.tcbs[conn].state == "host"
    relayed = [
        (d.layer.kind, d.args[2:])
        for d in rig.scheduler.delivered(handler="ProtocolReceiveNetBufferLists")
    ]
    flags = TH_RST if kind == "peer_reset" else TH_RST | TIMEOUT_MARK
    assert relayed == [("passthrough", (19, b"", flags)), ("host", (19, b"", flags))]
    if kind == "kernel_timeout":
        # told to the target (it owned the socket then), and by it up the ordinary path only
        assert [d.layer.kind for d in rig.scheduler.delivered(handler="WireTimeout")] == ["target"]
    assert not rig.scheduler.delivered(handler="ProtocolTcpOffloadEvent")
    read = rig.call(rig.host.app_recv, conn, 1000, False)
    assert read.value == b"before the upload, "
    read = rig.call(rig.host.app_recv, conn, 1000, False)
    death = "connection reset" if kind == "peer_reset" else "timed out"
    assert read.error is not None and death in str(read.error)
    assert rig.problems() == []


@pytest.mark.parametrize("fin", ["no_fin", "fin_on_them", "fin_after_them"])
@pytest.mark.parametrize("im", [False, True], ids=["direct", "through_an_im"])
def test_out_of_order_bytes_the_host_holds_at_offload_go_down(im: bool, fin: str) -> None:
    """The mirror of the terminate's: the ordinary path's bytes from a terminated context and
    the socket's later bytes, read by the host once it owns the socket again, take different
    roads and can arrive in the other order. The host then holds the later bytes out of order
    when it offloads the connection again: they go down as forwarded segments with the
    gap's, and the target puts them in order. They were dropped, and the application waited
    for them for ever (found by the team property: 62,053 bytes of 170,384)."""
    rig = HostRig(im=im)
    conn, wire = rig.open()
    binding = rig.host.lower_bindings[0]
    first, later = b"the gap's bytes, ", b"the bytes read after them"
    # the later bytes arrive first, ahead of the gap: the host holds them out of order
    flags = TH_FIN if fin == "fin_on_them" else 0
    rig.host.ProtocolReceiveNetBufferLists(binding, wire, len(first), later, flags)
    if fin == "fin_after_them":  # the peer's FIN, alone, ahead too
        rig.host.ProtocolReceiveNetBufferLists(binding, wire, len(first + later), b"", TH_FIN)
    rig.run()

    def gap_fills_now(d: Delivery) -> None:
        # the gap's bytes arrive while the initiate is below: the host forwards them after it
        if d.handler == "MiniportInitiateOffload" and d.layer is rig.target:
            rig.host.ProtocolReceiveNetBufferLists(binding, wire, 0, first, TH_PSH)

    rig.scheduler.observers.append(gap_fills_now)
    rig.offload(conn)
    assert rig.host.tcbs[conn].state == "offloaded"
    got = b""
    while len(got) < len(first + later):
        read = rig.call(rig.host.app_recv, conn, 1000, False)
        assert read.done and read.error is None and read.value, (read, got)
        got += read.value
    assert got == first + later
    if fin != "no_fin":  # the target reports the FIN it was handed: the end of the stream
        read = rig.call(rig.host.app_recv, conn, 1000, False)
        assert read.done and read.error is None and read.value == b"", read
        assert "TcpIndicateDisconnect" in rig.event_names(conn)
    assert rig.problems() == []
