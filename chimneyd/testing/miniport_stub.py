"""A miniport edge that plays a lower driver or target: every completion and indication
happens when the test says, and its `stats` gauges are kept as a real layer must."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chimneyd.ndis.blocks import BlockKind, BlockRole, OffloadBlock, TcpOffloadStateDelegated, walk
from chimneyd.ndis.broker import Layer, Ndis
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.handles import NdisOffloadHandle, next_object_id
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.oid import NdisOidRequest, NdisTcpConnectionOffload
from chimneyd.ndis.status import (
    OFFLOADED_STATUSES,
    IndicateOffloadEvent,
    NdisStatus,
    TcpOffloadEventType,
)

from .records import STATE_REQUEST, SUCCESS, S


class StubContext:
    """The miniport stub's context for one offloaded object (what it writes into the slot)."""

    __slots__ = ("id", "kind", "live", "upper")

    def __init__(self, upper: NdisOffloadHandle, kind: BlockKind) -> None:
        self.id = next_object_id()
        self.upper = upper  # the overlying driver's handle, for indications
        self.kind = kind
        self.live = True

    def __repr__(self) -> str:
        return f"<StubContext {self.id} {self.kind.value}{'' if self.live else ' dead'}>"


@dataclass(slots=True)
class StateRequest:
    op: str
    root: OffloadBlock
    done: bool = False

    @property
    def blocks(self) -> list[OffloadBlock]:
        return list(walk(self.root))


@dataclass(slots=True)
class IoRequest:
    kind: str
    context: StubContext
    nbls: list[NetBufferList]
    flags: int | None = None


Statuses = Mapping[int, NdisStatus] | Sequence[NdisStatus] | None


