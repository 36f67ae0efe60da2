"""Receive at a target that asked for a mandatory upload (spec §5.2, §3.6.3, §3.6.4).

The reference page of `NdisTcpOffloadEventHandler` says that after a mandatory
`TcpIndicateRetrieve` reason the target no longer processes the connection; the terminate pages
say that data it had already received, processed and acknowledged is still delivered with the
delivery algorithm (or handed back as `BufferedData`). So bytes buffered before the request
may still fill posted receive requests; bytes arriving after it may not: they wait for the
terminate and go up the ordinary path, and `RcvNxt` does not move past them. An optional reason
leaves the target carrying on as before.

The protocol stub plays the host and a MemoryWire the peer (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.segment import TH_FIN
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.blocks import BlockKind, OffloadBlock, walk
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpUploadReason
from chimneyd.testing.hostrig import HostRig
from tests.unit.target_rig import OffloadedConn

PENDING = S.NDIS_STATUS_PENDING
UPLOAD = S.NDIS_STATUS_UPLOAD_IN_PROGRESS
MANDATORY = [
    TcpUploadReason.UploadRequested,
    TcpUploadReason.InvalidState,
    TcpUploadReason.ReceivedUrgentData,
]


class Conn(OffloadedConn):
    """The protocol stub over the target, one connection offloaded on a MemoryWire."""

    def terminate(self) -> OffloadBlock:
        """Terminate the connection; its TCP block, holding what was handed back."""
        root = self.top.reference_tree(self.tree, None, True, True, "delegated")
        self.top.terminate(root)
        self.st.run()
        (block,) = [b for b in walk(root) if b.kind is BlockKind.TCP]
        return block


@pytest.mark.parametrize("reason", MANDATORY, ids=lambda r: r.name)
def test_bytes_arriving_after_a_mandatory_upload_request_fill_no_posted_request(
    reason: TcpUploadReason,
) -> None:
    """After a mandatory reason the target does not process the connection any more: a push
    request posted before the request stays pending when the peer's bytes arrive, and
    nothing reaches the host through the chimney."""
    c = Conn()
    (post,) = c.top.receive(c.handle, 10)
    c.st.run()
    c.nic.retrieve(c.ctx, reason)
    c.st.run()
    c.wire.peer_send(b"late")
    c.st.run()
    assert post.status == PENDING
    assert c.top.received_data(c.handle) == b""
    assert c.top.held == []  # no indication either


def test_late_bytes_go_up_the_ordinary_path_at_the_terminate_and_rcvnxt_stays() -> None:
    """Spec §3.6.3, §3.6.4: the request posted before the upload request completes
    UPLOAD_IN_PROGRESS with nothing placed; the bytes that arrived after it (and the FIN) are
    neither delivered nor handed back as BufferedData: they go up the ordinary path, and
    the delegated RcvNxt stops where the processed bytes ended."""
    c = Conn()
    (post,) = c.top.receive(c.handle, 10)
    c.st.run()
    c.nic.retrieve(c.ctx, TcpUploadReason.UploadRequested)
    c.st.run()
    c.wire.peer_send(b"late")
    c.wire.peer_fin()
    c.st.run()
    block = c.terminate()
    assert post.status == UPLOAD and post.tcp_offload_bytes_transferred == 0
    d = block.delegated
    assert d is not None and d.BufferedData is None
    assert d.RcvNxt == seq(c.wire.irs, 0)
    up = [(off, data, bool(flags & TH_FIN)) for _, off, data, flags in c.top.ordinary]
    assert b"".join(data for _, data, _ in up) == b"late"
    assert up[-1] == (4, b"", True)
    assert c.st.drain_problems() == []


def test_bytes_processed_before_the_request_go_back_as_buffered_data() -> None:
    """Handling buffered receive data during a terminate: data the target received, processed
    and acknowledged before the request is the host's through the delivery algorithm or
    `BufferedData`; data after it is not processed: it goes up the ordinary path, and
    RcvNxt ends where the processed bytes did."""
    c = Conn()
    c.top.receive_policy = lambda nbl: (S.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED, 0)
    c.wire.peer_send(b"early")
    c.st.run()
    c.nic.retrieve(c.ctx, TcpUploadReason.UploadRequested)
    c.st.run()
    c.wire.peer_send(b"late")
    c.st.run()
    block = c.terminate()
    d = block.delegated
    assert d is not None and d.BufferedData is not None
    assert b"".join(bytes(v) for v in d.BufferedData.views()) == b"early"
    assert d.RcvNxt == seq(c.wire.irs, 5)
    assert [data for _, _, data, _ in c.top.ordinary] == [b"late"]


def test_an_optional_reason_leaves_the_target_filling_posted_requests() -> None:
    """Spec §5.2: after an optional reason the target carries on as before should the host
    not upload: the peer's bytes fill the posted request."""
    c = Conn()
    (post,) = c.top.receive(c.handle, 10)
    c.st.run()
    c.nic.retrieve(c.ctx, TcpUploadReason.LowActivity)
    c.st.run()
    c.wire.peer_send(b"still")
    c.st.run()
    assert post.status == S.NDIS_STATUS_SUCCESS
    assert c.top.received_data(c.handle) == b"still"


