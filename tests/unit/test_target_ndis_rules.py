"""The offload target against the rules of Microsoft's chimney pages that docs/spec.md restates:
disconnects (§4.5), statuses after an upload request (§3.6.4), hardware failure (§3.7), the
initiate walk (§3.2.4) and forwarded segments checked as segments from the wire (§4.6, §5.2).

The protocol stub plays the host and a MemoryWire the peer, so every status and ordering is
deterministic (no sockets, no sleeps)."""

from __future__ import annotations

import pytest

from chimneyd.drivers.segment import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, TH_URG, build_segment
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.blocks import BlockKind, OffloadBlock, walk
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpDisconnectFlags, TcpOffloadEventType, TcpUploadReason
from chimneyd.testing import MemoryWire, OffloadTree, Stack
from chimneyd.testing.factories import fail_next, loopback_target_stack
from chimneyd.testing.hostrig import HostRig, Reply

GRACEFUL = TcpDisconnectFlags.TCP_DISCONNECT_GRACEFUL_CLOSE
ABORTIVE = TcpDisconnectFlags.TCP_DISCONNECT_ABORTIVE_CLOSE


class Conn:
    """One offloaded connection on the target: the stack, its wire and its handle."""

    def __init__(self, push_ticks_ms: int = 500) -> None:
        self.st: Stack = loopback_target_stack(push_ticks_ms=push_ticks_ms)
        self.wire: MemoryWire = self.st.wires.open()
        self.wire.set_home(self.st.top, "host")
        self.top = self.st.top

    def offload(self) -> Conn:
        tree = self.top.connection_tree([])
        path = tree.root.dependent_block_list
        assert path is not None
        block = path.add_dependent(self.top.tcp_block(self.wire))
        assert block.offload_handle is not None
        self.handle = block.offload_handle
        tree.tcp.append(self.handle)
        self.tree: OffloadTree = tree
        self.top.initiate(tree.root)
        self.st.run()
        assert self.top.state_completions[-1].statuses[-1] == S.NDIS_STATUS_SUCCESS
        return self

    def send(self, *payloads: bytes) -> list[NetBufferList]:
        nbls = self.top.send(self.handle, *payloads)
        self.st.run()
        return nbls

    def terminate(self) -> OffloadBlock:
        """Terminate the connection; its TCP block, holding what was handed back."""
        root = self.top.reference_tree(self.tree, state="delegated")
        self.top.terminate(root)
        self.st.run()
        (block,) = [b for b in walk(root) if b.kind is BlockKind.TCP]
        return block

    def events(self) -> list[tuple[TcpOffloadEventType, int]]:
        return [(e.event_type, e.info) for e in self.top.events]

    def order(self) -> list[tuple[str, int]]:
        """Every completion the host saw, as (kind, NBL id), in the order it saw them."""
        return [(c.kind, c.nbl.id) for c in self.top.completions]


# -- disconnect (spec §4.5) ---------------------------------------------------------------------------
def test_abortive_disconnect_ends_a_pending_graceful_disconnect_as_aborted() -> None:
    """Spec §4.5: a graceful disconnect's SUCCESS means its FIN was acknowledged, and a target
    may fail a disconnect once the connection is aborted. After the host's abortive disconnect
    that FIN can never be acknowledged: the earlier graceful disconnect comes back
    REQUEST_ABORTED, in posting order (before the abortive one), not at a later terminate."""
    c = Conn().offload()
    graceful = c.top.disconnect(c.handle, GRACEFUL)
    c.st.run()
    assert c.top.completed("disconnect") == []  # the FIN is not acknowledged yet
    abortive = c.top.disconnect(c.handle, ABORTIVE)
    c.st.run()
    assert abortive.status == S.NDIS_STATUS_SUCCESS  # the RST went out
    assert c.top.completed("disconnect") == [graceful, abortive]
    assert graceful.status == S.NDIS_STATUS_REQUEST_ABORTED


# -- statuses after the target asked for the upload (spec §3.6.4, §5.2) -----------------------------
def test_io_after_a_timeout_upload_request_completes_upload_in_progress() -> None:
    """Spec §4.1, §4.2: REQUEST_ABORTED is for a connection on which an RST arrived (the host
    then drops the data); spec §3.6.4: I/O reaching a target that asked for a mandatory
    upload completes UPLOAD_IN_PROGRESS. A kernel timeout raises TcpIndicateRetrieve
    (TimeoutExpiration) and no abort (§5.2): no RST came, so later I/O is not aborted."""
    c = Conn().offload()
    c.wire.kernel_timeout()
    c.st.run()
    assert c.events() == [
        (TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.TimeoutExpiration)
    ]
    (late,) = c.send(b"after the upload request")
    (post,) = c.top.receive(c.handle, 10)
    c.st.run()
    assert late.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS
    assert post.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS


