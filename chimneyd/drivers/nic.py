"""The offload target: a chimney NIC whose offloaded connections run on real loopback sockets.

Spec §3 (state operations seen from the target), §4 (I/O), §5 (events). The kernel's TCP plays
the wire and the peer; this layer is everything the TOE does above it: it owns the socket while a
connection is offloaded, completes sends when the peer has acknowledged them, runs the delivery
algorithm of spec §4.4 for received bytes, and raises the events of spec §5.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chimneyd.ndis.blocks import (
    TIMER_NOT_RUNNING,
    BlockKind,
    BlockRole,
    OffloadBlock,
    TcpOffloadStateCached,
    TcpOffloadStateConst,
    TcpOffloadStateDelegated,
    walk,
)
from chimneyd.ndis.broker import Binding, Ndis
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.handles import NdisOffloadHandle, next_object_id
from chimneyd.ndis.lifecycle import Call, OffloadLifecycle, OffloadState
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import (
    OFFLOADED_STATUSES,
    NdisStatus,
    TcpDisconnectFlags,
    TcpOffloadConnectionState,
    TcpOffloadEventType,
    TcpUploadReason,
)

from .base import DriverLayer, TimerHandle, Timers, downcall
from .segment import TH_FIN, TH_PSH, TH_RST, parse_segment
from .wire import WirePort, offset_of, seq

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS
ABORTED = S.NDIS_STATUS_REQUEST_ABORTED
UPLOADING = S.NDIS_STATUS_UPLOAD_IN_PROGRESS
MAX_INDICATION = 1 << 20
TCP_STATE = TcpOffloadConnectionState

FindWire = Callable[[bytes, int, bytes, int], WirePort | None]


class NeighborContext:
    def __str__(self) -> str:
        return f"neighbor context {self.id}"

    __slots__ = ("dependents", "id", "invalid", "lifecycle", "state", "upper")

    def __init__(self, upper: NdisOffloadHandle, block: OffloadBlock) -> None:
        self.id = next_object_id()
        self.upper = upper
        self.state = (block.const, block.cached)
        self.dependents = 0
        self.invalid = False
        self.lifecycle = OffloadLifecycle(self)


class PathContext:
    def __str__(self) -> str:
        return f"path context {self.id}"

    __slots__ = ("dependents", "id", "invalid", "lifecycle", "neighbor", "state", "upper")

    def __init__(
        self, upper: NdisOffloadHandle, block: OffloadBlock, neighbor: NeighborContext
    ) -> None:
        self.id = next_object_id()
        self.upper = upper
        self.state = (block.const, block.cached)
        self.neighbor = neighbor
        self.dependents = 0
        self.invalid = False
        self.lifecycle = OffloadLifecycle(self)


class TcpContext:
    """The target's state for one offloaded connection (spec §3.2.3)."""

    def __str__(self) -> str:
        return f"TCP context {self.id}"

    __slots__ = (
        "aborted",
        "backlog",
        "backlog_at",
        "buffered",
        "buffered_bytes",
        "buffered_psh",
        "busy",
        "cached",
        "const",
        "disconnect_end",
        "disconnect_indicated",
        "disconnect_nbl",
        "fin_offset",
        "fin_sent",
        "hw_failed",
        "id",
        "initiated",
        "invalid",
        "lifecycle",
        "ooo",
        "path",
        "paused",
        "posted",
        "push_timer",
        "rcv_nxt",
        "refused",
        "terminating",
        "trace",
        "unacked",
        "upload_requested",
        "upper",
        "wire",
    )

    def __init__(self, upper: NdisOffloadHandle, path: PathContext, wire: WirePort) -> None:
        self.id = next_object_id()
        self.upper = upper
        self.trace = upper.trace
        self.path = path
        self.wire = wire
        self.lifecycle = OffloadLifecycle(self)
        self.const = TcpOffloadStateConst()
        self.cached = TcpOffloadStateCached()
        self.initiated = False
        # receive side (spec §4.2-§4.4)
        self.rcv_nxt = 0
        self.buffered: list[memoryview] = []
        self.buffered_bytes = 0
        self.buffered_psh = False
        self.ooo: dict[int, tuple[memoryview, int]] = {}
        self.posted: list[NetBufferList] = []
        self.busy = False
        self.refused = False
        self.push_timer: TimerHandle | None = None
        self.fin_offset: int | None = None
        self.disconnect_indicated = False
        self.paused = False
        # send side (spec §4.1, §4.5)
        self.unacked: list[tuple[NetBufferList, int, int]] = []
        self.disconnect_nbl: NetBufferList | None = None
        self.disconnect_end = 0
        self.fin_sent = False
        self.aborted = False
        self.upload_requested: TcpUploadReason | None = None
        self.invalid = False
        self.hw_failed = False
        self.terminating = False
        self.backlog = 0
        self.backlog_at = 0


