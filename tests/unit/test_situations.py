"""Spec §6.2 situations the other tests left out, each with its required behaviour: a request on
an object still being offloaded, indicated NBLs outstanding at terminate, corruption during
invalidate, update failure, NDIS_STATUS_UPLOAD_IN_PROGRESS on receive, disconnect and forward."""

from __future__ import annotations

import pytest

from chimneyd.drivers.base import PlantedBug, RaiseNext
from chimneyd.drivers.segment import TH_ACK, TH_PSH, build_segment
from chimneyd.drivers.tcp import seq
from chimneyd.ndis.blocks import new_neighbor_block, new_path_block
from chimneyd.ndis.errors import ChimneyProtocolError, IllegalTransition
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.nbl import NetBufferList
from chimneyd.ndis.status import NdisStatus as S
from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.clock import Delivery
from chimneyd.testing.factories import fail_next, loopback_target_stack
from chimneyd.testing.hostrig import HostRig, Reply
from tests.unit.target_rig import OffloadedConn

E = TcpOffloadEventType
UPLOAD = S.NDIS_STATUS_UPLOAD_IN_PROGRESS
ABORTED = S.NDIS_STATUS_REQUEST_ABORTED


class Conn(OffloadedConn):
    """The protocol stub over the target, one connection offloaded on a MemoryWire."""

    def events(self) -> list[tuple[TcpOffloadEventType, int]]:
        return [(e.event_type, e.info) for e in self.top.events]

    def terminate(self) -> S:
        self.top.terminate(self.top.reference_tree(self.tree, None, True, True, "delegated"))
        self.st.run()
        return S(self.top.state_completions[-1].statuses[-1])

    def segment(self, offset: int, data: bytes) -> bytes:
        w = self.wire
        return build_segment(w.remote[1], w.local[1], seq(w.irs, offset), 0, TH_ACK | TH_PSH, data)


# -- a request on an object still being offloaded ----------------------------------------------
def test_io_on_a_context_still_offloading_is_refused_by_its_lifecycle() -> None:
    """Cannot happen (the host guarantees it); the emulator asserts (spec §6.2, §6.3 [EMU])."""
    c = Conn()
    c.ctx.lifecycle.phase = Phase.OFFLOADING  # as it is between its initiate and completion
    with pytest.raises(IllegalTransition) as caught:
        c.nic.MiniportTcpOffloadSend(c.ctx, NetBufferList.for_data(b"early"))
    assert (caught.value.state, caught.value.call) == ("OFFLOADING", "NdisOffloadTcpXxx")
    assert c.wire.bytes_written == 0  # nothing of it went out


def test_ndis_refuses_io_on_a_handle_whose_initiate_is_in_flight() -> None:
    st = loopback_target_stack()
    wire = st.wires.open()
    tree = st.top.connection_tree([wire])
    st.top.initiate(tree.root)  # not delivered yet
    with pytest.raises(ChimneyProtocolError, match="not offloaded"):
        st.top.send(tree.tcp[0], b"early")


def test_the_host_holds_requests_until_the_offload_is_over() -> None:
    rig = HostRig()
    conn, wire = rig.open()
    offloaded: list[object] = []
    rig.host.app_offload(conn, None, lambda v, e: offloaded.append(v))
    rig.host.after_batch()  # the drain ends: the initiate goes down (spec §3.9: OFFLOADING)
    sent: list[object] = []
    rig.host.app_send(conn, b"during the initiate", lambda v, e: sent.append(v))
    assert rig.host.tcbs[conn].lifecycle.phase is Phase.OFFLOADING
    rig.run()
    # the send went down after the initiate completed, through the chimney
    sends = rig.scheduler.delivered(rig.target, "MiniportTcpOffloadSend")
    initiates = rig.scheduler.delivered(rig.target, "MiniportInitiateOffload")
    assert offloaded and sends and sends[0].seq > initiates[0].seq
    wire.ack()
    rig.run()
    assert sent == [len(b"during the initiate")] and rig.problems() == []


# -- indicated NBLs still outstanding at terminate -----------------------------------------------
def test_indicated_nbls_may_come_back_after_the_terminate() -> None:
    c = Conn()
    c.wire.peer_send(b"held by the host")
    c.st.run()
    (held,) = c.top.held
    assert c.terminate() == S.NDIS_STATUS_SUCCESS  # allowed with the NBL still out [INF]
    assert c.nic.stats.outstanding_nbls == 1 and held.id in c.nic.indicated
    c.top.return_indications()
    c.st.run()
    assert c.nic.indicated == {} and c.nic.stats.outstanding_nbls == 0
    assert c.st.drain_problems() == []


