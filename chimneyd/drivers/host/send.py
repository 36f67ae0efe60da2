"""Sending from the host (spec §4.1): through the chimney when offloaded, on the socket when not.

Either way a send completes only when the peer has acknowledged it; its NBL is advanced by the
acknowledged bytes at every layer, so what was acknowledged is the original length minus what
is left. Sends the target refused because of an upload are sent by the host after it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from chimneyd.ndis.lifecycle import FIN_SENT_STATES, Phase, TcpState
from chimneyd.ndis.nbl import Mdl, NetBuffer, NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import NdisStatus

from ..queues import NO_ITEMS, grown
from . import disconnect, terminate
from .tcb import INFO_STATE, AppError, Done, Tcb, ndis_error

if TYPE_CHECKING:
    from .stack import HostStack

S = NdisStatus
SUCCESS: Final = S.NDIS_STATUS_SUCCESS
# Members the I/O path reads, bound once: on Python 3.11 a read off an enum class passes the
# slot of `EnumType.__getattr__` (~800 instructions), a global a few (README, "Benchmarks").
_UPLOAD_REQUESTED: Final = Phase.UPLOAD_REQUESTED
_RESET: Final = TcpState.RESET
#: Completion statuses after which the host sends the data itself, after the upload (§4.1).
_REQUEUE: Final = frozenset(
    {S.NDIS_STATUS_UPLOAD_IN_PROGRESS, S.NDIS_STATUS_REQUEST_UPLOAD, S.NDIS_STATUS_UPLOAD_REQUESTED}
)


class AppSend:
    """One `tcp.send`, answered once every piece of it is over. Pacing by the send backlog may
    post it in several pieces (NBLs); bytes not yet posted wait in the TCB's send queue."""

    __slots__ = ("acked", "done", "epoch", "failed", "length", "pieces", "queued")

    def __init__(self, done: Done, length: int, epoch: int = 0) -> None:
        self.done = done
        self.length = length
        self.epoch = epoch  # the connection's `send_epoch` when the application asked
        self.acked = 0  # bytes the peer acknowledged, over the pieces that are over
        self.pieces = 0  # NBLs made of it and not over yet
        self.queued = 0  # bytes of it still in the send queue
        self.failed: NdisStatus | None = None  # the first failure of a piece

    def answer(self, why: str = "") -> None:
        if self.pieces or self.queued:
            return
        if self.failed is None:
            self.done(self.length, None)
        else:
            self.done(None, ndis_error(self.failed, f" acknowledged {self.acked} bytes{why}"))


def app_send(h: HostStack, tcb: Tcb, data: bytes, done: Done) -> None:
    """`tcp.send`: answered when the peer has acknowledged every byte (rpc-contract)."""
    # `tcb.state`, `tcb.reset` and `tcb.fin_sent`, each read once from the lifecycle (the TCB
    # itself: no `lifecycle` property call): every send asks all of them
    lc = tcb
    state = INFO_STATE[lc.phase]
    if state == "closed":
        done(None, AppError("INVALID_STATE", f"connection {tcb.conn_id} is closed"))
        return
    if lc.tcp is _RESET:
        done(None, ndis_error(S.NDIS_STATUS_REQUEST_ABORTED, f" acknowledged 0 bytes; {tcb.death}"))
        return
    if lc.tcp in FIN_SENT_STATES:
        done(None, AppError("INVALID_STATE", "send after disconnect"))
        return
    send = AppSend(done, len(data), tcb.send_epoch)
    view = memoryview(data)
    if state == "offloaded":
        send.queued = len(view)
        q = tcb.send_q  # `grown` written out: every offloaded send passes here
        if q is NO_ITEMS:
            tcb.send_q = [(view, send)]
        else:
            q.append((view, send))
        pump(h, tcb)
    else:
        h.stats.outstanding_nbls += 1
        host_send(h, tcb, _piece(tcb, send, view))


def _piece(tcb: Tcb, send: AppSend, view: memoryview, posted: int = 0) -> NetBufferList:
    """An NBL over `view`, a piece of `send`. Its `protocol_reserved` is (send, length, bytes
    it counts in `tcb.send_outstanding`: `posted`)."""
    nbl = NetBufferList(NetBuffer(Mdl(view), len(view)))  # `for_data`, one call less per send
    nbl.trace = tcb.trace
    nbl.protocol_reserved = (send, len(view), posted)
    send.pieces += 1
    return nbl


