"""The host paces its sends by the target's send backlog (spec §5.3 [EMU]): no more than
`SendBacklogSize` bytes posted and not completed, the rest queued in order in the host, released
by completions, and carried over an upload — with the real host over the real target, no socket.
"""

from __future__ import annotations

from chimneyd.ndis.status import TcpOffloadEventType, TcpUploadReason
from chimneyd.testing.clock import Delivery
from chimneyd.testing.hostrig import HostRig, Reply

E = TcpOffloadEventType
BACKLOG = 1000


class Paced:
    """An offloaded connection whose target asked for a 1000-byte backlog; every delivery is
    watched for the bytes outstanding at the target."""

    def __init__(self) -> None:
        self.rig = rig = HostRig(im=True)
        self.conn, self.wire = rig.open()
        rig.offload(self.conn)
        (self.ctx,) = rig.contexts()
        self.most = 0
        rig.scheduler.observers.append(self._watch)
        # the target tells the host its preferred backlog (spec §5.3)
        rig.ndis.NdisTcpOffloadEventHandler(
            rig.target, self.ctx.upper, E.TcpIndicateSendBacklogChange, BACKLOG
        )
        rig.run()

    def _watch(self, _: Delivery) -> None:
        # posted to the target and not completed: every NBL it holds, acknowledged or not
        held = sum(end - start for _, start, end in self.ctx.unacked)
        self.most = max(self.most, held)

    def send(self, *payloads: bytes) -> list[Reply]:
        return [self.rig.call(self.rig.host.app_send, self.conn, p) for p in payloads]

    def ack_slowly(self, step: int = 300) -> None:
        """The peer acknowledges a little at a time until everything written is."""
        for _ in range(10_000):
            if (
                self.wire.acked() == self.wire.bytes_written
                and not self.rig.host.tcbs[self.conn].send_q
            ):
                return
            self.wire.ack(min(self.wire.acked() + step, self.wire.bytes_written))
            self.rig.run()
        raise AssertionError("the sends never drained")


PAYLOADS = [bytes([65 + i]) * 700 for i in range(8)] + [b"z" * 5000, b"", b"tail"]


def test_outstanding_bytes_stay_within_the_backlog_and_arrive_in_order() -> None:
    p = Paced()
    replies = p.send(*PAYLOADS)
    assert p.rig.host.tcbs[p.conn].send_outstanding <= BACKLOG
    assert p.wire.bytes_written <= BACKLOG  # the rest waits in the host
    p.ack_slowly()
    assert 0 < p.most <= BACKLOG
    assert bytes(p.wire.peer_received) == b"".join(PAYLOADS)
    assert [r.value for r in replies] == [len(x) for x in PAYLOADS]
    assert p.rig.problems() == []


def test_without_a_known_backlog_nothing_is_held_back() -> None:
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    for payload in PAYLOADS:
        rig.call(rig.host.app_send, conn, payload)
    assert bytes(wire.peer_received) == b"".join(PAYLOADS)  # all posted at once


def test_queued_sends_survive_an_upload_and_the_fin_waits_for_them() -> None:
    p = Paced()
    replies = p.send(*PAYLOADS)
    disconnect = p.rig.call(p.rig.host.app_disconnect, p.conn, False)
    assert not p.wire.eof_written  # the FIN follows the bytes still queued (spec §4.5)
    late = p.rig.call(p.rig.host.app_send, p.conn, b"after the FIN")
    assert late.error is not None and late.error.symbol == "INVALID_STATE"
    p.wire.ack(300)
    p.rig.run()
    upload = p.rig.call(p.rig.host.app_upload, p.conn)
    assert upload.value == {"state": "host"}
    # back in the host: the queued bytes went on the socket, then the FIN
    assert bytes(p.wire.peer_received) == b"".join(PAYLOADS) and p.wire.eof_written
    p.wire.ack()
    p.rig.run()
    assert [r.value for r in replies] == [len(x) for x in PAYLOADS]
    assert disconnect.value == "NDIS_STATUS_SUCCESS"
    assert p.most <= BACKLOG and p.rig.problems() == []


def test_queued_fin_goes_down_once_the_queue_drains() -> None:
    p = Paced()
    p.send(b"x" * 2500)
    disconnect = p.rig.call(p.rig.host.app_disconnect, p.conn, False)
    p.ack_slowly()
    assert p.wire.eof_written and bytes(p.wire.peer_received) == b"x" * 2500
    p.wire.ack()
    p.rig.run()
    assert disconnect.value == "NDIS_STATUS_SUCCESS"


def test_a_reset_fails_what_is_still_queued() -> None:
    p = Paced()
    replies = p.send(b"a" * 800, b"b" * 800)
    p.wire.ack(400)
    p.rig.run()
    p.wire.peer_reset()
    p.rig.run()
    assert [r.error.symbol for r in replies] == ["NDIS_STATUS", "NDIS_STATUS"]
    assert "acknowledged 400 bytes" in str(replies[0].error)
    assert "acknowledged 0 bytes" in str(replies[1].error)
    assert p.wire.bytes_written == BACKLOG  # the rest of the second never left the host
    p.rig.call(p.rig.host.app_close, p.conn)
    assert p.rig.problems() == [] and p.rig.checker.check_drained(p.rig.ndis.stats()) == []


def test_a_query_answer_sets_the_backlog_too() -> None:
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    ctx.backlog = 2048  # what the target last computed
    answer = rig.call(rig.host.app_query, conn)
    assert answer.value["SendBacklogSize"] == 2048
    assert rig.host.tcbs[conn].send_backlog == 2048
    rig.call(rig.host.app_send, conn, b"q" * 5000)
    assert wire.bytes_written == 2048


def test_paced_sends_wait_for_an_upload_the_target_asked_for() -> None:
    """The target asked for the upload (a mandatory retrieve) while a query of the connection
    is below, so the terminate waits for the query (spec §3.1), and the target refuses every
    send until then (§3.6.4). Room freed in the send backlog meanwhile posts nothing: the
    queued bytes go on the socket after the upload, once, in order (§5.3)."""
    rig = HostRig()
    conn, wire = rig.open()
    rig.offload(conn)
    (ctx,) = rig.contexts()
    rig.ndis.NdisTcpOffloadEventHandler(rig.target, ctx.upper, E.TcpIndicateSendBacklogChange, 1000)
    rig.run()
    sch = rig.scheduler
    query, held = rig.query_held_below(conn)
    first = rig.call(rig.host.app_send, conn, b"a" * 1000)  # fills the backlog
    rest = rig.call(rig.host.app_send, conn, b"b" * 8000)  # waits in the host's queue
    rig.target.retrieve(rig.contexts()[0], TcpUploadReason.UploadRequested)
    rig.run()
    posted = len(sch.delivered(handler="MiniportTcpOffloadSend"))
    wire.ack()  # room in the backlog while the upload waits for the query
    rig.run()
    assert len(sch.delivered(handler="MiniportTcpOffloadSend")) == posted
    rig.release(held)
    assert query.done and rig.host.tcbs[conn].state == "host"
    wire.ack()
    rig.run()
    assert (first.value, rest.value) == (1000, 8000)
    assert bytes(wire.peer_received) == b"a" * 1000 + b"b" * 8000
    assert rig.problems() == []
