"""Query, update and invalidate at the target (spec §3.3, §3.4, §3.5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimneyd.ndis.blocks import OffloadBlock, TcpOffloadStateDelegated, walk
from chimneyd.ndis.lifecycle import Event, Phase
from chimneyd.ndis.status import NdisStatus, TcpUploadReason

from . import adapter, events, receive, terminate
from .cached import apply as apply_cached
from .contexts import NeighborContext, PathContext, TcpContext

if TYPE_CHECKING:
    from .target import OffloadTarget

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS
FAILURE = S.NDIS_STATUS_FAILURE


def _corrupt(ctx: NeighborContext | PathContext | TcpContext) -> bool:
    """The object's hardware state was found corrupt (spec §3.7) after the host issued this
    operation: queries, updates and invalidates may overlap (spec §3.1), and the host learns of
    the corruption only from the completion and the indications that follow it. The object's
    block fails again and nothing else happens to it: the retrieve and abort are on their way,
    and the terminate that answers them is all that is left [EMU]."""
    return ctx.lifecycle.phase is Phase.FAILED


def query(t: OffloadTarget, root: OffloadBlock) -> None:
    """`MiniportQueryOffload`: fill the structures that follow each named object (spec §3.3)."""
    if terminate.fails_corrupt(t, "MiniportQueryOffload", root):
        terminate.corrupt(t, root, t.ndis.NdisMQueryOffloadStateComplete)
        return
    for block in walk(root):
        ctx = t.context_of(block)
        if ctx is not None and _corrupt(ctx):
            block.status = FAILURE
            continue
        if ctx is not None:
            ctx.lifecycle.fire(Event.QUERY)
            if isinstance(ctx, TcpContext):
                if block.delegated is None:
                    block.delegated = TcpOffloadStateDelegated()
                terminate.fill_delegated(t, ctx, block.delegated)
                # the pointers of the unions mean nothing in a query answer (spec §2.2)
                block.delegated.SendDataHead = block.delegated.SendDataTail = None
                block.delegated.BufferedData = None
                if block.const is not None:
                    block.const = ctx.const
                if block.cached is not None:
                    block.cached = ctx.cached
        block.status = SUCCESS
    t.ndis.NdisMQueryOffloadStateComplete(t, root)


def update(t: OffloadTarget, root: OffloadBlock) -> None:
    """`MiniportUpdateOffload` (spec §3.4): new cached variables; and a path named below a
    neighbor block moves under that neighbor (a relink, the next-hop change's step 3)."""
    failed = t.take_failure("MiniportUpdateOffload", root) is not None
    if not failed:
        _relink(t, root)
    for block in walk(root):
        ctx = t.context_of(block)
        if ctx is None:
            block.status = SUCCESS
            continue
        if _corrupt(ctx):
            block.status = FAILURE
            continue
        ctx.lifecycle.fire(Event.UPDATE)
        if failed:
            block.status = FAILURE  # the target carries on normally (spec §3.4)
            continue
        if isinstance(ctx, TcpContext) and block.cached is not None:
            # copied into the connection and applied to its socket (spec §3.4); a value the
            # socket cannot take fails the block, and the target carries on as it was
            if not apply_cached(t, ctx, block.cached, ctx.cached):
                block.status = FAILURE
                continue
            receive.pump(t, ctx)  # a new receive bound may release or hold the peer
        elif block.cached is not None:
            ctx.cached = block.cached
            if isinstance(ctx, NeighborContext):
                # the host's reachable time moves with it (spec §5.4: HRT = NCT - HRD): a
                # neighbor the host has just confirmed is not queried as stale
                ctx.hrt = adapter.ticks(t) - block.cached.HostReachabilityDelta
        block.status = SUCCESS
    t.ndis.NdisMUpdateOffloadComplete(t, root)


def _relink(t: OffloadTarget, root: OffloadBlock) -> None:
    """Paths named below a neighbor block hang under that neighbor from now on: the target
    keeps its own connection → path → neighbor pointers (spec §2.3), and the host moves a
    path by an update whose root names the new neighbor (§3.4 (b)); the old one can then be
    terminated once nothing hangs below it."""
    block: OffloadBlock | None = root
    while block is not None:
        neighbor = t.context_of(block)
        if isinstance(neighbor, NeighborContext) and not _corrupt(neighbor):
            dep = block.dependent_block_list
            while dep is not None:
                path = t.context_of(dep)
                if isinstance(path, PathContext) and path.neighbor is not neighbor:
                    path.neighbor.dependents -= 1
                    path.neighbor = neighbor
                    neighbor.dependents += 1
                dep = dep.next_block
        block = block.next_block


def invalidate(t: OffloadTarget, root: OffloadBlock) -> None:
    """`MiniportInvalidateOffload`: stop sending on every connection that depends on a named
    object and ask for each to be uploaded with `InvalidState` (spec §3.5)."""
    if terminate.fails_corrupt(t, "MiniportInvalidateOffload", root):
        terminate.corrupt(t, root, t.ndis.NdisMInvalidateOffloadComplete)
        return
    affected: list[TcpContext] = []
    for block in walk(root):
        ctx = t.context_of(block)
        block.status = SUCCESS
        if ctx is None:
            continue
        if _corrupt(ctx):
            block.status = FAILURE
            continue
        ctx.lifecycle.fire(Event.INVALIDATE)
        if isinstance(ctx, TcpContext):
            affected.append(ctx)
        else:
            for c in _dependents(t, ctx):
                c.lifecycle.fire(Event.DEPENDENCY_INVALIDATED)
                affected.append(c)
    t.ndis.NdisMInvalidateOffloadComplete(t, root)
    for c in affected:
        events.request_upload(t, c, TcpUploadReason.InvalidState)


def _dependents(t: OffloadTarget, obj: NeighborContext | PathContext) -> list[TcpContext]:
    return [c for c in t.connections() if c.path is obj or c.path.neighbor is obj]