def pump(h: HostStack, tcb: Tcb) -> None:
    """Post queued bytes to the target while the send backlog allows (spec §5.3 [EMU]): the
    bytes posted and not yet completed stay within `SendBacklogSize` once the target has said
    it (`TcpIndicateSendBacklogChange` or a query), unlimited before. Bytes leave the queue in
    order; a `tcp.send` larger than the room left goes down in pieces. Nothing goes down
    once the target asked for the upload: it refuses every send until the terminate (spec
    §3.6.4), which may wait behind a query; the queue goes on the socket after it."""
    phase = tcb.phase  # the TCB is its own Lifecycle
    if INFO_STATE[phase] != "offloaded" or phase is _UPLOAD_REQUESTED or tcb.handle is None:
        return
    q = tcb.send_q
    backlog = tcb.send_backlog
    batch = h.send_batches.get(tcb)
    while q:
        view, send = q[0]
        n = len(view)
        take = n
        if backlog:
            room = backlog - tcb.send_outstanding
            if room <= 0 and n:
                break
            take = min(n, max(room, 0))
        if take < n:
            piece = view[:take]
            q[0] = (view[take:], send)
        else:
            piece = view
            q.pop(0)
        send.queued -= take
        nbl = _piece(tcb, send, piece, take)
        tcb.send_outstanding += take
        # batched: one chain per connection per inbox drain (perf-notes: batch every hand-off)
        if batch is None:
            batch = h.send_batches[tcb] = [nbl]
        else:
            batch.append(nbl)
    if not q and tcb.fin_queued is not None:
        disconnect.send_queued_fin(h, tcb)  # the graceful disconnect waited for the queue


def flush_sends(h: HostStack, tcb: Tcb) -> None:
    """Send the connection's batched NBLs as one chain: one NdisOffloadTcpSend, one hop per
    layer, one write at the NIC. Called before any other call on the connection, so the order
    across calls is kept."""
    batch = h.send_batches.pop(tcb, None)
    if batch:
        assert tcb.handle is not None
        head = link_chain(batch)
        assert head is not None
        h.ndis.NdisOffloadTcpSend(h, tcb.handle, head)


def mark_posted(tcb: Tcb, nbls: list[NetBufferList]) -> None:
    """NBLs the host wrote itself are now the target's (handed down at offload)."""
    for nbl in nbls:
        send, length, _ = nbl.protocol_reserved
        nbl.protocol_reserved = (send, length, nbl.data_length)
        tcb.send_outstanding += nbl.data_length


def mark_returned(tcb: Tcb, nbls: list[NetBufferList]) -> None:
    """NBLs the target handed back (a failed initiate, a terminate) are the host's again."""
    for nbl in nbls:
        send, length, _ = nbl.protocol_reserved
        nbl.protocol_reserved = (send, length, 0)
    tcb.send_outstanding = 0


def unqueue(h: HostStack, tcb: Tcb) -> None:
    """The connection is back in the host: what waited in the send queue goes on the socket."""
    q, tcb.send_q = tcb.send_q, NO_ITEMS
    for view, send in q:
        send.queued -= len(view)
        h.stats.outstanding_nbls += 1
        host_send(h, tcb, _piece(tcb, send, view))


def host_send(h: HostStack, tcb: Tcb, nbl: NetBufferList) -> None:
    """Write on the socket the host carries; complete on acknowledgement (`wire_acked`)."""
    wire = tcb.wire
    if wire.closed:
        finish_send(h, nbl, S.NDIS_STATUS_REQUEST_ABORTED)
        return
    start = wire.bytes_written
    if not nbl.data_length and not tcb.sends and wire.acked() >= start:
        # nothing to send and every byte before it acknowledged: done now. No news of an ack
        # would come for it (the socket reports a change, and nothing changes)
        finish_send(h, nbl, SUCCESS)
        return
    wire.write(nbl.views())
    tcb.sends = grown(tcb.sends, (nbl, start, wire.bytes_written))
    wire.watch_acks()


def complete_host_sends(h: HostStack, tcb: Tcb, acked: int) -> None:
    """Complete the host-written sends the peer has acknowledged up to offset `acked`."""
    sends = tcb.sends
    while sends and sends[0][2] <= acked:
        nbl, start, end = sends.pop(0)
        nbl.tcp_offload_bytes_transferred += end - start
        nbl.advance(end - start)
        finish_send(h, nbl, SUCCESS)
    if sends and acked > sends[0][1]:
        # a partly acknowledged head: advance it so a later initiate starts at SndUna
        nbl, start, end = sends[0]
        nbl.advance(acked - start)
        nbl.tcp_offload_bytes_transferred += acked - start
        sends[0] = (nbl, acked, end)


def finish_send(h: HostStack, nbl: NetBufferList, status: NdisStatus, why: str = "") -> None:
    """A piece of an application's send is over; the send is answered with the bytes
    acknowledged (and, failed, `why`) once every piece of it is."""
    # typed: `protocol_reserved` is `Any`, and every read and write of an untyped `send` is
    # a generic attribute access on the compiled build; a host send NBL always holds this
    piece: tuple[AppSend, int, int] = nbl.protocol_reserved
    send, length, _ = piece
    nbl.protocol_reserved = None
    h.stats.outstanding_nbls -= 1
    acked = length - nbl.data_length
    h.stats.bytes_sent += acked
    send.acked += acked
    send.pieces -= 1
    if status is not SUCCESS and send.failed is None:
        send.failed = status
    send.answer(why)