# -- hardware failure (spec §3.7) -------------------------------------------------------------------
def test_after_a_hardware_failure_every_outstanding_send_completes_request_aborted() -> None:
    """Spec §3.7 step 4: when the host terminates a connection whose hardware state was found
    corrupt, the target completes the outstanding sends with NDIS_STATUS_REQUEST_ABORTED in
    *each* NBL. A send the peer acknowledged meanwhile (the corrupt target did not process
    the ACK) does not come back SUCCESS; it still reports every byte transferred."""
    c = Conn().offload()
    (nic,) = c.st.under_test
    (data,) = c.send(b"sent before the corruption")
    fail_next(nic, "MiniportQueryOffload", S.NDIS_STATUS_FAILURE)
    c.top.query(c.top.reference_tree(c.tree, state="delegated"))
    c.st.run()
    assert [e for e, _ in c.events()] == [
        TcpOffloadEventType.TcpIndicateRetrieve,
        TcpOffloadEventType.TcpIndicateAbort,
    ]
    assert c.top.completed("send") == []  # still outstanding
    c.wire.ack()  # the peer's kernel acknowledges the bytes meanwhile
    c.st.run()
    assert c.top.completed("send") == []  # a corrupt target does not process the ACK
    c.terminate()
    assert c.top.completed("send") == [data]
    assert data.status == S.NDIS_STATUS_REQUEST_ABORTED
    assert data.tcp_offload_bytes_transferred == len(b"sent before the corruption")


def test_the_host_learns_every_byte_of_a_send_aborted_after_a_hardware_failure() -> None:
    """Spec §3.7, §4.1: the host drops a send completed REQUEST_ABORTED — the connection is
    aborted — and tells the application how many bytes the peer acknowledged: all of them
    here, so nothing the peer got is reported lost. The checker sees no §9 violation."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    payload = b"acknowledged while the hardware state was lost"
    sent = Reply()
    rig.host.app_send(conn, payload, sent)
    rig.run()
    assert not sent.done
    fail_next(rig.target, "MiniportQueryOffload", S.NDIS_STATUS_FAILURE)
    query = Reply()
    rig.host.app_query(conn, query)
    rig.host.after_batch()  # the query goes down first, then the peer's ACK arrives
    wire.ack()
    rig.run()
    assert sent.done and "NDIS_STATUS_REQUEST_ABORTED" in str(sent.error)
    assert f"acknowledged {len(payload)} bytes" in str(sent.error)
    assert rig.event_names(conn)[-1] == "uploaded"
    assert rig.problems() == []


# -- segments the host forwards are checked as segments from the wire (spec §4.6, §5.2) ------------
def _segment(c: Conn, offset: int, flags: int, payload: bytes = b"") -> bytes:
    """A TCP segment from the peer at stream offset `offset`, acknowledging everything sent
    (a valid ACK number), header first as a forward carries it (spec §4.6)."""
    w = c.wire
    ack = seq(w.isn, w.bytes_written)
    return build_segment(w.remote[1], w.local[1], seq(w.irs, offset), ack, flags, payload)


@pytest.mark.parametrize("offset", [1000, -1000, 1 << 30], ids=["ahead", "behind", "far"])
def test_a_forwarded_rst_not_at_rcvnxt_does_not_abort_the_connection(offset: int) -> None:
    """Spec §5.2, blind-reset mitigation: only an RST exactly at RcvNxt is acceptable and
    leads to TcpIndicateAbort; one in the window but elsewhere gets a challenge ACK, one
    outside it is dropped. A forwarded segment is processed like one from the wire (§4.6);
    while the socket is alive, the peer answers a challenge ACK with an ordinary ACK, so the
    connection carries on whatever the RST's sequence number."""
    c = Conn().offload()
    (fwd,) = c.top.forward(c.handle, _segment(c, offset, TH_RST | TH_ACK))
    c.st.run()
    assert fwd.status == S.NDIS_STATUS_SUCCESS
    assert c.events() == []  # no TcpIndicateAbort
    (nbl,) = c.send(b"still usable")
    c.wire.ack()
    c.st.run()
    assert nbl.status == S.NDIS_STATUS_SUCCESS


def test_a_forwarded_rst_at_rcvnxt_aborts_the_connection() -> None:
    """Spec §5.1, §5.2: an RST at RcvNxt is acceptable: TcpIndicateAbort, and the outstanding
    sends complete REQUEST_ABORTED."""
    c = Conn().offload()
    (data,) = c.send(b"not acknowledged")
    c.top.forward(c.handle, _segment(c, 0, TH_RST | TH_ACK))
    c.st.run()
    assert c.events() == [(TcpOffloadEventType.TcpIndicateAbort, 0)]
    assert data.status == S.NDIS_STATUS_REQUEST_ABORTED


