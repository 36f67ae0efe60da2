"""Retrieve reasons the target raises by itself, and the host's answer (spec §5.2, §6.3): the kernel
giving up on a connection is TimeoutExpiration, not a reset; optional reasons the host ignores
leave the connection offloaded and working."""

from __future__ import annotations

from chimneyd.drivers.host import Tcb
from chimneyd.ndis.blocks import TcpOffloadStateDelegated, walk
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadConnectionState, TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.factories import loopback_target_stack
from chimneyd.testing.hostrig import HostRig

E = TcpOffloadEventType


def test_a_kernel_timeout_asks_for_a_mandatory_upload_not_an_abort() -> None:
    st = loopback_target_stack()
    top = st.top
    wire = st.wires.open()
    tree = top.connection_tree([wire])
    top.initiate(tree.root)
    st.run()
    (h,) = tree.tcp
    sent = top.send(h, b"a" * 10, b"b" * 10)
    st.run()
    wire.ack(15)
    st.run()
    wire.kernel_timeout()
    st.run()
    assert [(e.event_type, e.info) for e in top.events] == [
        (E.TcpIndicateRetrieve, TcpUploadReason.TimeoutExpiration)
    ]
    # it stops processing: a later send is not sent, and not completed before the earlier ones
    (late,) = top.send(h, b"late")
    st.run()
    assert late.status == S.NDIS_STATUS_PENDING and wire.bytes_written == 20
    # at terminate the connection comes back CLOSED, with what was not acknowledged
    top.terminate(top.reference_tree(tree, None, True, True, state="delegated"))
    st.run()
    root = top.state_completions[-1].root
    (block,) = [b for b in walk(root) if b.offload_handle is h]
    assert isinstance(block.delegated, TcpOffloadStateDelegated)
    assert block.delegated.State is TcpOffloadConnectionState.TcpConnectionClosed
    assert sent[0].status == S.NDIS_STATUS_SUCCESS
    # handed back in order: the unacknowledged rest of the second, then the one never sent
    assert top.returned_sends == [sent[1], late] and sent[1].data_length == 5
    assert st.drain_problems() == []


def _offloaded(rig: HostRig) -> tuple[int, Tcb]:
    conn, _ = rig.open()
    rig.offload(conn)
    return conn, rig.host.tcbs[conn]


def test_the_host_uploads_a_timed_out_connection_and_says_why() -> None:
    rig = HostRig()
    conn, tcb = _offloaded(rig)
    wire = tcb.wire
    wire.peer_send(b"before")  # delivered before the kernel gave up: not lost
    rig.run()
    send = rig.call(rig.host.app_send, conn, b"never acknowledged")
    wire.kernel_timeout()
    rig.run()
    assert send.done and "NDIS_STATUS_REQUEST_ABORTED" in str(send.error)
    assert "timed out (TimeoutExpiration)" in str(send.error)
    names = rig.event_names(conn)
    assert names == ["offloaded", "TcpIndicateRetrieve", "uploaded"]  # no TcpIndicateAbort
    retrieve = rig.events[1][2]
    assert retrieve == {"reason": "TimeoutExpiration", "mandatory": True, "honored": True}
    assert tcb.lifecycle.phase is Phase.IDLE and tcb.reset
    assert rig.call(rig.host.app_recv, conn, 100, False).value == b"before"
    recv = rig.call(rig.host.app_recv, conn, 100, False)
    assert "timed out" in str(recv.error)
    late = rig.call(rig.host.app_send, conn, b"late")
    assert "timed out" in str(late.error)
    rig.call(rig.host.app_close, conn)
    assert rig.problems() == [] and rig.checker.check_drained(rig.ndis.stats()) == []


def test_a_timeout_in_the_host_stack_is_reported_as_one() -> None:
    rig = HostRig()
    conn, wire = rig.open()
    recv = rig.call(rig.host.app_recv, conn, 10, False)
    wire.kernel_timeout()
    rig.run()
    assert "timed out" in str(recv.error)
    assert rig.events[-1] == (
        conn,
        "TcpIndicateAbort",
        {"path": "host", "reason": "TimeoutExpiration"},
    )


def test_an_injected_timeout_retrieve_on_a_live_connection_leaves_it_working() -> None:
    """TimeoutExpiration asked for while the socket is fine: uploaded, and alive in the host."""
    rig = HostRig()
    conn, tcb = _offloaded(rig)
    ctx = rig.contexts()[0]
    rig.target.retrieve(ctx, TcpUploadReason.TimeoutExpiration)
    rig.run()
    assert tcb.lifecycle.phase is Phase.IDLE and not tcb.reset and tcb.end_reason is None
    send = rig.call(rig.host.app_send, conn, b"fine")
    tcb.wire.ack()
    rig.run()
    assert send.value == 4


def test_an_ignored_optional_retrieve_leaves_the_connection_offloaded_and_moving() -> None:
    rig = HostRig(host_options={"honor_optional_retrieve": False})
    conn, tcb = _offloaded(rig)
    ctx = rig.contexts()[0]
    rig.target.retrieve(ctx, TcpUploadReason.LowActivity)
    rig.run()
    assert rig.events[-1] == (
        conn,
        "TcpIndicateRetrieve",
        {"reason": "LowActivity", "mandatory": False, "honored": False},
    )
    assert tcb.state == "offloaded" and rig.contexts() == [ctx]
    # the target carries on normally (spec §5.2): data both ways through the chimney
    send = rig.call(rig.host.app_send, conn, b"ping")
    tcb.wire.ack()
    rig.run()
    assert send.value == 4
    tcb.wire.peer_send(b"pong")
    rig.run()
    assert rig.call(rig.host.app_recv, conn, 10, False).value == b"pong"
    assert "uploaded" not in rig.event_names(conn)
    # a mandatory reason later is still honoured
    rig.target.retrieve(ctx, TcpUploadReason.UploadRequested)
    rig.run()
    assert rig.event_names(conn)[-1] == "uploaded"


def test_an_honoured_optional_retrieve_uploads() -> None:
    rig = HostRig()
    conn, tcb = _offloaded(rig)
    rig.target.retrieve(rig.contexts()[0], TcpUploadReason.LowActivity)
    rig.run()
    assert rig.event_names(conn)[-1] == "uploaded" and tcb.state == "host"