def fail_host_sends(h: HostStack, tcb: Tcb, status: NdisStatus) -> None:
    """Fail every send the host holds (after what the peer acknowledged is completed)."""
    complete_host_sends(h, tcb, tcb.wire.acked())
    why = f"; {tcb.death}" if tcb.reset else ""
    while tcb.sends:
        nbl, _, _ = tcb.sends.pop(0)
        finish_send(h, nbl, status, why)
    for nbl in tcb.requeue:
        finish_send(h, nbl, status, why)
    tcb.requeue = NO_ITEMS
    fail_queued(h, tcb, status, why)


def fail_queued(h: HostStack, tcb: Tcb, status: NdisStatus, why: str = "") -> None:
    """Fail the bytes still waiting in the send queue."""
    q, tcb.send_q = tcb.send_q, NO_ITEMS
    for view, send in q:
        send.queued -= len(view)
        if send.failed is None:
            send.failed = status
        send.answer(why)


def complete(h: HostStack, head: NetBufferList) -> None:
    """`ProtocolTcpOffloadSendComplete`. One call may carry NBLs of many connections (a
    NIC completes once per drain): the connections to act on after it are kept in dicts, in
    the order first met, so looking one up costs the same however many there are."""
    upload_wanted: dict[Tcb, None] = {}
    paced: dict[Tcb, None] = {}
    for nbl in iter_chain(head):
        nbl.next = None
        tcb = h.tcb_of(nbl)
        piece: tuple[AppSend, int, int] = nbl.protocol_reserved  # typed, as in `finish_send`
        send, length, posted = piece
        if posted and tcb is not None:
            tcb.send_outstanding -= posted  # no longer at the target: room in the backlog
            nbl.protocol_reserved = (send, length, 0)
            if tcb.send_q:
                paced[tcb] = None
        h.stats.outstanding_nbls += 1  # the host's again
        status = nbl.status
        if status in _REQUEUE and tcb is not None:
            upload_wanted[tcb] = None
            if behind_a_hole(tcb, nbl):
                finish_send(h, nbl, tcb.hole_status)  # never sent after the hole (spec §4.1)
            else:
                tcb.requeue = grown(tcb.requeue, nbl)  # still the host's, until it sends it
            continue
        if status != SUCCESS and tcb is not None:
            hole(h, tcb, status)
        finish_send(h, nbl, status)
    for tcb in upload_wanted:
        terminate.start(h, tcb)
    for tcb in paced:
        if tcb not in upload_wanted:  # else its room would go to sends refused in turn
            pump(h, tcb)


def hole(h: HostStack, tcb: Tcb, status: NdisStatus) -> None:
    """A send the target failed for good (not for an upload): the peer has not got its bytes
    and, the target failing every later one too (spec §4.1), none after them. Whatever the
    application asked to send before it heard of it lies behind that hole: the bytes still
    queued are failed now, the pieces still at the target when they come back (even with an
    upload status) or with the terminate, and the application sends again from what was
    acknowledged. A graceful disconnect asked before fails too (`disconnect.complete`)."""
    tcb.send_epoch += 1
    tcb.hole_status = status
    if tcb.requeue:
        # sends refused for an upload ahead of this one and back in the host, to send after
        # the upload: the application asked for them before it heard of the hole, so they fail
        # as those still at the target do when they come back (`complete`, `terminate`). Two
        # layers holding failures (a MUX over an IM) complete them ahead of this one; they are
        # answered ahead of it too (completions keep posting order, spec §4.1, §9 item 2).
        # Every one is behind this hole: the epoch moved on above, after all of them were made
        behind, tcb.requeue = tcb.requeue, NO_ITEMS
        for nbl in behind:
            finish_send(h, nbl, status)
    fail_queued(h, tcb, status)
    if tcb.fin_queued is not None:
        # a graceful disconnect behind those bytes: its FIN would close the stream over the
        # hole; it fails with them (and one already below comes back to the same end)
        queued, tcb.fin_queued = tcb.fin_queued, None
        queued(status.name, None)


def behind_a_hole(tcb: Tcb, nbl: NetBufferList) -> bool:
    """Whether `nbl` is a piece of a send the application made before the last hole."""
    send: AppSend = nbl.protocol_reserved[0]
    return send.epoch < tcb.send_epoch


def wire_acked(h: HostStack, tcb: Tcb, acked: int) -> None:
    """The peer acknowledged bytes on a socket the host writes to (host mode, or the host's
    own sends still waiting while an upload is under way)."""
    phase = tcb.lifecycle.phase
    if phase not in (Phase.IDLE, Phase.TERMINATING) or tcb.wire.closed:
        return
    complete_host_sends(h, tcb, acked)
    if (
        tcb.disconnect_done is not None
        and phase is Phase.IDLE
        and not tcb.sends
        and tcb.wire.fin_acked()
    ):
        disconnect.fin_acked(h, tcb)
    if tcb.sends or tcb.disconnect_done is not None:
        tcb.wire.watch_acks()