class OffloadTarget(DriverLayer):
    """A chimney-capable NIC (miniport edge only)."""

    kind = "target"
    has_miniport_edge = True

    def __init__(
        self,
        name: str,
        ndis: Ndis,
        timers: Timers,
        find_wire: FindWire,
        max_connections: int = 16384,
        rx_buffer_bytes: int = 256 * 1024,
        push_ticks_ms: int = 500,
    ) -> None:
        # neighbors and paths share the table with TCP contexts: room for them on top
        super().__init__(name, ndis, timers, max_connections * 2 + 64)
        self.find_wire = find_wire
        self.max_connections = max_connections
        self.rx_buffer_bytes = rx_buffer_bytes
        self.push_ticks = push_ticks_ms / 1000.0
        self.tcp_count = 0
        self.indicated: dict[int, NetBufferList] = {}  # indicated NBLs the host still holds
        self.deferred_terminates: list[OffloadBlock] = []
        self.failed = False  # target_failure fault: offload paused, everything uploaded
        self.paused_initiates: list[OffloadBlock] = []

    # ============================================================================================
    # state operations (spec §3)
    # ============================================================================================
    @downcall
    def MiniportInitiateOffload(self, root: OffloadBlock) -> None:
        self._initiate_list(root, None, is_root=True)
        new_tcp = [
            b.miniport_offload_context.miniport_offload_context
            for b in walk(root)
            if b.kind is BlockKind.TCP
            and b.status in OFFLOADED_STATUSES
            and b.miniport_offload_context is not None
        ]
        self.ndis.NdisMInitiateOffloadComplete(self, root)
        # indications may start once the completion is on its way (spec §3.2.7); buffered data
        # goes first (spec §3.2.7 "After completion").
        for ctx in new_tcp:
            ctx.initiated = True
            self._pump(ctx)
            self._watch(ctx)

    def _initiate_list(
        self, first: OffloadBlock | None, parent: Any, is_root: bool = False
    ) -> tuple[int, int]:
        """Offload `first` and its siblings depth first; returns (offloaded, failed) counts."""
        ok = failed = 0
        block = first
        while block is not None:
            status, ctx = self._initiate_block(block, parent)
            block.status = status
            if status in OFFLOADED_STATUSES:
                ok += 1
                if block.dependent_block_list is not None:
                    d_ok, d_failed = self._initiate_list(block.dependent_block_list, ctx)
                    if d_failed:
                        role = block.role()
                        if role is BlockRole.LINKER and d_ok == 0:
                            block.status = S.NDIS_STATUS_FAILURE
                        else:
                            block.status = S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS
            else:
                failed += 1
                self._fail_subtree(block.dependent_block_list)
                if is_root:
                    # the root could not be offloaded: stop the walk (spec §3.2.4)
                    self._fail_subtree(block.next_block)
                    return ok, failed + 1
            block = block.next_block
        return ok, failed

    def _fail_subtree(self, first: OffloadBlock | None) -> None:
        for block in walk(first):
            block.status = S.NDIS_STATUS_FAILURE

    def _initiate_block(self, block: OffloadBlock, parent: Any) -> tuple[NdisStatus, Any]:
        role = block.role()
        if role is BlockRole.PLACEHOLDER:
            return SUCCESS, parent
        cell = block.miniport_offload_context
        assert cell is not None
        if role is BlockRole.LINKER:
            return SUCCESS, cell.miniport_offload_context
        if self.failed:
            return S.NDIS_STATUS_FAILURE, None
        kind = block.kind
        upper = block.ndis_offload_handle
        assert upper is not None
        ctx: Any
        if kind is BlockKind.NEIGHBOR:
            if self.table.full:
                return S.NDIS_STATUS_OFFLOAD_NEIGHBOR_ENTRIES, None
            failure = self.take_failure("MiniportInitiateOffload[neighbor]")
            if failure is not None:
                return failure, None
            ctx = NeighborContext(upper, block)
        elif kind is BlockKind.PATH:
            if not isinstance(parent, NeighborContext):
                return S.NDIS_STATUS_FAILURE, None
            if self.table.full:
                return S.NDIS_STATUS_OFFLOAD_PATH_ENTRIES, None
            failure = self.take_failure("MiniportInitiateOffload[path]")
            if failure is not None:
                return failure, None
            ctx = PathContext(upper, block, parent)
            parent.dependents += 1
        else:
            status = self._initiate_tcp(block, parent)
            if status is not SUCCESS:
                return status, None
            ctx = block.scratch
            block.scratch = None
        ctx.lifecycle.fire(Call.INITIATE)
        ctx.lifecycle.fire(Call.INITIATE_OFFLOADED)
        self.table_add(ctx.id, ctx)
        self.stats.offloads_active += 1
        cell.miniport_offload_context = ctx  # the slot is written only on success (spec §3.2.3)
        return SUCCESS, ctx

    def _initiate_tcp(self, block: OffloadBlock, path: Any) -> NdisStatus:
        if not isinstance(path, PathContext):
            return S.NDIS_STATUS_FAILURE
        if self.tcp_count >= self.max_connections:
            return S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES
        failure = self.take_failure("MiniportInitiateOffload")
        if failure is not None:
            return failure
        const: TcpOffloadStateConst = block.const
        src, dst = path.state[0].SourceAddress, path.state[0].DestinationAddress
        wire = self.find_wire(src, const.LocalPort, dst, const.RemotePort)
        if wire is None or wire.closed:
            return S.NDIS_STATUS_FAILURE
        upper = block.ndis_offload_handle
        assert upper is not None
        delegated: TcpOffloadStateDelegated = block.delegated
        ctx = TcpContext(upper, path, wire)
        ctx.const = const
        if block.cached is not None:
            ctx.cached = block.cached
        ctx.rcv_nxt = offset_of(wire.irs, delegated.RcvNxt, wire.bytes_read)
        # BufferedData: copy into target memory before completing (spec §3.2.3)
        if delegated.BufferedData is not None:
            data = b"".join(
                bytes(v) for nbl in iter_chain(delegated.BufferedData) for v in nbl.views()
            )
            if data:
                ctx.buffered.append(memoryview(data))
                ctx.buffered_bytes = len(data)
        st = delegated.State
        ctx.fin_sent = st in (
            TCP_STATE.TcpConnectionFinWait1,
            TCP_STATE.TcpConnectionFinWait2,
            TCP_STATE.TcpConnectionLastAck,
            TCP_STATE.TcpConnectionClosing,
        )
        if st in (
            TCP_STATE.TcpConnectionCloseWait,
            TCP_STATE.TcpConnectionLastAck,
            TCP_STATE.TcpConnectionClosing,
        ):
            # the peer's FIN was received by the host before the offload
            ctx.fin_offset = ctx.rcv_nxt
        # outstanding send data (spec §3.2.5): the chain starts at SndUna; [SndUna, SndNxt) is
        # already on the wire, the rest is sent now, in order.
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
            ctx.unacked.append((nbl, pos, pos + n))
            pos += n
        wire.set_owner(self, ctx)
        if to_write:
            wire.write(to_write)
        # bytes already read from the socket before we took it are the host's: they come back
        # down by NdisOffloadTcpForward (spec §4.6)
        self.tcp_count += 1
        path.dependents += 1
        block.scratch = ctx
        return SUCCESS

    @downcall
    def MiniportTerminateOffload(self, root: OffloadBlock) -> None:
        failure = self.take_failure("MiniportTerminateOffload")
        if failure is not None:
            self._corrupt(root, self.ndis.NdisMTerminateOffloadComplete)
            return
        for block in walk(root):
            ctx = self._ctx_of(block)
            if isinstance(ctx, TcpContext):
                if not ctx.terminating:
                    ctx.lifecycle.fire(Call.TERMINATE)
                    self._start_terminate(ctx)
            elif ctx is not None:
                ctx.lifecycle.fire(Call.TERMINATE)
        self.deferred_terminates.append(root)
        self._finish_terminates()

    def _ctx_of(self, block: OffloadBlock) -> Any:
        cell = block.miniport_offload_context
        if cell is None:
            return None
        ctx = cell.miniport_offload_context
        if ctx is None or ctx.id not in self.table:
            raise ChimneyProtocolError(f"{self.name}: block references no live context")
        return ctx

    def _start_terminate(self, c: TcpContext) -> None:
        """Stop the chimney for `c` (spec §3.6.3): later segments take the ordinary path."""
        c.terminating = True
        self._stop_push(c)
        if c.wire.closed is False:
            c.wire.set_owner(None, None)  # segments now go up the ordinary path (spec §3.6.4)
        if c.paused:
            c.wire.resume_reading()
            c.paused = False
        status = ABORTED if c.hw_failed else UPLOADING
        if not c.hw_failed:
            self._complete_acked(c, c.wire.acked() if not c.wire.closed else 0)
        if c.hw_failed:
            self._fail_sends(c, ABORTED)
        self._fail_receives(c, status)
        if c.disconnect_nbl is not None:
            self._complete_disconnect(c, status)

    def _finish_terminates(self) -> None:
        """Complete every deferred terminate whose connections have no indication in flight."""
        still: list[OffloadBlock] = []
        for root in self.deferred_terminates:
            tcps = [
                self._ctx_of(b)
                for b in walk(root)
                if b.kind is BlockKind.TCP and b.miniport_offload_context is not None
            ]
            if any(c.busy for c in tcps):
                still.append(root)
                continue
            for block in reversed(list(walk(root))):  # dependents before what they depend on
                ctx = self._ctx_of(block)
                if ctx is None:
                    block.status = SUCCESS
                    continue
                if isinstance(ctx, TcpContext):
                    self._hand_back(ctx, block)
                    self.tcp_count -= 1
                    ctx.path.dependents -= 1
                elif isinstance(ctx, PathContext):
                    if ctx.dependents:
                        raise ChimneyProtocolError(
                            f"{self.name}: path {ctx.id} terminated with {ctx.dependents} dependents (spec §3.1)"
                        )
                    ctx.neighbor.dependents -= 1
                elif ctx.dependents:
                    raise ChimneyProtocolError(
                        f"{self.name}: neighbor {ctx.id} terminated with dependents (spec §3.1)"
                    )
                ctx.lifecycle.fire(Call.TERMINATE_COMPLETE)
                self.table_remove(ctx.id)
                self.stats.offloads_active -= 1
                block.status = SUCCESS
            self.ndis.NdisMTerminateOffloadComplete(self, root)
        self.deferred_terminates = still

    def _hand_back(self, c: TcpContext, block: OffloadBlock) -> None:
        """Fill delegated state, return send data and buffered data (spec §3.6.3)."""
        d = block.delegated
        if d is None:
            d = block.delegated = TcpOffloadStateDelegated()
        acked = 0 if c.wire.closed else c.wire.acked()
        if not c.hw_failed:
            self._complete_acked(c, acked)
        self._fill_delegated(c, d)
        # unfinished sends go back in their original order, the first advanced to SndUna
        returned: list[NetBufferList] = []
        for nbl, start, end in c.unacked:
            if acked > start:
                k = min(acked, end) - start
                nbl.advance(k)
            returned.append(nbl)
        c.unacked.clear()
        block.net_buffer_list_chain = link_chain(returned)
        d.SendDataHead = returned[0] if returned else None
        d.SendDataTail = returned[-1] if returned else None
        # received, acknowledged, undelivered data goes back as BufferedData (spec §3.6.3)
        d.BufferedData = None
        if c.buffered_bytes:
            nbl = NetBufferList.for_views(list(c.buffered))
            nbl.trace = c.trace
            self.indicated[nbl.id] = nbl
            self.stats.outstanding_nbls += 1
            d.BufferedData = nbl
            c.buffered.clear()
            c.buffered_bytes = 0
        # Out-of-order data was already acknowledged by the real kernel and will never be sent
        # again, so unlike a real TOE we may not drop it (spec §3.6.3): it goes up the ordinary
        # path, where the host puts it in order by offset. [EMU]
        for off, (view, flags) in sorted(c.ooo.items()):
            self.ndis.NdisMIndicateReceiveNetBufferLists(self, c.wire, off, bytes(view), flags)
        c.ooo.clear()
        if c.fin_offset is not None and c.fin_offset > c.rcv_nxt:
            self.ndis.NdisMIndicateReceiveNetBufferLists(self, c.wire, c.fin_offset, b"", TH_FIN)

    def _fill_delegated(self, c: TcpContext, d: TcpOffloadStateDelegated) -> None:
        wire = c.wire
        info = wire.tcp_info() if not wire.closed else None
        acked = wire.acked() if not wire.closed else wire.bytes_written
        if c.aborted or c.hw_failed:
            state = TCP_STATE.TcpConnectionClosed
        elif c.fin_sent and c.fin_offset is not None:
            state = TCP_STATE.TcpConnectionLastAck
        elif c.fin_sent:
            state = (
                TCP_STATE.TcpConnectionFinWait2
                if wire.fin_acked()
                else TCP_STATE.TcpConnectionFinWait1
            )
        elif c.fin_offset is not None and c.rcv_nxt >= c.fin_offset:
            state = TCP_STATE.TcpConnectionCloseWait
        else:
            state = TCP_STATE.TcpConnectionEstablished
        d.State = state
        d.RcvNxt = seq(wire.irs, c.rcv_nxt)
        d.SndUna = seq(wire.isn, acked)
        d.SndNxt = d.SndMax = seq(wire.isn, wire.bytes_written)
        window = max(0, self.rx_buffer_bytes - c.buffered_bytes)
        d.RcvWnd = window
        if info is not None:
            mss = info.snd_mss or 1
            d.CWnd = info.snd_cwnd * mss
            d.SsThresh = min(info.snd_ssthresh, 0x3FFFFFFF) * mss
            d.SRtt = info.rtt_us // 1000 * 8  # ticks of 1 ms, passed as 8x (spec §8)
            d.RttVar = info.rttvar_us // 1000 * 4
            d.SndWnd = d.MaxSndWnd = info.rcv_space
            d.RetransmitCount = info.retransmits
            d.TotalRT = info.total_retrans
        d.RetransmitTimeoutDelta = TIMER_NOT_RUNNING if not c.unacked else 0
        d.KeepAliveTimeoutDelta = TIMER_NOT_RUNNING
        d.SendBacklogSize = c.backlog or 65536
        d.ReceiveBacklogSize = c.buffered_bytes

    @downcall
    def MiniportQueryOffload(self, root: OffloadBlock) -> None:
        if self.take_failure("MiniportQueryOffload") is not None:
            self._corrupt(root, self.ndis.NdisMQueryOffloadStateComplete)
            return
        for block in walk(root):
            ctx = self._ctx_of(block)
            if ctx is not None:
                ctx.lifecycle.fire(Call.QUERY)
                if isinstance(ctx, TcpContext):
                    if block.delegated is None:
                        block.delegated = TcpOffloadStateDelegated()
                    self._fill_delegated(ctx, block.delegated)
                    block.delegated.SendDataHead = block.delegated.SendDataTail = None
                    block.delegated.BufferedData = None
                    if block.const is not None:
                        block.const = ctx.const
                    if block.cached is not None:
                        block.cached = ctx.cached
            block.status = SUCCESS
        self.ndis.NdisMQueryOffloadStateComplete(self, root)

    @downcall
    def MiniportUpdateOffload(self, root: OffloadBlock) -> None:
        failed = self.take_failure("MiniportUpdateOffload") is not None
        for block in walk(root):
            ctx = self._ctx_of(block)
            if ctx is None:
                block.status = SUCCESS
                continue
            ctx.lifecycle.fire(Call.UPDATE)
            if failed:
                block.status = S.NDIS_STATUS_FAILURE  # the target carries on normally (spec §3.4)
                continue
            if isinstance(ctx, TcpContext) and block.cached is not None:
                ctx.cached = block.cached
            elif not isinstance(ctx, TcpContext) and block.cached is not None:
                ctx.state = (ctx.state[0], block.cached)
            block.status = SUCCESS
        self.ndis.NdisMUpdateOffloadComplete(self, root)

    @downcall
    def MiniportInvalidateOffload(self, root: OffloadBlock) -> None:
        if self.take_failure("MiniportInvalidateOffload") is not None:
            self._corrupt(root, self.ndis.NdisMInvalidateOffloadComplete)
            return
        affected: list[TcpContext] = []
        for block in walk(root):
            ctx = self._ctx_of(block)
            block.status = SUCCESS
            if ctx is None:
                continue
            ctx.lifecycle.fire(Call.INVALIDATE)
            ctx.invalid = True
            if isinstance(ctx, TcpContext):
                affected.append(ctx)
            else:
                affected.extend(
                    c
                    for c in self.table
                    if isinstance(c, TcpContext) and (c.path is ctx or c.path.neighbor is ctx)
                )
        self.ndis.NdisMInvalidateOffloadComplete(self, root)
        for c in affected:
            c.invalid = True
            self.request_upload(c, TcpUploadReason.InvalidState)

    def _corrupt(self, root: OffloadBlock, complete: Callable[[Any, OffloadBlock], None]) -> None:
        """Hardware-state corruption while querying, invalidating or terminating (spec §3.7)."""
        tcps: list[TcpContext] = []
        for block in walk(root):
            block.status = S.NDIS_STATUS_FAILURE
            ctx = self._ctx_of(block)
            if isinstance(ctx, TcpContext):
                tcps.append(ctx)
        complete(self, root)  # step 1: the operation fails in the affected blocks
        for c in tcps:
            c.hw_failed = True
            c.aborted = True
            self._event(c, TcpOffloadEventType.TcpIndicateRetrieve, TcpUploadReason.HardwareFailure)
            self._event(c, TcpOffloadEventType.TcpIndicateAbort, 0)

    # ============================================================================================
    # adapter-level faults and status indications (spec §5.5)
    # ============================================================================================
    def fail_target(self) -> None:
        """NIC failure: pause offloads and ask the host to upload everything (spec §5.5)."""
        self.failed = True
        self.ndis.NdisMIndicateStatusEx(self, S.NDIS_STATUS_OFFLOAD_PAUSE)
        self.ndis.NdisMIndicateStatusEx(self, S.NDIS_STATUS_UPLOAD_ALL)
        self.state = "failed"

    def recover_target(self) -> None:
        self.failed = False
        self.state = "running"
        self.ndis.NdisMIndicateStatusEx(self, S.NDIS_STATUS_OFFLOAD_RESUME)

    def request_upload(self, c: TcpContext, reason: TcpUploadReason) -> None:
        """`TcpIndicateRetrieve` with `reason` (spec §5.2), once per connection."""
        if c.upload_requested is not None or c.terminating:
            return
        c.upload_requested = reason
        if c.lifecycle.allows(Call.RETRIEVE):
            c.lifecycle.fire(Call.RETRIEVE)
        self._event(c, TcpOffloadEventType.TcpIndicateRetrieve, reason)

    def _event(self, c: TcpContext, event: TcpOffloadEventType, info: int) -> None:
        self.ndis.NdisTcpOffloadEventHandler(self, c.upper, event, int(info))

    # ============================================================================================
    # send (spec §4.1)
    # ============================================================================================
    def _refusal(self, c: TcpContext) -> NdisStatus | None:
        if c.aborted:
            return ABORTED
        if (
            c.terminating
            or (c.upload_requested is not None and c.upload_requested.mandatory)
            or c.invalid
        ):
            return UPLOADING
        return None

    @downcall
    def MiniportTcpOffloadSend(self, c: TcpContext, head: NetBufferList) -> None:
        c.lifecycle.fire(Call.IO)
        refusal = self._refusal(c) or self.take_failure("MiniportTcpOffloadSend")
        if refusal is not None:
            self._complete_now(head, refusal, self.ndis.NdisTcpOffloadSendComplete)
            return
        wire = c.wire
        pos = wire.bytes_written
        views: list[memoryview] = []
        for nbl in iter_chain(head):
            nbl_views = nbl.views()
            n = 0
            for v in nbl_views:
                n += len(v)
            views.extend(nbl_views)
            c.unacked.append((nbl, pos, pos + n))
            pos += n
        wire.write(views)
        self._watch(c)

    def _watch(self, c: TcpContext) -> None:
        if (c.unacked or c.disconnect_nbl is not None) and not c.wire.closed:
            c.wire.watch_acks()

    def WireAcked(self, c: TcpContext, acked: int) -> None:
        if c.terminating or c.aborted or c.id not in self.table:
            return
        self._complete_acked(c, acked)
        if c.disconnect_nbl is not None and not c.unacked and c.wire.fin_acked():
            self._complete_disconnect(c, SUCCESS)
        self._watch(c)
        self._backlog(c)

    def _complete_acked(self, c: TcpContext, acked: int) -> None:
        done: list[NetBufferList] = []
        unacked = c.unacked
        while unacked and unacked[0][2] <= acked:
            nbl, start, end = unacked.pop(0)
            nbl.status = SUCCESS
            nbl.tcp_offload_bytes_transferred = end - start
            nbl.advance(nbl.data_length)
            done.append(nbl)
        if done:
            self.stats.bytes_sent += sum(n.tcp_offload_bytes_transferred for n in done)
            self.ndis.NdisTcpOffloadSendComplete(self, link_chain(done))  # type: ignore[arg-type]

    def _fail_sends(self, c: TcpContext, status: NdisStatus) -> None:
        """Complete every outstanding send with `status`; the first may be partly acked (spec §4.1)."""
        if not c.unacked:
            return
        acked = 0 if c.wire.closed else c.wire.acked()
        done: list[NetBufferList] = []
        for nbl, start, end in c.unacked:
            k = max(0, min(acked, end) - start)
            if k == end - start and status is not ABORTED:
                nbl.status = SUCCESS
            else:
                nbl.status = status
            nbl.tcp_offload_bytes_transferred = k
            if k:
                nbl.advance(k)
            done.append(nbl)
        c.unacked.clear()
        self.ndis.NdisTcpOffloadSendComplete(self, link_chain(done))  # type: ignore[arg-type]

    def _complete_now(
        self,
        head: NetBufferList,
        status: NdisStatus,
        complete: Callable[[Any, NetBufferList], None],
    ) -> None:
        for nbl in iter_chain(head):
            nbl.status = status
            nbl.tcp_offload_bytes_transferred = 0
        complete(self, head)

    def _backlog(self, c: TcpContext) -> None:
        """Throttled `TcpIndicateSendBacklogChange` (spec §5.3): at most one a second, and only
        when the preferred backlog moved by a factor of two."""
        now = self.ndis.clock()
        if now - c.backlog_at < 1_000_000_000:
            return
        c.backlog_at = now
        info = c.wire.tcp_info()
        backlog = max(65536, min(16 << 20, info.snd_cwnd * max(info.snd_mss, 1) * 2))
        if c.backlog == 0 or backlog >= 2 * c.backlog or backlog * 2 <= c.backlog:
            c.backlog = backlog
            self._event(c, TcpOffloadEventType.TcpIndicateSendBacklogChange, backlog)

    # ============================================================================================
    # disconnect (spec §4.5)
    # ============================================================================================
    @downcall
    def MiniportTcpOffloadDisconnect(self, c: TcpContext, nbl: NetBufferList, flags: int) -> None:
        c.lifecycle.fire(Call.IO)
        refusal = self._refusal(c) or self.take_failure("MiniportTcpOffloadDisconnect")
        if refusal is not None:
            self._complete_now(nbl, refusal, self.ndis.NdisTcpOffloadDisconnectComplete)
            return
        if flags & TcpDisconnectFlags.TCP_DISCONNECT_ABORTIVE_CLOSE:
            c.aborted = True
            c.wire.abort()  # RST: the only RST a target may originate
            self._fail_sends(c, ABORTED)
            self._stop_push(c)
            nbl.status = SUCCESS
            nbl.tcp_offload_bytes_transferred = 0
            self.ndis.NdisTcpOffloadDisconnectComplete(self, nbl)
            return
        data = nbl.views()
        start = c.wire.bytes_written
        if data:
            c.wire.write(data)
        c.wire.write_eof()
        c.fin_sent = True
        c.disconnect_nbl = nbl
        c.disconnect_end = c.wire.bytes_written
        nbl.miniport_reserved = start
        self._watch(c)

    def _complete_disconnect(self, c: TcpContext, status: NdisStatus) -> None:
        nbl = c.disconnect_nbl
        assert nbl is not None
        c.disconnect_nbl = None
        start = nbl.miniport_reserved
        acked = (
            c.disconnect_end
            if status is SUCCESS
            else max(0, min(c.wire.acked() if not c.wire.closed else 0, c.disconnect_end) - start)
        )
        k = c.disconnect_end - start if status is SUCCESS else acked
        nbl.status = status
        nbl.tcp_offload_bytes_transferred = k
        nbl.miniport_reserved = None
        if k:
            nbl.advance(k)
        self.ndis.NdisTcpOffloadDisconnectComplete(self, nbl)

    # ============================================================================================
    # receive: segments, posted requests, indications (spec §4.2-§4.4)
    # ============================================================================================
    def WireData(self, c: TcpContext, offset: int, data: bytes) -> None:
        if c.terminating or c.id not in self.table:
            self.ndis.NdisMIndicateReceiveNetBufferLists(self, c.wire, offset, data, 0)
            return
        self.stats.bytes_received += len(data)
        self._segment(c, offset, memoryview(data), TH_PSH)  # each socket read counts as pushed

    def WireEof(self, c: TcpContext, offset: int) -> None:
        if c.terminating or c.id not in self.table:
            self.ndis.NdisMIndicateReceiveNetBufferLists(self, c.wire, offset, b"", TH_FIN)
            return
        self._segment(c, offset, memoryview(b""), TH_FIN)

    def WireReset(self, c: TcpContext, reason: str) -> None:
        if c.terminating or c.id not in self.table:
            self.ndis.NdisMIndicateReceiveNetBufferLists(
                self, c.wire, c.wire.bytes_read, b"", TH_RST
            )
            return
        self._peer_reset(c)

    def _peer_reset(self, c: TcpContext) -> None:
        """An acceptable RST (spec §5.1): abort every outstanding I/O, keep resources."""
        if c.aborted:
            return
        c.aborted = True
        self._stop_push(c)
        self._event(c, TcpOffloadEventType.TcpIndicateAbort, 0)
        self._fail_sends(c, ABORTED)
        self._fail_receives(c, ABORTED)
        if c.disconnect_nbl is not None:
            self._complete_disconnect(c, ABORTED)

    @downcall
    def MiniportTcpOffloadForward(self, c: TcpContext, head: NetBufferList) -> None:
        c.lifecycle.fire(Call.IO)
        refusal = self._refusal(c)
        if refusal is not None:
            self._complete_now(head, refusal, self.ndis.NdisTcpOffloadForwardComplete)
            return
        for nbl in iter_chain(head):
            raw = b"".join(nbl.views())
            sequence, flags, payload = parse_segment(raw)
            offset = offset_of(c.wire.irs, sequence, c.rcv_nxt)
            nbl.status = SUCCESS
            nbl.tcp_offload_bytes_transferred = nbl.data_length
            nbl.advance(nbl.data_length)
            if flags & TH_RST:
                self._peer_reset(c)
                continue
            self._segment(c, offset, payload, flags)
        self.ndis.NdisTcpOffloadForwardComplete(self, head)

    def _segment(self, c: TcpContext, offset: int, data: memoryview, flags: int) -> None:
        """An arriving segment: in order → delivery algorithm; ahead → held until the gap fills."""
        if c.aborted:
            return  # nothing further is processed or acknowledged (spec §4.5)
        end = offset + len(data)
        if flags & TH_FIN:
            c.fin_offset = end
        if data:
            if end <= c.rcv_nxt:
                pass  # all already received (a duplicate)
            elif offset > c.rcv_nxt:
                c.ooo[offset] = (data, flags)
            else:
                self._accept(c, data[c.rcv_nxt - offset :], flags)
                while c.ooo:
                    ready = [o for o in c.ooo if o <= c.rcv_nxt]
                    if not ready:
                        break
                    for o in sorted(ready):
                        view, fl = c.ooo.pop(o)
                        if o + len(view) > c.rcv_nxt:
                            self._accept(c, view[c.rcv_nxt - o :], fl)
        self._pump(c)

    def _accept(self, c: TcpContext, data: memoryview, flags: int) -> None:
        c.buffered.append(data)
        c.buffered_bytes += len(data)
        c.rcv_nxt += len(data)
        c.buffered_psh = bool(flags & TH_PSH)

    @downcall
    def MiniportTcpOffloadReceive(self, c: TcpContext, head: NetBufferList) -> None:
        c.lifecycle.fire(Call.IO)
        refusal = self._refusal(c) or self.take_failure("MiniportTcpOffloadReceive")
        if refusal is None and c.disconnect_indicated:
            refusal = S.NDIS_STATUS_INVALID_STATE  # posted after the FIN was indicated (spec §4.2)
        if refusal is not None:
            self._complete_now(head, refusal, self.ndis.NdisTcpOffloadReceiveComplete)
            return
        for nbl in iter_chain(head):
            nbl.miniport_reserved = 0  # bytes placed so far
            c.posted.append(nbl)
            if not nbl.tcp_receive_no_push and nbl.tcp_receive_bytes_transferred:
                self._start_push(c)  # the host already placed data (spec §4.2)
        c.refused = False  # any post re-enables indications (spec §4.3)
        self._pump(c)

    def _pump(self, c: TcpContext) -> None:
        """The delivery algorithm of spec §4.4, run whenever data, posts or a return arrive."""
        if c.busy or not c.initiated or c.aborted or c.terminating:
            return
        if c.posted:
            self._fill(c)
        if c.buffered_bytes and not c.posted and not c.refused:
            self._indicate(c)
        if not c.busy:
            self._check_fin(c)
        self._flow(c)

    def _fill(self, c: TcpContext) -> None:
        """FILL ("A"): buffered data into posted requests, FIFO; complete the full ones."""
        done: list[NetBufferList] = []
        posted = c.posted
        while posted:
            req = posted[0]
            nb = req.first_net_buffer
            assert nb is not None
            cap = nb.data_length
            filled: int = req.miniport_reserved
            while filled < cap and c.buffered:
                view = c.buffered[0]
                n = nb.copy_in(filled, view)
                filled += n
                c.buffered_bytes -= n
                if n == len(view):
                    c.buffered.pop(0)
                else:
                    c.buffered[0] = view[n:]
            req.miniport_reserved = filled
            if filled == cap:
                posted.pop(0)
                done.append(self._finish_receive(req, SUCCESS))
                continue
            if filled and not req.tcp_receive_no_push:
                if c.buffered_psh:
                    posted.pop(0)  # a pushed segment completes a push-mode request
                    done.append(self._finish_receive(req, SUCCESS))
                    continue
                if c.push_timer is None:
                    self._start_push(c)
            break
        if done:
            self._stop_push(c)
            if posted and posted[0].miniport_reserved and not posted[0].tcp_receive_no_push:
                self._start_push(c)
            self.ndis.NdisTcpOffloadReceiveComplete(self, link_chain(done))  # type: ignore[arg-type]

    def _finish_receive(self, req: NetBufferList, status: NdisStatus) -> NetBufferList:
        placed: int = req.miniport_reserved or 0
        req.miniport_reserved = None
        req.status = status
        req.tcp_offload_bytes_transferred = placed
        if placed:
            req.advance(placed)
        return req

    def _fail_receives(self, c: TcpContext, status: NdisStatus) -> None:
        if c.posted:
            done = [self._finish_receive(r, status) for r in c.posted]
            c.posted.clear()
            self.ndis.NdisTcpOffloadReceiveComplete(self, link_chain(done))  # type: ignore[arg-type]

    def _indicate(self, c: TcpContext) -> None:
        """INDICATE ("B"): one stand-alone NBL over the buffered bytes, no copy (spec §4.3)."""
        limit = c.cached.RcvIndicationSize or MAX_INDICATION
        views: list[memoryview] = []
        total = 0
        for view in c.buffered:
            if total + len(view) > limit:
                view = view[: limit - total]
            views.append(view)
            total += len(view)
            if total >= limit:
                break
        nbl = NetBufferList.for_views(views)
        nbl.trace = c.trace
        nbl.miniport_reserved = c
        c.busy = True
        self.indicated[nbl.id] = nbl
        self.stats.outstanding_nbls += 1
        self.ndis.NdisTcpOffloadReceiveHandler(self, c.upper, nbl)

    def ReceiveIndicateReturned(
        self, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None:
        c: TcpContext = nbl.miniport_reserved
        c.busy = False
        if not c.aborted:
            self._consume(c, bytes_consumed)
        if status != SUCCESS:
            c.refused = True  # no re-indication until the host posts (spec §4.3)
            del self.indicated[nbl.id]
            self.stats.outstanding_nbls -= 1
            nbl.miniport_reserved = None
        if self.deferred_terminates:
            self._finish_terminates()
        self._pump(c)

    def _consume(self, c: TcpContext, n: int) -> None:
        c.buffered_bytes -= n
        while n:
            view = c.buffered[0]
            if n >= len(view):
                n -= len(view)
                c.buffered.pop(0)
            else:
                c.buffered[0] = view[n:]
                n = 0

    @downcall
    def MiniportTcpOffloadReceiveReturn(self, head: NetBufferList) -> None:
        for nbl in iter_chain(head):
            if self.indicated.pop(nbl.id, None) is None:
                raise ChimneyProtocolError(
                    f"{self.name}: NBL {nbl.id} returned twice or never indicated (spec §6.3)"
                )
            nbl.miniport_reserved = None
            self.stats.outstanding_nbls -= 1

    def _check_fin(self, c: TcpContext) -> None:
        """Peer FIN → `TcpIndicateDisconnect` once every earlier byte was consumed (spec §5.1)."""
        if (
            c.fin_offset is None
            or c.disconnect_indicated
            or c.rcv_nxt < c.fin_offset
            or c.buffered_bytes
        ):
            return
        c.disconnect_indicated = True
        c.lifecycle.fin_received = True
        if c.posted:
            # partly filled requests hold the last bytes; empty ones can never be filled [INF]
            done = []
            while c.posted:
                req = c.posted.pop(0)
                done.append(
                    self._finish_receive(
                        req, SUCCESS if req.miniport_reserved else S.NDIS_STATUS_INVALID_STATE
                    )
                )
            self.ndis.NdisTcpOffloadReceiveComplete(self, link_chain(done))  # type: ignore[arg-type]
        self._stop_push(c)
        self._event(c, TcpOffloadEventType.TcpIndicateDisconnect, 0)

    def _flow(self, c: TcpContext) -> None:
        """Back-pressure: stop reading the socket when held data reaches its bound (design)."""
        held = c.buffered_bytes
        if not c.paused and held >= self.rx_buffer_bytes:
            c.paused = True
            c.wire.pause_reading()
        elif c.paused and held < self.rx_buffer_bytes // 2:
            c.paused = False
            c.wire.resume_reading()

    # push timer (spec §4.2) ------------------------------------------------------------------------
    def _start_push(self, c: TcpContext) -> None:
        self._stop_push(c)
        c.push_timer = self.timers.call_later(self.push_ticks, self._push_expired, c)

    def _stop_push(self, c: TcpContext) -> None:
        if c.push_timer is not None:
            c.push_timer.cancel()
            c.push_timer = None

    def _push_expired(self, c: TcpContext) -> None:
        c.push_timer = None
        if c.busy or c.terminating or c.aborted or not c.posted:
            return  # a race can fire the timer with nothing to complete (spec §4.4)
        req = c.posted[0]
        if req.miniport_reserved and not req.tcp_receive_no_push:
            c.posted.pop(0)
            self.ndis.NdisTcpOffloadReceiveComplete(self, self._finish_receive(req, SUCCESS))

    # ============================================================================================
    # observability
    # ============================================================================================
    def context_of_wire(self, wire: WirePort) -> TcpContext | None:
        for ctx in self.table:
            if isinstance(ctx, TcpContext) and ctx.wire is wire:
                return ctx
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "max_connections": self.max_connections,
            "tcp": self.tcp_count,
            "failed": self.failed,
        }


def lifecycle_of(ctx: Any) -> OffloadState:
    return ctx.lifecycle.state  # type: ignore[no-any-return]


__all__ = ["Binding", "OffloadTarget", "TcpContext", "lifecycle_of"]
