"""Send at the target (spec §4.1): write in order, complete only when acknowledged.

The kernel tells which bytes the peer has acknowledged (`WirePort.acked`); an NBL completes
with NDIS_STATUS_SUCCESS only when every byte of it was (spec §4.1). The send backlog the host
paces itself by is indicated with `TcpIndicateSendBacklogChange`, damped (spec §5.3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from chimneyd.ndis.lifecycle import LIVE, UPLOAD_PENDING, Event, Phase, TcpState
from chimneyd.ndis.nbl import NetBufferList, chain_of, iter_chain
from chimneyd.ndis.status import NdisStatus, TcpOffloadEventType, TcpUploadReason

from ..queues import NO_ITEMS, grown
from . import adapter, disconnect, events
from .contexts import TcpContext

if TYPE_CHECKING:
    from .target import OffloadTarget

S = NdisStatus
SUCCESS: Final = S.NDIS_STATUS_SUCCESS
ABORTED: Final = S.NDIS_STATUS_REQUEST_ABORTED
BACKLOG_DAMPING_NS: Final = 1_000_000_000
# Members the I/O path reads, bound once: on Python 3.11 a read off an enum class passes the
# slot of `EnumType.__getattr__` (~800 instructions), a global a few (README, "Benchmarks").
_FAILED: Final = Phase.FAILED
_RESET: Final = TcpState.RESET
_FIN_WAIT_2: Final = TcpState.FIN_WAIT_2
_IO: Final = Event.IO
#: statuses after which the host sends the data itself, after an upload (spec §4.1)
UPLOAD_STATUSES: Final = frozenset(
    {S.NDIS_STATUS_UPLOAD_IN_PROGRESS, S.NDIS_STATUS_REQUEST_UPLOAD, S.NDIS_STATUS_UPLOAD_REQUESTED}
)


def refusal(c: TcpContext) -> NdisStatus | None:
    """The status new I/O gets instead of being processed, if any: REQUEST_ABORTED once the
    connection is reset or its hardware state lost (spec §5.1, §3.7), UPLOAD_IN_PROGRESS once an
    upload is under way or mandatory (spec §3.6.4), or the object invalidated (spec §3.5). A
    connection the kernel gave up on is dead too, but no RST came: its mandatory upload
    request (`TimeoutExpiration`) makes it UPLOAD_IN_PROGRESS (spec §5.2)."""
    # the context is its own Lifecycle (its `lifecycle` property returns it): read in place
    phase = c.phase
    if phase is _FAILED:
        return ABORTED
    if c.tcp is _RESET:
        return S.NDIS_STATUS_UPLOAD_IN_PROGRESS if c.timed_out else ABORTED
    if phase in UPLOAD_PENDING:
        return S.NDIS_STATUS_UPLOAD_IN_PROGRESS
    return None


def send_refusal(c: TcpContext) -> NdisStatus | None:
    """`refusal` for data going out (a send, a graceful disconnect's data and FIN): also once
    a send failed, after which nothing goes on the wire (spec §4.1) — UPLOAD_IN_PROGRESS, the
    upload being what comes next (spec §3.6.4)."""
    status = refusal(c)
    if status is None and c.send_failed:
        return S.NDIS_STATUS_UPLOAD_IN_PROGRESS
    return status


def send(t: OffloadTarget, c: TcpContext, head: NetBufferList) -> None:
    """`MiniportTcpOffloadSend`: strict FIFO within and across calls (spec §4.1)."""
    c.fire(_IO)  # the context is its own Lifecycle: no `lifecycle` property call
    status = send_refusal(c)
    if status is not None:
        refuse_send(t, c, head, status)
        return
    # `take_failure` only while a `fail_next` fault is set: its call cost ~1% of a round
    status = t.take_failure("MiniportTcpOffloadSend", head) if t.fail_next else None
    if status is not None:
        refuse_send(t, c, head, status, hole=True)
        return
    adapter.before_send(t, c)
    wire = c.wire
    pos = wire.bytes_written
    views: list[memoryview] = []
    unacked = c.unacked
    if unacked is NO_ITEMS:
        unacked = c.unacked = []  # its own list once, not a check per NBL
    empty = False
    for nbl in iter_chain(head):
        nbl_views = nbl.views()
        n = 0
        for v in nbl_views:
            n += len(v)
        views.extend(nbl_views)
        unacked.append((nbl, pos, pos + n))
        pos += n
        empty = empty or not n
    wire.write(views)  # one write for the whole chain
    if empty:
        # an empty send behind bytes all acknowledged is done now: no news of an ack would
        # come for it (the socket reports a change, and nothing changes); in order (§4.1)
        complete_acked(t, c, wire.acked())
        watch(c)
    elif unacked and not wire.closed:  # `watch` written out (every send passes here)
        wire.watch_acks()


def watch(c: TcpContext) -> None:
    """Ask for acknowledgement news while anything waits for it."""
    if (c.unacked or c.disconnect_nbl is not None) and not c.wire.closed:
        c.wire.watch_acks()


def wire_acked(t: OffloadTarget, c: TcpContext, acked: int) -> None:
    # the peer acknowledged more of our data: an acceptable segment arrived, which ends an RST
    # validation period (spec §5.2), though RcvNxt did not move
    c.rst_challenged = False
    if c.phase not in _ACKS_COUNT or c.tcp is _RESET:
        return
    if c.tcp is _FIN_WAIT_2:
        disconnect.heard(t, c)  # restarts the FIN_WAIT_2 timer (spec §8)
    complete_acked(t, c, acked)
    if (
        c.disconnect_nbl is not None
        and not c.unacked
        and (c.disconnect_refused is not None or c.wire.fin_acked())
    ):
        disconnect.complete(t, c, SUCCESS)
    if c.held_refusals:  # `release_refusals` has nothing to do otherwise: no call a round
        release_refusals(t, c)
    # `watch` written out: every acknowledgement passes here
    if (c.unacked or c.disconnect_nbl is not None) and not c.wire.closed:
        c.wire.watch_acks()
    _backlog(t, c)


#: Phases in which acknowledgements complete sends (until the terminate takes them over).
#: UPLOAD_REQUESTED among them: after a mandatory upload request the target processes no more
#: received segments, but a send the peer acknowledged was delivered and can only complete
#: SUCCESS, now or at the terminate (spec §5.2 [INF], §3.6.3).
_ACKS_COUNT: Final = frozenset({Phase.OFFLOADING, *LIVE})


def complete_acked(t: OffloadTarget, c: TcpContext, acked: int) -> None:
    """Complete, in order, every NBL whose last byte the peer has acknowledged."""
    done: list[NetBufferList] = []
    unacked = c.unacked
    sent = 0
    while unacked and unacked[0][2] <= acked:
        nbl, start, end = unacked.pop(0)
        n = end - start  # what was written of it: all it held (only a completion advances it)
        nbl.status = SUCCESS
        nbl.tcp_offload_bytes_transferred = n
        nbl.advance(n)
        sent += n
        done.append(nbl)
    if done:
        adapter.forward_progress(t, c)
        t.stats.bytes_sent += sent
        t.complete_sends(c, done)


def fail_sends(t: OffloadTarget, c: TcpContext, status: NdisStatus, every: bool = False) -> None:
    """Complete every outstanding send with `status`; the first may be partly acked, and what
    follows a failed NBL fails too (spec §4.1). An NBL the peer acknowledged whole succeeded,
    whatever came after it: at most one NBL of a completion is partial (spec §9 item 3) —
    unless `every`: after a hardware failure each NBL gets `status` (spec §3.7 step 4), one
    acknowledged whole still reporting all its bytes transferred. Refused sends held behind
    them complete right after, before any disconnect completes (spec §9 item 2)."""
    if not c.unacked:
        release_refusals(t, c)
        return
    acked = c.wire.acked()
    done: list[NetBufferList] = []
    for nbl, start, end in c.unacked:
        k = max(0, min(acked, end) - start)
        # whole means every byte up to its end acknowledged: an empty NBL behind bytes not
        # acknowledged fails with them (spec §9 item 3)
        nbl.status = SUCCESS if acked >= end and not every else status
        nbl.tcp_offload_bytes_transferred = k
        if k:
            nbl.advance(k)
        done.append(nbl)
    c.unacked.clear()
    t.ndis.NdisTcpOffloadSendComplete(t, chain_of(done))
    release_refusals(t, c)


def refuse(
    t: OffloadTarget, c: TcpContext, kind: str, head: NetBufferList, status: NdisStatus
) -> None:
    """Complete refused I/O with `status`, nothing transferred — but in order: after the
    earlier I/O of its kind that is still outstanding (spec §4.1, §4.2, §4.5: completions keep
    posting order; spec §9 item 2). That I/O ends at the latest with the terminate, which hands
    refused sends still held back with the unacknowledged ones (spec §3.6.3)."""
    if _blocked(c, kind):
        c.held_refusals = grown(c.held_refusals, (kind, head, status))
    else:
        complete_now(head, status, _completion(t, kind), t)


def refuse_send(
    t: OffloadTarget, c: TcpContext, head: NetBufferList, status: NdisStatus, hole: bool = False
) -> None:
    """Complete a send refused with `status`, after the sends before it, and ask for the
    upload. With `hole` the send failed: a hole in the stream, so every later send fails too,
    without sending any of its data (spec §4.1)."""
    if hole:
        c.send_failed = True
    refuse(t, c, "send", head, status)
    ask_upload_after_failure(t, c)


def release_refusals(t: OffloadTarget, c: TcpContext) -> None:
    """Complete the refused I/O that nothing earlier holds back any more."""
    if not c.held_refusals:
        return
    held, c.held_refusals = c.held_refusals, NO_ITEMS
    for kind, head, status in held:
        if _blocked(c, kind):
            c.held_refusals = grown(c.held_refusals, (kind, head, status))
        else:
            complete_now(head, status, _completion(t, kind), t)
    ask_upload_after_failure(t, c)


def ask_upload_after_failure(t: OffloadTarget, c: TcpContext) -> None:
    """After a failed send has been completed, ask for the upload (spec §3.6.4: a target
    that asks for an upload after a resource failure refuses I/O until the terminate): the
    host carries the connection on from the last byte acknowledged. Not before the failure
    has gone up: a terminate would hand the failed send back unsent instead (spec §3.6.3)."""
    if not c.send_failed or any(kind == "send" for kind, _, _ in c.held_refusals):
        return
    ask_upload(t, c)


def ask_upload(t: OffloadTarget, c: TcpContext) -> None:
    """Ask for the upload (`UploadRequested`) of a connection still offloaded and not reset."""
    if c.lifecycle.phase in LIVE and c.lifecycle.tcp is not TcpState.RESET:
        events.request_upload(t, c, TcpUploadReason.UploadRequested)


def take_held_sends(c: TcpContext) -> list[NetBufferList]:
    """The refused sends still held (their chains, in order), taken out to be handed back."""
    heads = [head for kind, head, _ in c.held_refusals if kind == "send"]
    c.held_refusals = [h for h in c.held_refusals if h[0] != "send"] or NO_ITEMS
    return heads


def _blocked(c: TcpContext, kind: str) -> bool:
    if any(k == kind for k, _, _ in c.held_refusals):
        return True
    if kind == "send":
        return bool(c.unacked)
    if kind == "receive":
        # nor while an indication executes: a receive completion never overlaps it (spec §4.2)
        return bool(c.posted) or c.busy
    if kind == "disconnect":
        # not held behind unacknowledged sends: those may go back with the terminate, which
        # needs the disconnect completed first (spec §3.6.3)
        return c.disconnect_nbl is not None
    return False


def _completion(t: OffloadTarget, kind: str) -> Callable[[Any, NetBufferList], None]:
    ndis = t.ndis
    if kind == "send":
        return ndis.NdisTcpOffloadSendComplete
    if kind == "receive":
        return ndis.NdisTcpOffloadReceiveComplete
    if kind == "disconnect":
        return ndis.NdisTcpOffloadDisconnectComplete
    return ndis.NdisTcpOffloadForwardComplete


def complete_now(
    head: NetBufferList,
    status: NdisStatus,
    complete: Callable[[Any, NetBufferList], None],
    t: OffloadTarget,
) -> None:
    """Complete a refused request at once, nothing transferred."""
    for nbl in iter_chain(head):
        nbl.status = status
        nbl.tcp_offload_bytes_transferred = 0
    complete(t, head)


#: Phases in which the target advises the host on its send backlog (spec §5.3): not after a
#: mandatory upload request, when it processes the connection no more and refuses every new
#: send (spec §5.2, §3.6.4), so advice on how much to post has nothing to apply to.
_ADVISING: Final = frozenset(LIVE) - {Phase.UPLOAD_REQUESTED}


def _backlog(t: OffloadTarget, c: TcpContext) -> None:
    """Throttled `TcpIndicateSendBacklogChange` (spec §5.3): at most one a second, and only
    when the preferred backlog moved by a factor of two. The preference [EMU]: enough to keep
    the socket busy between two completions — twice the congestion window, or the kernel's send
    buffer if larger (what the socket takes without waiting) — between 64 KiB and 16 MiB.
    None after a mandatory upload request (`_ADVISING`)."""
    now = t.ndis.clock()
    if now - c.backlog_at < BACKLOG_DAMPING_NS or c.phase not in _ADVISING:
        return
    c.backlog_at = now
    cwnd_bytes, snd_buf = c.wire.send_room()
    wanted = max(cwnd_bytes * 2, snd_buf)
    backlog = max(65536, min(16 << 20, wanted))
    if c.backlog == 0 or backlog >= 2 * c.backlog or backlog * 2 <= c.backlog:
        c.backlog = backlog
        events.indicate(t, c, TcpOffloadEventType.TcpIndicateSendBacklogChange, backlog)