def test_the_application_gets_every_byte_in_order_across_the_upload() -> None:
    """End to end: the bytes delivered before the mandatory request, the ones that arrived
    after it (the ordinary path at the terminate) and the FIN reach the application in
    order, and the invariant checker sees no violation."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    wire.peer_send(b"one,")
    rig.run()
    (ctx,) = rig.contexts()
    rig.target.retrieve(ctx, TcpUploadReason.UploadRequested)
    wire.peer_send(b"two,")
    wire.peer_send(b"three")
    wire.peer_fin()
    rig.run()
    assert rig.event_names(conn)[-1] == "uploaded"
    got = rig.call(rig.host.app_recv, conn, 100, True)
    assert got.value == b"one,two,three"
    assert rig.problems() == []


@pytest.mark.parametrize("what", ["tcp", "path", "neighbor"])
def test_a_read_across_an_invalidate_gets_every_byte_through_an_im(what: str) -> None:
    """End to end through a pass-through IM: a waitall read posted before the host invalidates
    the connection's TCP, path or neighbor object gets the bytes delivered before, and those
    the peer sends after the InvalidState request (held by the target, up the ordinary path
    at the terminate, through the IM), in order; nothing is left behind at any layer."""
    rig = HostRig(im=True)
    conn, wire = rig.open()
    rig.offload(conn)
    got: list[object] = []
    rig.host.app_recv(conn, 13, True, lambda v, e: got.append(v if e is None else e))
    rig.run()
    wire.peer_send(b"one,")
    rig.run()
    assert got == []  # waitall: 4 of 13 bytes
    (ctx,) = rig.contexts()
    rig.host.app_invalidate(conn, what, lambda v, e: None)
    rig.host.after_batch()  # the end of the host's drain: the invalidate goes down
    while ctx.lifecycle.phase is not Phase.UPLOAD_REQUESTED:
        rig.scheduler.run_one()  # until the target has asked for the upload, no further
    assert rig.event_names(conn)[-1] != "uploaded"
    wire.peer_send(b"two,")
    wire.peer_send(b"three")
    rig.run()
    assert got == [b"one,two,three"]
    assert rig.event_names(conn)[-1] == "uploaded"
    # the late bytes came up the ordinary path through the IM, not through the chimney
    im = rig.layers()["im-nic0"]
    assert im.stats.calls.get("NdisMIndicateReceiveNetBufferLists", 0) >= 1
    assert rig.problems() == []
    assert rig.contexts() == []


def test_after_upload_all_arriving_bytes_wait_for_the_terminate_too() -> None:
    """docs/spec.md §5.2 [INF]: a target that failed raised PAUSE and UPLOAD_ALL; it refuses
    sends from then on (§5.5), and the bytes that arrive fill no request posted before: they
    go up the ordinary path at the terminate, the request completes UPLOAD_IN_PROGRESS."""
    c = Conn()
    (post,) = c.top.receive(c.handle, 10)
    c.st.run()
    c.nic.fail_adapter()
    c.st.run()
    c.wire.peer_send(b"late")
    c.st.run()
    assert post.status == PENDING
    block = c.terminate()
    assert post.status == UPLOAD and post.tcp_offload_bytes_transferred == 0
    assert block.delegated is not None and block.delegated.RcvNxt == seq(c.wire.irs, 0)
    assert [data for _, _, data, _ in c.top.ordinary] == [b"late"]
