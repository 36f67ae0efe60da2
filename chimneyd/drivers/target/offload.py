"""Initiate offload at the target (spec §3.2): walk the tree, offload each block, complete.

Blocks are processed depth first, then breadth (spec §3.2.2); a block that fails takes its
dependents with it, and a failed root stops the walk (spec §3.2.4). A connection's context is
live as soon as its block is offloaded, but it indicates nothing until the completion has gone
up (spec §3.2.7): its phase is OFFLOADING until then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chimneyd.ndis.blocks import BlockKind, BlockRole, OffloadBlock, TcpOffloadStateCached, walk
from chimneyd.ndis.lifecycle import FIN_RECEIVED_STATES, Event, Phase, TcpState, tcp_state_of
from chimneyd.ndis.nbl import iter_chain
from chimneyd.ndis.status import OFFLOADED_STATUSES, NdisStatus, TcpUploadReason

from ..queues import grown
from ..tcp import offset_of
from . import adapter, disconnect, events, receive, send
from .cached import apply as apply_cached
from .contexts import Context, NeighborContext, PathContext, TcpContext

if TYPE_CHECKING:
    from .target import OffloadTarget

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS


def initiate(t: OffloadTarget, root: OffloadBlock, arrived_ns: int | None = None) -> None:
    """`MiniportInitiateOffload`: offload the tree, then complete it (spec §3.2.1).
    `arrived_ns`: when it reached the NIC, if the NIC queued it while paused (spec §5.5)."""
    new: list[Context] = []
    _initiate_list(t, root, None, new, is_root=True)
    if arrived_ns is not None:
        for ctx in new:
            if isinstance(ctx, TcpContext):
                # spec §8: the FIN_WAIT_2 timer handed down runs on the target's clock from its
                # initiate, not from the RESUME that let the NIC take the connection
                disconnect.started_at(t, ctx, arrived_ns)
    t.ndis.NdisMInitiateOffloadComplete(t, root)
    # indications may start once the completion is on its way (spec §3.2.7); buffered data goes
    # first (spec §3.2.7 "After completion")
    for ctx in new:
        ctx.lifecycle.fire(Event.INITIATE_OFFLOADED)
        if isinstance(ctx, TcpContext):
            receive.pump(t, ctx)
            send.watch(ctx)
            if _invalidated_under(ctx):
                # linked under a path or neighbor invalidated since the host built the tree
                # (an initiate held while paused, spec §5.5): the connection is asked back like
                # those invalidated with it, or the object would stay invalidated while it
                # lives and every new connection under it would wait (spec §3.5)
                ctx.lifecycle.fire(Event.DEPENDENCY_INVALIDATED)
                events.request_upload(t, ctx, TcpUploadReason.InvalidState)


def _invalidated_under(c: TcpContext) -> bool:
    path = c.path
    return Phase.INVALIDATED in (path.lifecycle.phase, path.neighbor.lifecycle.phase)


def _initiate_list(
    t: OffloadTarget,
    first: OffloadBlock | None,
    parent: Context | None,
    new: list[Context],
    is_root: bool = False,
) -> tuple[int, int]:
    """Offload `first` and its siblings depth first; returns (offloaded, failed) counts.
    With `is_root`, `first` is the tree's root block, whose failure stops the walk."""
    ok = failed = 0
    block = first
    while block is not None:
        # the role as the host built it: offloading a new block writes its slot, after which
        # it would read as a linker
        role = block.role()
        status, ctx = _initiate_block(t, block, parent, new)
        block.status = status
        if status in OFFLOADED_STATUSES:
            if block.dependent_block_list is not None:
                d_ok, d_failed = _initiate_list(t, block.dependent_block_list, ctx, new)
                if d_failed:
                    block.status = _with_failed_dependents(role, d_ok)
            # counted by the status it ends with: a linker its dependents failed counts as
            # failed for the block above it (spec §2.3, §3.2.4)
            if block.status in OFFLOADED_STATUSES:
                ok += 1
            else:
                failed += 1
        else:
            failed += 1
            _fail_subtree(block.dependent_block_list)
            if is_root and block is first:
                # the root could not be offloaded: stop the walk (spec §3.2.4). Only the root:
                # a later sibling of it fails with its dependents, and the walk goes on, so
                # that as many connections as possible are offloaded (spec §3.2.2)
                _fail_subtree(block.next_block)
                return ok, failed + 1
        block = block.next_block
    return ok, failed


def _with_failed_dependents(role: BlockRole, dependents_ok: int) -> NdisStatus:
    """The status of an offloaded block some of whose dependents failed (spec §2.3): a
    placeholder is always SUCCESS; a linker is FAILURE when all of them failed, else
    PARTIAL_SUCCESS; a new object is offloaded whatever its dependents did (partially, then)."""
    if role is BlockRole.PLACEHOLDER:
        return SUCCESS
    if role is BlockRole.LINKER and dependents_ok == 0:
        return S.NDIS_STATUS_FAILURE
    return S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS


def _fail_subtree(first: OffloadBlock | None) -> None:
    """Blocks never attempted get NDIS_STATUS_FAILURE (spec §3.2.4)."""
    for block in walk(first):
        block.status = S.NDIS_STATUS_FAILURE