# -- corruption during invalidate --------------------------------------------------------------
def test_corruption_during_invalidate_follows_the_recovery_sequence() -> None:
    c = Conn()
    (send,) = c.top.send(c.handle, b"never acknowledged")
    (recv,) = c.top.receive(c.handle, 100, no_push=True)
    c.st.run()
    fail_next(c.nic, "MiniportInvalidateOffload", S.NDIS_STATUS_FAILURE)
    c.top.invalidate(c.top.reference_tree(c.tree))
    c.st.run()
    # 1. the operation fails; 2. retrieve HardwareFailure; 3. abort (spec §3.7)
    assert set(c.top.state_completions[-1].statuses) == {S.NDIS_STATUS_FAILURE}
    assert c.events() == [
        (E.TcpIndicateRetrieve, TcpUploadReason.HardwareFailure),
        (E.TcpIndicateAbort, 0),
    ]
    assert c.top.completions == []  # outstanding I/O waits for the terminate
    # 4. the terminate aborts outstanding sends and receives; 5. it completes
    assert c.terminate() == S.NDIS_STATUS_SUCCESS
    assert (send.status, recv.status) == (ABORTED, ABORTED)
    assert c.top.completed() == [send, recv]
    assert c.st.drain_problems() == []


# -- an initiate queued while paused, its path invalidated meanwhile ------------------------------
def test_a_connection_offloaded_under_a_path_invalidated_meanwhile_is_asked_back() -> None:
    """A paused target queues an initiate that links a new connection under an offloaded path
    (spec §5.5); the host invalidates that path before RESUME. Offloaded at RESUME, the new
    connection depends on an invalidated object, so the target asks for its upload like the
    others (spec §3.5): otherwise the path stays invalidated for as long as it lives, and every
    new connection on that path waits for it."""
    c = Conn()
    c.nic.fail_adapter()
    c.st.run()
    wire = c.st.wires.open()
    root = new_neighbor_block(None)
    path = root.add_dependent(new_path_block(c.tree.paths[0]))
    block = path.add_dependent(c.top.tcp_block(wire))
    late = block.offload_handle
    c.top.initiate(root)
    c.st.run()
    assert len(c.nic.paused_initiates) == 1
    c.top.invalidate(c.top.reference_tree(c.tree, tcp=[], with_path=True))
    c.st.run()
    c.nic.recover_adapter()
    c.st.run()
    assert c.top.state_completions[-1].statuses[-1] == S.NDIS_STATUS_SUCCESS  # offloaded
    asked = [(e.event_type, e.info) for e in c.top.events if e.handle is late]
    assert asked == [(E.TcpIndicateRetrieve, TcpUploadReason.InvalidState)]


