"""Terminate offload at the target (spec §3.6): stop the chimney, hand everything back.

Before `NdisMTerminateOffloadComplete` the target completes or returns every outstanding
request, waits for its own indications to return, fills the delegated state and returns
unacknowledged send data and undelivered receive data (spec §3.6.3). A terminate, query or
invalidate that finds the hardware state corrupt follows spec §3.7 (`corrupt`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from chimneyd.ndis.blocks import (
    BlockKind,
    OffloadBlock,
    TcpOffloadStateDelegated,
    walk,
)
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.lifecycle import Event, Phase
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import NdisStatus, TcpOffloadEventType, TcpUploadReason

from ..delegated import fill_from_kernel, tick_clock
from ..segment import TH_FIN
from ..tcp import seq
from . import disconnect, events, receive, send
from .cached import adjust_delegated, release
from .contexts import Context, NeighborContext, PathContext, TcpContext

if TYPE_CHECKING:
    from .target import OffloadTarget

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS
ABORTED = S.NDIS_STATUS_REQUEST_ABORTED


def terminate(t: OffloadTarget, root: OffloadBlock) -> None:
    """`MiniportTerminateOffload`: record the tree; finish once no indication is in flight."""
    if fails_corrupt(t, "MiniportTerminateOffload", root):
        fail(t, root)
        return
    for block in walk(root):
        ctx = t.context_of(block)
        if isinstance(ctx, TcpContext):
            if ctx.lifecycle.phase is not Phase.TERMINATING:
                failed = ctx.lifecycle.phase is Phase.FAILED
                ctx.lifecycle.fire(Event.TERMINATE)
                _start(t, ctx, failed)
        elif ctx is not None:
            ctx.lifecycle.fire(Event.TERMINATE)
    t.deferred_terminates.append(root)
    finish(t)


def fail(t: OffloadTarget, root: OffloadBlock) -> None:
    """The terminate finds the hardware state corrupt (a `fail_next` fault, or a bug the
    target raised on before it kept the terminate): spec §3.7 steps 1-3; the host's next
    terminate then aborts what is outstanding (step 4)."""
    for block in walk(root):
        ctx = t.context_of(block)
        if ctx is not None and ctx.lifecycle.phase is not Phase.TERMINATING:
            ctx.lifecycle.fire(Event.TERMINATE)
    corrupt(t, root, t.ndis.NdisMTerminateOffloadComplete, Event.TERMINATE_FAILED)


def _start(t: OffloadTarget, c: TcpContext, hardware_failed: bool) -> None:
    """Stop the chimney for `c` (spec §3.6.3): later segments take the ordinary path."""
    receive.stop_push(t, c)
    release(c)
    if not c.wire.closed:
        c.wire.set_owner(None, None)  # segments now go up the ordinary path (spec §3.6.4)
    if c.paused:
        disconnect.note_kernel_news(t, c)  # the FIN_WAIT_2 timer's, before it is lost (spec §8)
        c.wire.resume_reading()
        c.paused = False
    if hardware_failed:
        # outstanding sends and posted receives are aborted, in every NBL (spec §3.7 step 4):
        # what the peer acknowledged meanwhile was not processed by the corrupt target
        send.fail_sends(t, c, ABORTED, every=True)
        status = ABORTED
    else:
        send.complete_acked(t, c, c.wire.acked())
        status = S.NDIS_STATUS_UPLOAD_IN_PROGRESS
    # posted receives complete now, or once the indication in flight has returned (spec §4.2)
    receive.fail_receives(t, c, status)
    if c.disconnect_nbl is not None and (hardware_failed or not c.unacked):
        # a disconnect still behind unacknowledged sends waits for the hand-back: the sends
        # acknowledged until then complete before it (spec §9 item 2)
        disconnect.complete(t, c, status)
    send.release_refusals(t, c)


def finish(t: OffloadTarget) -> None:
    """Complete every deferred terminate whose connections have no indication in flight."""
    still: list[OffloadBlock] = []
    for root in t.deferred_terminates:
        tcps = [
            c
            for b in walk(root)
            if b.kind is BlockKind.TCP and isinstance(c := t.context_of(b), TcpContext)
        ]
        if any(c.busy for c in tcps):
            still.append(root)  # its own indications must have returned first (spec §3.6.3)
            continue
        for block in reversed(list(walk(root))):  # dependents before what they depend on
            ctx = t.context_of(block)
            block.status = SUCCESS
            if ctx is None:
                continue
            _release(t, ctx, block)
        t.ndis.NdisMTerminateOffloadComplete(t, root)
    t.deferred_terminates = still


def _release(t: OffloadTarget, ctx: Context, block: OffloadBlock) -> None:
    if isinstance(ctx, TcpContext):
        _hand_back(t, ctx, block)
        t.tcp_count -= 1
        ctx.path.dependents -= 1
    elif isinstance(ctx, PathContext):
        if ctx.dependents:
            raise ChimneyProtocolError(
                f"{t.name}: {ctx} terminated with {ctx.dependents} dependents (spec §3.1)"
            )
        ctx.neighbor.dependents -= 1
    elif ctx.dependents:
        raise ChimneyProtocolError(
            f"{t.name}: {ctx} terminated with {ctx.dependents} dependents (spec §3.1)"
        )
    ctx.lifecycle.fire(Event.TERMINATE_COMPLETE)
    t.table_remove(ctx.id)
    t.stats.offloads_active -= 1


def _hand_back(t: OffloadTarget, c: TcpContext, block: OffloadBlock) -> None:
    """Fill delegated state, return send data and buffered data (spec §3.6.3)."""
    d = block.delegated
    if d is None:
        d = block.delegated = TcpOffloadStateDelegated()
    acked = c.wire.acked()
    if c.lifecycle.phase is not Phase.FAILED:
        send.complete_acked(t, c, acked)
    if c.disconnect_nbl is not None:
        # it completes (UPLOAD_IN_PROGRESS, or the status it was refused with) before the
        # terminate, the sends before it not yet acknowledged go back (spec §3.6.3)
        disconnect.complete(t, c, S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
    # SndUna from the same read that completed and advances the sends: the peer's ACKs keep
    # arriving, and a later read would put SndUna past the data handed back, where the host
    # would wait for acknowledgement of bytes never written (spec §3.6.3)
    fill_delegated(t, c, d, acked)  # with what is left of a FIN_WAIT_2 timer (spec §8)
    disconnect.stop_fin_wait_2(t, c)
    # unfinished sends go back in their original order, the first advanced to SndUna
    returned: list[NetBufferList] = []
    for nbl, start, end in c.unacked:
        if acked > start:
            nbl.advance(min(acked, end) - start)
        returned.append(nbl)
    c.unacked.clear()
    # sends refused behind them were never sent: they go back too, after them in order
    for head in send.take_held_sends(c):
        returned.extend(iter_chain(head))
    block.net_buffer_list_chain = link_chain(returned)
    send.release_refusals(t, c)  # nothing is held back any more
    d.SendDataHead = returned[0] if returned else None
    d.SendDataTail = returned[-1] if returned else None
    # received, acknowledged, undelivered data goes back as BufferedData (spec §3.6.3)
    d.BufferedData = None
    if c.buffered_bytes:
        nbl = NetBufferList.for_views(list(c.buffered))
        nbl.trace = c.trace
        t.indicated[nbl.id] = nbl
        t.stats.outstanding_nbls += 1
        d.BufferedData = nbl
        c.buffered.clear()
        c.buffered_bytes = 0
    # Out-of-order data was already acknowledged by the real kernel and will never be sent
    # again, so unlike a real TOE we may not drop it (spec §3.6.3): it goes up the ordinary
    # path, where the host puts it in order by offset. [EMU]
    for off, view, flags in c.rx.drain_ooo():
        t.ndis.NdisMIndicateReceiveNetBufferLists(t, c.wire, off, bytes(view), flags)
    receive.hand_up_held(t, c)  # urgent data and what followed it (spec §5.2)
    fin = c.rx.fin
    if fin is not None and fin > c.rx.rcv_nxt:
        t.ndis.NdisMIndicateReceiveNetBufferLists(t, c.wire, fin, b"", TH_FIN)


def fill_delegated(
    t: OffloadTarget, c: TcpContext, d: TcpOffloadStateDelegated, acked: int | None = None
) -> None:
    """The delegated variables as the target holds them now (spec §2.2, §8); SndUna at
    `acked` when given (the offset the terminate's hand-back goes by), else as the socket
    tells now."""
    wire = c.wire
    info = wire.tcp_info() if not wire.closed else None
    if acked is None:
        acked = wire.acked()
    d.State = c.lifecycle.delegated_state
    d.RcvNxt = seq(wire.irs, c.rx.rcv_nxt)
    d.SndUna = seq(wire.isn, acked)
    d.SndNxt = d.SndMax = seq(wire.isn, wire.bytes_written)
    d.RcvWnd = max(0, c.rcv_bound - c.buffered_bytes)
    fill_from_kernel(d, info, tick_clock(t.ndis.clock()))
    adjust_delegated(t, c, d, info)
    disconnect.fin_wait_2_left(t, c, d)
    d.SendBacklogSize = c.backlog or 65536
    d.ReceiveBacklogSize = c.buffered_bytes


def fails_corrupt(t: OffloadTarget, call: str, root: OffloadBlock) -> bool:
    """Whether a `fail_next` fault fails `call` on `root`, which then finds the hardware state
    of what it names corrupt (`corrupt`, spec §3.7): the fault names the connections lost
    with the paths and neighbors too, not only those `root` names."""
    return t.take_failure(call, root, lost=lambda: lost_with(t, root)) is not None


def lost_with(t: OffloadTarget, root: OffloadBlock) -> list[TcpContext]:
    """The connections on the paths and neighbors `root` names: lost with them when their
    state is corrupt."""
    objects = [
        ctx
        for block in walk(root)
        if (ctx := t.context_of(block)) is not None and not isinstance(ctx, TcpContext)
    ]
    return _on(t, objects) if objects else []


def _on(t: OffloadTarget, objects: Sequence[Context]) -> list[TcpContext]:
    return [c for c in t.connections() if c.path in objects or c.path.neighbor in objects]


def corrupt(
    t: OffloadTarget,
    root: OffloadBlock,
    complete: Callable[[Any, OffloadBlock], None],
    event: Event = Event.HARDWARE_FAILURE,
) -> None:
    """Hardware-state corruption while querying, invalidating or terminating (spec §3.7)."""
    tcps: list[TcpContext] = []
    objects: list[Context] = []
    for block in walk(root):
        block.status = S.NDIS_STATUS_FAILURE
        ctx = t.context_of(block)
        if ctx is not None:
            ctx.lifecycle.fire(event)
        if isinstance(ctx, TcpContext):
            tcps.append(ctx)
        elif ctx is not None:
            objects.append(ctx)
    # the connections on a corrupt path or neighbor lose their state with it: each is
    # retrieved and aborted like a named one, or the host would keep them (and the object, and
    # every new connection waiting to link under it) offloaded for ever
    named = {id(c) for c in tcps}  # a whole NIC's terminate names thousands
    for c in _on(t, objects):
        if id(c) not in named:
            c.lifecycle.fire(Event.HARDWARE_FAILURE)
            tcps.append(c)
    complete(t, root)  # step 1: the operation fails in the affected blocks
    for c in tcps:
        c.lifecycle.fire(Event.RESET)  # the connection's state is lost with the hardware
        disconnect.stop_fin_wait_2(t, c)
        events.indicate(
            t, c, TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.HardwareFailure
        )
        events.indicate(t, c, TcpOffloadEventType.TcpIndicateAbort, 0)


__all__ = [
    "NeighborContext",
    "corrupt",
    "fail",
    "fails_corrupt",
    "fill_delegated",
    "finish",
    "lost_with",
    "terminate",
]