class MiniportStub(Layer):
    """A miniport edge whose every completion and indication the test triggers.

    State operations wait in `state_requests` until `complete_state` (or complete at once with
    `auto_state`); I/O waits in `pending` until `complete` (or completes at once with the
    status `auto_io`, the whole NBL transferred on SUCCESS — enough to drive a host over it). Contexts it writes into slots are
    `StubContext`s. Indications: `indicate_event`, `indicate_receive`, `indicate_status`.
    """

    kind = "miniport-stub"
    has_miniport_edge = True

    def __init__(
        self,
        name: str,
        ndis: Ndis,
        auto_state: bool = False,
        auto_io: NdisStatus | None = None,
    ) -> None:
        super().__init__(name, ndis)
        self.auto_state = auto_state
        self.auto_io = auto_io
        self.calls: list[tuple[str, tuple[Any, ...]]] = []  # every Miniport* call, in order
        self.state_requests: list[StateRequest] = []
        self.io: list[IoRequest] = []
        self.receive_returns: list[NetBufferList] = []
        self.indication_returns: list[tuple[NetBufferList, NdisStatus, int]] = []
        self.contexts: dict[int, StubContext] = {}  # live contexts by id
        self._pending: dict[int, tuple[str, StubContext, NetBufferList]] = {}  # NBL id -> ...
        self._indicated: dict[int, NetBufferList] = {}  # NBLs the upper layer may still hold
        self.capabilities = NdisTcpConnectionOffload(TcpConnectionOffloadCapacity=1 << 20)
        self.offload_event_returns: list[OffloadBlock] = []

    # -- state operations --------------------------------------------------------------------------
    def _state(self, op: str, root: OffloadBlock) -> None:
        self.calls.append((STATE_REQUEST[op], (root,)))
        request = StateRequest(op, root)
        self.state_requests.append(request)
        if self.auto_state:
            self.complete_state(request)

    def MiniportInitiateOffload(self, root: OffloadBlock) -> None:
        self._state("Initiate", root)

    def MiniportTerminateOffload(self, root: OffloadBlock) -> None:
        self._state("Terminate", root)

    def MiniportUpdateOffload(self, root: OffloadBlock) -> None:
        self._state("Update", root)

    def MiniportInvalidateOffload(self, root: OffloadBlock) -> None:
        self._state("Invalidate", root)

    def MiniportQueryOffload(self, root: OffloadBlock) -> None:
        self._state("Query", root)

    def pending_state(self, op: str | None = None) -> list[StateRequest]:
        return [r for r in self.state_requests if not r.done and (op is None or r.op == op)]

    def context_of(self, block: OffloadBlock) -> StubContext | None:
        """This stub's context behind a block it was given (None for a placeholder)."""
        cell = block.miniport_offload_context
        ctx = cell.miniport_offload_context if cell is not None else None
        return ctx if isinstance(ctx, StubContext) else None

    def complete_state(
        self,
        request: StateRequest | None = None,
        statuses: Statuses = None,
        fill: Callable[[OffloadBlock, StubContext], None] | None = None,
        return_sends: bool = True,
    ) -> StateRequest:
        """Write every block's Status and complete the operation (spec §3.1).

        `statuses`: per block, by walk index (a sequence for every block, or a mapping for some);
        the rest get SUCCESS. Initiate writes a new context into the slot of each new-offload
        block whose status says offloaded, and only those (spec §3.2.3). A successful terminate
        first completes the object's outstanding non-send I/O with UPLOAD_IN_PROGRESS, returns
        its sends in `NetBufferListChain` (`return_sends`) in posting order, and frees the
        context (spec §3.6.3). `fill(block, ctx)` may write trailing state (query, terminate).
        """
        if request is None:
            pending = self.pending_state()
            if not pending:
                raise ChimneyProtocolError(f"{self.name}: no state operation to complete")
            request = pending[0]
        if request.done:
            raise ChimneyProtocolError(f"{self.name}: {request.op} already completed")
        blocks = request.blocks
        if statuses is None:
            chosen: dict[int, NdisStatus] = {}
        elif isinstance(statuses, Mapping):
            chosen = dict(statuses)
        else:
            chosen = dict(enumerate(statuses))
        for i, block in enumerate(blocks):
            status = chosen.get(i, SUCCESS)
            block.status = status
            if request.op == "Initiate":
                self._initiate_block(block, status)
                continue
            ctx = self.context_of(block)
            if ctx is None:
                continue
            if fill is not None:
                fill(block, ctx)
            if request.op == "Terminate" and status == SUCCESS:
                self._terminate_context(block, ctx, return_sends)
        request.done = True
        complete = getattr(self.ndis, _STATE_COMPLETE[request.op])
        complete(self, request.root)
        return request

    def _initiate_block(self, block: OffloadBlock, status: NdisStatus) -> None:
        if block.role() is not BlockRole.NEW_OFFLOAD or status not in OFFLOADED_STATUSES:
            return
        upper = block.ndis_offload_handle
        cell = block.miniport_offload_context
        assert upper is not None and cell is not None
        ctx = StubContext(upper, block.kind)
        self.contexts[ctx.id] = ctx
        self.stats.handles = len(self.contexts)
        self.stats.offloads_active += 1
        cell.miniport_offload_context = ctx  # the slot, written only on success
        # outstanding send data handed over at initiate is ours now (spec §3.2.5)
        for nbl in iter_chain(block.net_buffer_list_chain):
            self._pending[nbl.id] = ("send", ctx, nbl)

    def _terminate_context(self, block: OffloadBlock, ctx: StubContext, return_sends: bool) -> None:
        mine = [(k, n) for k, c, n in self._pending.values() if c is ctx]
        others = [n for k, n in mine if k != "send"]
        if others:
            self.complete(*others, status=S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
        sends = [n for k, n in mine if k == "send"]
        if sends and return_sends:
            for nbl in sends:
                del self._pending[nbl.id]
            block.net_buffer_list_chain = link_chain(sends)
            if isinstance(block.delegated, TcpOffloadStateDelegated):
                block.delegated.SendDataHead = sends[0]
                block.delegated.SendDataTail = sends[-1]
        elif sends:
            self.complete(*sends, status=S.NDIS_STATUS_UPLOAD_IN_PROGRESS)
        ctx.live = False
        del self.contexts[ctx.id]
        self.stats.handles = len(self.contexts)
        self.stats.offloads_active -= 1

    def hand_back_buffered(self, block: OffloadBlock, data: bytes) -> NetBufferList:
        """At terminate: return received, undelivered bytes in the TCP block's `BufferedData`;
        the upper layer gives the NBL back by receive-return (spec §3.6.3)."""
        if not isinstance(block.delegated, TcpOffloadStateDelegated):
            raise ValueError("the block has no delegated TCP state to fill")
        nbl = NetBufferList.for_data(data)
        upper = block.ndis_offload_handle
        nbl.trace = upper.trace if upper is not None else None
        self._indicated[nbl.id] = nbl
        self.stats.outstanding_nbls += 1
        block.delegated.BufferedData = nbl
        return nbl

    # -- I/O down ----------------------------------------------------------------------------------
    def _io(self, kind: str, ctx: Any, head: NetBufferList, flags: int | None = None) -> None:
        handler = "MiniportTcpOffload" + kind.capitalize()
        self.calls.append((handler, (ctx, head) if flags is None else (ctx, head, flags)))
        if not isinstance(ctx, StubContext) or not ctx.live:
            raise ChimneyProtocolError(f"{self.name}: {handler} on {ctx!r}, not a live context")
        nbls = list(iter_chain(head))
        for nbl in nbls:
            self._pending[nbl.id] = (kind, ctx, nbl)
        self.io.append(IoRequest(kind, ctx, nbls, flags))
        if self.auto_io is not None:
            self.complete(*nbls, status=self.auto_io)

    def MiniportTcpOffloadSend(self, ctx: Any, head: NetBufferList) -> None:
        self._io("send", ctx, head)

    def MiniportTcpOffloadReceive(self, ctx: Any, head: NetBufferList) -> None:
        self._io("receive", ctx, head)

    def MiniportTcpOffloadDisconnect(self, ctx: Any, nbl: NetBufferList, flags: int) -> None:
        self._io("disconnect", ctx, nbl, flags)

    def MiniportTcpOffloadForward(self, ctx: Any, head: NetBufferList) -> None:
        self._io("forward", ctx, head)

    def MiniportTcpOffloadReceiveReturn(self, head: NetBufferList) -> None:
        self.calls.append(("MiniportTcpOffloadReceiveReturn", (head,)))
        for nbl in iter_chain(head):
            if self._indicated.pop(nbl.id, None) is None:
                raise ChimneyProtocolError(
                    f"{self.name}: NBL {nbl.id} returned twice or never indicated (spec §6.3)"
                )
            self.receive_returns.append(nbl)
            self.stats.outstanding_nbls -= 1

    def pending(
        self, kind: str | None = None, ctx: StubContext | None = None
    ) -> list[NetBufferList]:
        """NBLs given to this stub and not completed yet, in posting order."""
        return [
            n
            for k, c, n in self._pending.values()
            if (kind is None or k == kind) and (ctx is None or c is ctx)
        ]

    def complete(
        self,
        *nbls: NetBufferList,
        status: NdisStatus = SUCCESS,
        transferred: int | None = None,
    ) -> None:
        """Complete `nbls` (each of which this stub holds) in one completion call per run of one
        kind: `status` and `TcpOffloadBytesTransferred` written, the NB advanced by the bytes
        transferred (spec §4.0). `transferred` defaults to the whole NBL for SUCCESS, else 0."""
        groups: list[tuple[str, list[NetBufferList]]] = []
        for nbl in nbls:
            entry = self._pending.pop(nbl.id, None)
            if entry is None:
                raise ChimneyProtocolError(
                    f"{self.name}: NBL {nbl.id} was never given to this layer, or was already "
                    f"completed"
                )
            kind = entry[0]
            n = (
                (nbl.data_length if status == SUCCESS else 0)
                if transferred is None
                else transferred
            )
            nbl.status = status
            nbl.tcp_offload_bytes_transferred = n
            if n:
                nbl.advance(n)
            if groups and groups[-1][0] == kind:
                groups[-1][1].append(nbl)
            else:
                groups.append((kind, [nbl]))
        for kind, group in groups:
            head = link_chain(group)
            assert head is not None
            getattr(self.ndis, _IO_COMPLETE[kind])(self, head)

    # -- indications up ----------------------------------------------------------------------------
    def indicate_event(
        self, ctx: StubContext, event_type: TcpOffloadEventType, info: int = 0
    ) -> None:
        self.ndis.NdisTcpOffloadEventHandler(self, ctx.upper, event_type, info)

    def indicate_receive(self, ctx: StubContext, data: bytes) -> NetBufferList:
        """One stand-alone NBL over `data` (spec §4.3); the return comes to
        `ReceiveIndicateReturned` and is kept in `indication_returns`."""
        nbl = NetBufferList.for_data(data)
        nbl.trace = ctx.upper.trace
        self._indicated[nbl.id] = nbl
        self.stats.outstanding_nbls += 1
        self.ndis.NdisTcpOffloadReceiveHandler(self, ctx.upper, nbl)
        return nbl

    def ReceiveIndicateReturned(
        self, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None:
        self.indication_returns.append((nbl, status, bytes_consumed))
        if status != SUCCESS and self._indicated.pop(nbl.id, None) is not None:
            self.stats.outstanding_nbls -= 1  # refused: ours again at once

    def indicate_status(self, status: NdisStatus) -> None:
        self.ndis.NdisMIndicateStatusEx(self, status)

    def MiniportOidRequest(self, request: NdisOidRequest) -> None:
        """Answers every capability query with `capabilities` and accepts every set."""
        self.calls.append(("MiniportOidRequest", (request,)))
        if not request.set:
            request.data = self.capabilities
        request.status = SUCCESS
        self.ndis.NdisMOidRequestComplete(self, request)

    def indicate_offload_event(
        self, ctx: StubContext, code: IndicateOffloadEvent, block: OffloadBlock
    ) -> None:
        """`NdisMOffloadEventIndicate` of a neighbor block naming `ctx`'s upper handle."""
        block.ndis_offload_handle = ctx.upper
        self.ndis.NdisMOffloadEventIndicate(self, block, code, ctx.upper.trace)

    def OffloadEventIndicateReturned(self, block: OffloadBlock) -> None:
        self.offload_event_returns.append(block)

    @property
    def indicated_out(self) -> int:
        """Indicated NBLs the upper layer still holds."""
        return len(self._indicated)


_STATE_COMPLETE = {
    "Initiate": "NdisMInitiateOffloadComplete",
    "Terminate": "NdisMTerminateOffloadComplete",
    "Update": "NdisMUpdateOffloadComplete",
    "Invalidate": "NdisMInvalidateOffloadComplete",
    "Query": "NdisMQueryOffloadStateComplete",
}
_IO_COMPLETE = {
    "send": "NdisTcpOffloadSendComplete",
    "receive": "NdisTcpOffloadReceiveComplete",
    "disconnect": "NdisTcpOffloadDisconnectComplete",
    "forward": "NdisTcpOffloadForwardComplete",
}