# -- update failure --------------------------------------------------------------------------------
def test_a_failed_update_leaves_the_target_carrying_on() -> None:
    c = Conn()
    fail_next(c.nic, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    c.top.update(c.top.reference_tree(c.tree, state="cached"))
    c.st.run()
    assert c.top.state_completions[-1].statuses[-1] == S.NDIS_STATUS_FAILURE
    (send,) = c.top.send(c.handle, b"after")
    c.wire.peer_send(b"still")
    c.st.run()
    c.wire.ack()
    c.st.run()
    assert send.status == S.NDIS_STATUS_SUCCESS
    assert c.top.received_data(c.handle) == b"still"
    assert c.terminate() == S.NDIS_STATUS_SUCCESS


def test_the_host_uploads_a_connection_whose_update_failed() -> None:
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    fail_next(rig.target, "MiniportUpdateOffload", S.NDIS_STATUS_FAILURE)
    reply = rig.call(rig.host.app_update, conn, {"RcvIndicationSize": 10})
    assert reply.error.symbol == "NDIS_STATUS" and "update failed" in reply.error.detail
    assert rig.event_names(conn)[-1] == "uploaded"
    tcb = rig.host.tcbs[conn]
    assert tcb.state == "host" and tcb.cached.RcvIndicationSize == 0  # type: ignore[union-attr]
    wire.peer_send(b"fine")
    rig.run()
    assert rig.call(rig.host.app_recv, conn, 10, False).value == b"fine"


# -- NDIS_STATUS_UPLOAD_IN_PROGRESS on receive, disconnect and forward -------------------------------
def test_upload_in_progress_on_receive_disconnect_and_forward() -> None:
    c = Conn()
    c.nic.retrieve(c.ctx, TcpUploadReason.UploadRequested)
    c.st.run()
    (recv,) = c.top.receive(c.handle, 10)
    disc = c.top.disconnect(c.handle)
    (fwd,) = c.top.forward(c.handle, c.segment(0, b"x"))
    c.st.run()
    assert (recv.status, disc.status, fwd.status) == (UPLOAD, UPLOAD, UPLOAD)
    assert recv.tcp_offload_bytes_transferred == 0 and not c.wire.eof_written
    assert c.top.received_data(c.handle) == b""  # the forwarded segment was not processed
    assert c.terminate() == S.NDIS_STATUS_SUCCESS and c.st.drain_problems() == []


def test_refused_io_completes_after_the_earlier_io_of_its_kind() -> None:
    """Completion order holds through an upload request (spec §4.1, §4.2; §9 item 2)."""
    c = Conn()
    (first,) = c.top.receive(c.handle, 10, no_push=True)
    (sent,) = c.top.send(c.handle, b"unacknowledged")
    c.st.run()
    c.nic.retrieve(c.ctx, TcpUploadReason.UploadRequested)
    c.st.run()
    (second,) = c.top.receive(c.handle, 10)
    (late,) = c.top.send(c.handle, b"refused")
    c.st.run()
    assert c.top.completions == []  # not before the earlier receive and send
    c.wire.ack(5)
    c.st.run()
    assert c.top.completions == []
    assert c.terminate() == S.NDIS_STATUS_SUCCESS
    assert c.top.completed("receive") == [first, second]
    assert (first.status, second.status) == (UPLOAD, UPLOAD)
    # sends: the unacknowledged one and the refused one go back in order, never sent twice
    assert c.top.returned_sends == [sent, late] and bytes(c.wire.peer_received) == b"unacknowledged"
    assert c.st.drain_problems() == []


def test_the_host_finishes_what_came_back_upload_in_progress() -> None:
    """Receive, disconnect and forward the target refused while asking for an upload are
    finished by the host after it, and no byte is lost (spec §4.2, §4.5, §4.6)."""
    rig = HostRig()
    conn, wire = rig.open()
    tcb = rig.host.tcbs[conn]

    def retrieve_first(d: Delivery) -> None:
        # the target asks for the upload just before the forward reaches it
        if d.handler == "MiniportTcpOffloadForward" and tcb.state == "offloaded":
            rig.target.retrieve(d.args[0], TcpUploadReason.UploadRequested)

    rig.scheduler.observers.append(retrieve_first)
    offloaded: list[object] = []
    rig.host.app_offload(conn, None, lambda v, e: offloaded.append(v))
    rig.host.after_batch()  # the initiate goes down
    wire.peer_send(b"during the initiate")  # the host forwards it once offloaded
    rig.run()
    forwards = [c for c in rig.scheduler.delivered(handler="ProtocolTcpOffloadForwardComplete")]
    assert forwards and forwards[0].args[1].status == UPLOAD
    assert tcb.state == "host"
    assert rig.call(rig.host.app_recv, conn, 100, False).value == b"during the initiate"
    # receive and disconnect refused the same way, then finished in the host
    rig.offload(conn)
    (ctx,) = rig.contexts()
    rig.target.retrieve(ctx, TcpUploadReason.UploadRequested)  # its event is on its way up
    reads: list[object] = []
    rig.host.app_recv(conn, 100, False, lambda v, e: reads.append(v))
    disconnected: list[object] = []
    rig.host.app_disconnect(conn, False, lambda v, e: disconnected.append(v))
    rig.run()
    statuses = [
        d.args[1].status
        for d in rig.scheduler.delivered(handler="ProtocolTcpOffloadReceiveComplete")
    ] + [
        d.args[1].status
        for d in rig.scheduler.delivered(handler="ProtocolTcpOffloadDisconnectComplete")
    ]
    assert statuses == [UPLOAD, UPLOAD]
    assert tcb.state == "host" and wire.eof_written  # the FIN went out from the host
    wire.peer_send(b"late")
    wire.ack()
    rig.run()
    assert reads == [b"late"] and disconnected == ["NDIS_STATUS_SUCCESS"]
    assert rig.problems() == []


def test_a_fin_acknowledged_while_the_connection_changes_hands_completes_the_disconnect() -> None:
    """The peer acknowledges the target's FIN while the terminate is under way: the news went
    to no one who could complete the disconnect, and is not repeated; the host, finishing the
    disconnect after the upload (spec §4.5), finds the FIN acknowledged and completes it.
    (With an IM between them the news reaches the host before the disconnect's completion.)"""
    rig = HostRig(im=True)
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    disconnected: list[object] = []
    rig.host.app_disconnect(conn, False, lambda v, e: disconnected.append(v))
    rig.run()
    assert wire.eof_written and disconnected == []  # the target's FIN waits for its ACK

    def ack_meanwhile(d: Delivery) -> None:
        if d.handler == "ProtocolTcpOffloadDisconnectComplete" and not wire.fin_acked():
            wire.ack()

    rig.scheduler.observers.append(ack_meanwhile)
    rig.target.retrieve(ctx, TcpUploadReason.UploadRequested)
    rig.run()
    assert rig.host.tcbs[conn].state == "host"
    assert disconnected == ["NDIS_STATUS_SUCCESS"]
    assert rig.problems() == []


@pytest.mark.parametrize("what", ["tcp", "path", "neighbor"])
def test_no_terminate_while_an_invalidate_of_the_object_is_in_flight(what: str) -> None:
    """An upload asked for right after an invalidate: the object invalidated is terminated only
    once its invalidate completed (spec §3.1, §9 item 7), and then it is (drain to zero)."""
    rig = HostRig(im=True)
    conn, _wire = rig.open()
    rig.offload(conn)
    invalidated: list[object] = []
    uploaded: list[object] = []
    rig.host.app_invalidate(conn, what, lambda v, e: invalidated.append(v or e))
    rig.host.app_upload(conn, lambda v, e: uploaded.append(v or e))
    rig.host.after_batch()  # the end of the host's inbox drain: the terminate goes down now
    rig.run()
    assert invalidated == [{"status": "NDIS_STATUS_SUCCESS"}]
    assert uploaded == [{"state": "host"}]
    assert rig.problems() == []
    assert rig.host.stats.offloads_active == 0 and rig.contexts() == []


def test_an_offload_asked_while_the_hosts_fin_waits_is_replayed_once_per_transition() -> None:
    """An offload asked for during an upload that finishes a graceful disconnect in the host:
    it waits for the FIN's ACK (re-deferring itself), and replaying deferred requests must not
    spin on it (it did, for ever, with the daemon's loop blocked)."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    disconnected: list[object] = []
    offloaded: list[object] = []
    rig.host.app_disconnect(conn, False, lambda v, e: disconnected.append(v))
    rig.run()  # the target's FIN waits for its ACK
    rig.host.app_upload(conn, lambda v, e: None)
    rig.host.app_offload(conn, None, lambda v, e: offloaded.append(v or e))
    rig.run()  # uploaded: the host finishes the disconnect; the offload waits for it
    assert rig.host.tcbs[conn].state == "host" and disconnected == offloaded == []
    wire.ack()
    rig.run()
    assert disconnected == ["NDIS_STATUS_SUCCESS"]
    assert len(offloaded) == 1  # answered once the disconnect is over
    assert rig.problems() == []


@pytest.mark.parametrize("end", ["peer_reset", "kernel_timeout"])
def test_requests_held_behind_the_hosts_fin_are_answered_when_the_connection_dies(
    end: str,
) -> None:
    """An offload waits for the host's FIN to be acknowledged; the connection stays the host's
    meanwhile, so a request after it does not wait behind it (a send after the FIN is refused
    at once, as offloaded: tests/unit/test_host_offload_behind_fin.py). If the connection is
    reset or times out instead, the FIN is never acknowledged: the held offload is answered
    then, as on a dead connection."""
    rig = HostRig()
    conn, wire = rig.open()
    disconnected = rig.call(rig.host.app_disconnect, conn, False)  # the FIN waits for its ACK
    offloaded = rig.call(rig.host.app_offload, conn, None)
    sent = rig.call(rig.host.app_send, conn, b"late")
    assert sent.done and sent.error is not None and sent.error.symbol == "INVALID_STATE"
    assert not (disconnected.done or offloaded.done)
    getattr(wire, end)()
    rig.run()
    assert disconnected.done and disconnected.value == ABORTED.name
    assert offloaded.done and offloaded.error is not None
    tcb = rig.host.tcbs[conn]
    assert not tcb.deferred and not tcb.after_fin
    assert rig.problems() == []


def test_a_waitall_read_of_a_connection_offloaded_after_the_peers_fin_ends_at_it() -> None:
    """The host has the peer's bytes and FIN (CLOSE_WAIT) when the connection is offloaded:
    the unread bytes go down as BufferedData and the target knows the FIN without indicating
    it again (spec §3.2.3). A waitall read made while the initiate is below becomes a
    non-push request larger than those bytes: it ends at the FIN with them, as it would had
    the FIN come while offloaded (§4.2, §5.1), and does not wait for bytes that never come."""
    rig = HostRig()
    conn, wire = rig.open()
    wire.peer_send(b"0123456789")
    wire.peer_fin()
    rig.run()
    assert rig.event_names(conn) == ["TcpIndicateDisconnect"]
    offloaded, read = Reply(), Reply()
    rig.host.app_offload(conn, None, offloaded)
    rig.host.after_batch()  # the initiate goes down
    rig.host.app_recv(conn, 100, True, read)  # the read comes while it is below
    rig.run()
    assert offloaded.done and rig.host.tcbs[conn].state == "offloaded"
    assert read.done and read.value == b"0123456789"
    eof = rig.call(rig.host.app_recv, conn, 100, False)
    assert eof.done and eof.value == b""
    assert rig.problems() == []


def test_an_indicated_nbl_goes_back_to_the_nic_that_indicated_it_after_a_move() -> None:
    """A host over two NICs keeps an NBL nic0 indicated until the application reads it (spec
    §4.3). The connection goes up and then down to nic1 before that: the unread bytes go down
    as BufferedData and the NBL goes back to nic0, the miniport that indicated it, not down
    the binding the connection uses now (nic1 never indicated it: §6.3, §9 item 9)."""
    rig = HostRig(targets=("nic0", "nic1"))
    conn, wire = rig.open()
    rig.offload(conn, "nic0")
    wire.peer_send(b"indicated by nic0")
    rig.run()
    nic0 = rig.targets["nic0"]
    assert len(nic0.indicated) == 1  # the host holds it, unread
    up = rig.call(rig.host.app_upload, conn)
    assert up.done and up.error is None and rig.host.tcbs[conn].state == "host"
    rig.offload(conn, "nic1")
    assert nic0.indicated == {}
    read = rig.call(rig.host.app_recv, conn, 100, False)
    assert read.value == b"indicated by nic0"
    assert rig.problems() == []


def test_a_read_refused_while_the_upload_waits_is_not_posted_round_and_round() -> None:
    """The NIC asked for the upload while a query of the connection is below, so the host's
    terminate waits for the query (spec §3.1). A read made meanwhile is posted and refused
    with NDIS_STATUS_UPLOAD_IN_PROGRESS (§3.6.4); the host does not post it again at once
    (it would come back at once, for as long as the query stays below) but serves it after
    the upload, from the socket it owns again."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    sch = rig.scheduler
    query, held = rig.query_held_below(conn)
    rig.target.retrieve(rig.contexts()[0], TcpUploadReason.UploadRequested)
    rig.run()
    posts = len(sch.delivered(handler="MiniportTcpOffloadReceive"))
    read = Reply()
    rig.host.app_recv(conn, 100, False, read)
    sch.run(limit=1_000)  # raises if the deliveries never end
    rig.host.after_batch()
    assert not sch.queue
    assert len(sch.delivered(handler="MiniportTcpOffloadReceive")) - posts == 1
    assert not read.done and rig.host.tcbs[conn].state == "offloaded"
    rig.release(held)
    assert query.done and rig.host.tcbs[conn].state == "host"
    wire.peer_send(b"after the upload")
    rig.run()
    assert read.done and read.value == b"after the upload"
    assert rig.problems() == []


def test_a_send_acknowledged_while_a_refused_initiate_was_below_is_answered() -> None:
    """The host hands its unacknowledged sends down with the initiate (spec §3.2.5) and
    keeps them when the connection is not offloaded (§3.2.4). The peer acknowledged them
    while the initiate was below, news the host could not act on then and that is not told
    again: the host completes what the socket says is acknowledged once it has them back."""
    rig = HostRig()
    conn, wire = rig.open()
    sent = rig.call(rig.host.app_send, conn, b"handed down with the initiate")
    assert not sent.done
    fail_next(rig.target, "MiniportInitiateOffload", S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES)
    offloaded = Reply()
    rig.host.app_offload(conn, None, offloaded)
    rig.host.after_batch()  # the initiate goes down: OFFLOADING
    wire.ack()
    rig.run()
    assert offloaded.done and offloaded.error is not None
    assert rig.host.tcbs[conn].state == "host"
    assert sent.done and sent.value == len(b"handed down with the initiate")
    assert rig.problems() == []


def test_records_made_for_an_offload_the_capabilities_refuse_go_with_it() -> None:
    """A NIC with room for no connection (spec §8) refuses the offload; the neighbor and
    path records the host made for it, never offloaded and used by no one, go at once."""
    rig = HostRig(max_connections=0)
    conn, _ = rig.open()
    refused = rig.call(rig.host.app_offload, conn, None)
    assert refused.done and refused.error is not None
    assert rig.host.objects == {}
    assert rig.call(rig.host.app_close, conn).done and rig.host.tcbs == {}
    assert rig.problems() == []


def _engine_recovery(rig: HostRig) -> None:
    """Run deliveries as the engine does: a handler that raises a planted bug has the call
    it could not serve failed on its behalf (`DriverLayer.fail_unserved`)."""
    sch = rig.scheduler
    run_one = sch.run_one

    def guarded() -> bool:
        if not sch.queue:
            return False
        layer, fn, args = sch.queue[0]
        try:
            return run_one()
        except PlantedBug:
            assert layer.fail_unserved(fn.__name__, args)
            return True

    sch.run_one = guarded  # type: ignore[method-assign]


@pytest.mark.parametrize("how", ["raised", "corrupt"])
def test_a_failed_invalidate_brings_up_a_connection_whose_initiate_was_below(how: str) -> None:
    """An invalidate of a neighbor fails (a layer raised in it, or the NIC found its state
    corrupt, spec §3.7) while the initiate of a second connection under that neighbor is
    below. The host asks up what depends on the object (§3.5), that connection too, once its
    initiate is over; the neighbor then goes, and a later offload is served."""
    rig = HostRig(im=how == "raised")
    _engine_recovery(rig)
    a, _ = rig.open()
    b, _ = rig.open()
    c, _ = rig.open()
    rig.offload(a)
    offloaded_b = Reply()
    rig.host.app_offload(b, None, offloaded_b)
    rig.host.after_batch()  # b's initiate, linking it under a's neighbor, goes down ...
    if how == "raised":
        rig.layers()["im-nic0"].raises.append(RaiseNext(1, "MiniportInvalidateOffload", 1))
    else:
        rig.target.fail_adapter()  # ... to a NIC that queues it until RESUME (spec §5.5)
        fail_next(rig.target, "MiniportInvalidateOffload", S.NDIS_STATUS_FAILURE)
    invalidated = Reply()
    rig.host.app_invalidate(a, "neighbor", invalidated)
    rig.run()
    if how == "corrupt":
        rig.target.recover_adapter()
        rig.run()
    assert invalidated.done and invalidated.error is not None
    assert offloaded_b.done
    assert rig.host.tcbs[a].state == "host" and rig.host.tcbs[b].state == "host"
    late = rig.call(rig.host.app_offload, c, None)
    assert late.done and late.error is None and rig.host.tcbs[c].state == "offloaded"
    assert rig.problems() == []


def test_the_host_brings_up_a_connection_it_could_not_query() -> None:
    """A query that fails leaves the host terminating the object it could not query (spec
    §3.3). A NIC that found its state corrupt asks for that itself (§3.7); an IM that raised
    in the query has no hardware to report and never would: the host brings the connection
    up, and it carries on there."""
    rig = HostRig(im=True)
    _engine_recovery(rig)
    conn, wire = rig.open()
    rig.offload(conn)
    rig.layers()["im-nic0"].raises.append(RaiseNext(1, "MiniportQueryOffload", 1))
    query = rig.call(rig.host.app_query, conn)
    assert query.done and query.error is not None
    assert rig.host.tcbs[conn].state == "host"
    sent = rig.call(rig.host.app_send, conn, b"carried on")
    wire.ack()
    rig.run()
    assert sent.value == len(b"carried on") and bytes(wire.peer_received) == b"carried on"
    assert rig.problems() == []