def test_a_forwarded_rst_ahead_on_a_dead_socket_aborts_the_connection() -> None:
    """Spec §5.2 [EMU]: the socket the kernel closed on the peer's reset (the news reached the
    host, which forwards the RST) means the peer holds no connection: it would answer the
    challenge ACK with an RST at RcvNxt, so an RST off RcvNxt aborts as well — the
    connection does not hang waiting for an RST that will never come again."""
    c = Conn().offload()
    c.wire.set_owner(None, None)  # the socket's news goes to the host
    c.wire.peer_reset()
    c.st.run()
    assert c.events() == []  # the target was not told
    c.top.forward(c.handle, _segment(c, 1000, TH_RST | TH_ACK))
    c.st.run()
    assert c.events() == [(TcpOffloadEventType.TcpIndicateAbort, 0)]


URGENT = (TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.ReceivedUrgentData)


def test_forwarded_urgent_data_asks_for_the_upload_and_is_not_delivered() -> None:
    """Spec §5.2, urgent data: an in-window segment with URG and a valid ACK makes the target
    ask for a mandatory upload (ReceivedUrgentData) and hold the urgent data for the host
    (the ordinary path at the terminate): it does not deliver it through the chimney, not
    into a posted request either."""
    c = Conn().offload()
    (post,) = c.top.receive(c.handle, 10)  # a posted request the urgent byte must not go into
    c.st.run()
    (fwd,) = c.top.forward(c.handle, _segment(c, 0, TH_URG | TH_ACK | TH_PSH, b"!"))
    c.st.run()
    assert fwd.status == S.NDIS_STATUS_SUCCESS
    assert c.events() == [URGENT]
    assert c.top.received_data(c.handle) == b""
    assert post.status == S.NDIS_STATUS_PENDING


def test_urgent_data_and_what_follows_go_up_the_ordinary_path_at_the_terminate() -> None:
    """Spec §5.2: the bytes before the urgent data are delivered as usual; the urgent data
    and every segment after it (the peer's later bytes and FIN) are queued, nothing of them
    is delivered or handed back as BufferedData, and at the terminate they go up the
    ordinary path (§4.7) in the order they came; the host puts them in order by offset."""
    c = Conn().offload()
    c.wire.peer_send(b"before")
    c.st.run()
    c.top.forward(c.handle, _segment(c, 6, TH_URG | TH_ACK, b"URG"))
    c.st.run()
    assert c.events() == [URGENT]
    # the socket's bytes from the same offset on: the forwarded segment's again, then more
    # (a forward and the wire are two roads to one stream, spec §4.6)
    c.wire.peer_send(b"URGafter")
    c.wire.peer_fin()
    c.st.run()
    assert c.top.received_data(c.handle) == b"before"
    block = c.terminate()
    assert block.delegated is not None and block.delegated.BufferedData is None
    up = [(off, data, bool(flags & TH_FIN)) for _, off, data, flags in c.top.ordinary]
    assert up == [(6, b"URG", False), (6, b"URGafter", False), (14, b"", True)]


def test_urgent_data_outside_the_window_or_with_a_bad_ack_is_dropped() -> None:
    """Spec §5.2: a segment with URG whose sequence number is outside the window, or whose
    ACK acknowledges bytes never sent, is dropped and the connection carries on: no upload
    request, nothing delivered or held."""
    c = Conn().offload()
    w = c.wire
    far = _segment(c, 1 << 30, TH_URG | TH_ACK, b"!")
    bad_ack = build_segment(
        w.remote[1], w.local[1], seq(w.irs, 0), seq(w.isn, w.bytes_written + 100), TH_URG, b"!"
    )
    c.top.forward(c.handle, far, bad_ack)
    c.st.run()
    assert c.events() == []
    c.wire.peer_send(b"ok")
    c.st.run()
    assert c.top.received_data(c.handle) == b"ok"


def test_a_forwarded_syn_at_rcvnxt_asks_for_the_upload() -> None:
    """Spec §5.2: an in-order SYN (sequence number equal to RcvNxt) in any state but
    TIME_WAIT makes the target give the connection up: it asks the host for the upload (a
    mandatory reason, so later I/O is refused UPLOAD_IN_PROGRESS, §3.6.4)."""
    c = Conn().offload()
    c.top.forward(c.handle, _segment(c, 0, TH_SYN))
    c.st.run()
    assert c.events() == [
        (TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.UploadRequested)
    ]
    (late,) = c.send(b"after the SYN")
    assert late.status == S.NDIS_STATUS_UPLOAD_IN_PROGRESS


@pytest.mark.parametrize("offset", [1000, -1000], ids=["ahead", "behind"])
def test_a_forwarded_syn_not_at_rcvnxt_is_dropped(offset: int) -> None:
    """Spec §5.2: a SYN in the window but out of order gets a challenge ACK, one outside it an
    ACK; neither gives the connection up, and the target cannot send either on the kernel's
    socket: the connection carries on."""
    c = Conn().offload()
    c.top.forward(c.handle, _segment(c, offset, TH_SYN))
    c.st.run()
    assert c.events() == []
    (nbl,) = c.send(b"still usable")
    c.wire.ack()
    c.st.run()
    assert nbl.status == S.NDIS_STATUS_SUCCESS