def _initiate_block(
    t: OffloadTarget, block: OffloadBlock, parent: Context | None, new: list[Context]
) -> tuple[NdisStatus, Context | None]:
    role = block.role()
    if role is BlockRole.PLACEHOLDER:
        return SUCCESS, parent
    cell = block.miniport_offload_context
    assert cell is not None
    if role is BlockRole.LINKER:
        ctx: Context = cell.miniport_offload_context
        return SUCCESS, ctx
    upper = block.ndis_offload_handle
    assert upper is not None
    kind = block.kind
    if kind is BlockKind.NEIGHBOR:
        if t.table.full:
            return S.NDIS_STATUS_OFFLOAD_NEIGHBOR_ENTRIES, None
        failure = t.take_failure(
            "MiniportInitiateOffload[neighbor]", upper, block.dependent_block_list
        )
        if failure is not None:
            return failure, None
        ctx = NeighborContext(upper, block.const, block.cached)
        now = adapter.ticks(t)
        ctx.nrt = now
        ctx.hrt = now - block.cached.HostReachabilityDelta  # spec §5.4: HRT = NCT - HRD
    elif kind is BlockKind.PATH:
        if not isinstance(parent, NeighborContext):
            return S.NDIS_STATUS_FAILURE, None
        if t.table.full:
            return S.NDIS_STATUS_OFFLOAD_PATH_ENTRIES, None
        failure = t.take_failure("MiniportInitiateOffload[path]", upper, block.dependent_block_list)
        if failure is not None:
            return failure, None
        ctx = PathContext(upper, block.const, block.cached, parent)
        parent.dependents += 1
    else:
        if not isinstance(parent, PathContext):
            return S.NDIS_STATUS_FAILURE, None
        status, tcp = _initiate_tcp(t, block, parent)
        if tcp is None:
            return status, None
        ctx = tcp
    ctx.lifecycle.fire(Event.INITIATE)
    t.table_add(ctx.id, ctx)
    t.stats.offloads_active += 1
    cell.miniport_offload_context = ctx  # the slot is written only on success (spec §3.2.3)
    new.append(ctx)
    return SUCCESS, ctx


def _initiate_tcp(
    t: OffloadTarget, block: OffloadBlock, path: PathContext
) -> tuple[NdisStatus, TcpContext | None]:
    if t.tcp_count >= t.max_connections:
        return S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES, None
    failure = t.take_failure("MiniportInitiateOffload", block.ndis_offload_handle)
    if failure is not None:
        return failure, None
    const = block.const
    wire = t.find_wire(
        path.const.SourceAddress, const.LocalPort, path.const.DestinationAddress, const.RemotePort
    )
    if wire is None or wire.closed:
        return S.NDIS_STATUS_FAILURE, None
    upper = block.ndis_offload_handle
    assert upper is not None
    delegated = block.delegated
    tcp_state = tcp_state_of(delegated.State)
    rcv_nxt = offset_of(wire.irs, delegated.RcvNxt, wire.bytes_read)
    cached = block.cached if block.cached is not None else TcpOffloadStateCached()
    c = TcpContext(upper, path, wire, const, cached, tcp_state, rcv_nxt)
    if not apply_cached(t, c, cached):
        return S.NDIS_STATUS_FAILURE, None  # a cached value this socket cannot take (spec §2.2)
    if tcp_state in FIN_RECEIVED_STATES:
        # the host received the peer's FIN before the offload: it needs no indication of it
        c.rx.fin = rcv_nxt
        c.fin_indicated = True
    # BufferedData: copy into target memory before completing (spec §3.2.3); no PSH comes with
    # it (`c.buffered_psh` stays False): a push-mode request it fills partly waits (spec §4.2)
    if delegated.BufferedData is not None:
        data = b"".join(bytes(v) for nbl in iter_chain(delegated.BufferedData) for v in nbl.views())
        if data:
            c.buffered = grown(c.buffered, memoryview(data))
            c.buffered_bytes = len(data)
    # outstanding send data (spec §3.2.5): the chain starts at SndUna; [SndUna, SndMax) is
    # already on the wire, the rest is sent now, in order
    snd_una = offset_of(wire.isn, delegated.SndUna, wire.bytes_written)
    snd_max = offset_of(wire.isn, delegated.SndMax, wire.bytes_written)
    pos = snd_una
    to_write: list[memoryview] = []
    for nbl in iter_chain(block.net_buffer_list_chain):
        n = nbl.data_length
        if pos + n > snd_max:
            skip = max(0, snd_max - pos)
            for v in nbl.views():
                if skip >= len(v):
                    skip -= len(v)
                    continue
                to_write.append(v[skip:])
                skip = 0
        c.unacked = grown(c.unacked, (nbl, pos, pos + n))
        pos += n
    wire.set_owner(t, c)
    # reading the socket is ours to decide now. The host may have stopped it (its buffer was
    # full) and would never start it again: take it stopped, and `_flow` starts it at the
    # completion if what we hold allows (design: back-pressure)
    c.paused = True
    wire.pause_reading()
    if to_write:
        wire.write(to_write)
    # bytes the host read from the socket before we took it are the host's: they come back down
    # by NdisOffloadTcpForward (spec §4.6)
    t.tcp_count += 1
    path.dependents += 1
    if tcp_state is TcpState.FIN_WAIT_2:
        # the FIN_WAIT_2 timer comes down in `RetransmitTimeoutDelta` (spec §8)
        disconnect.fin_wait_2_at_offload(t, c, delegated, block.held_ns)
    return SUCCESS, c
