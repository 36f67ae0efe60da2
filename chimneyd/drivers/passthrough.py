"""Pass-through IM driver: a miniport edge above, a protocol edge below, relaying everything.

Spec §1.5, §1.6, §3.8, §4.8, §5.6. For each offloaded object the IM keeps an *IM offload entry*
holding the overlying driver's handle (`upper`) and the IM's own `NDIS_OFFLOAD_HANDLE` (`handle`)
used towards the lower driver. For each in-flight state operation it keeps an *IM call entry*
holding the mirrored tree it sent down (spec §1.6 [EMU]: a mirror rather than an overlay).
Completions go up only after the lower completion arrives (spec §3.8 [INF]).
"""

from __future__ import annotations

from typing import Any

from chimneyd.ndis.blocks import BlockRole, OffloadBlock, walk
from chimneyd.ndis.broker import Binding, Ndis
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.handles import NdisOffloadHandle, next_object_id
from chimneyd.ndis.lifecycle import Call, OffloadLifecycle, OffloadState
from chimneyd.ndis.nbl import NetBufferList, iter_chain
from chimneyd.ndis.status import OFFLOADED_STATUSES, NdisStatus, TcpOffloadEventType

from .base import DriverLayer, Timers, downcall

_STATE_CALL = {
    "Terminate": Call.TERMINATE,
    "Update": Call.UPDATE,
    "Invalidate": Call.INVALIDATE,
    "Query": Call.QUERY,
}


class ImOffloadEntry:
    """The IM's per-object context: the upper handle and the IM's own handle (spec §1.2)."""

    __slots__ = ("handle", "id", "lifecycle", "lower", "upper")

    def __init__(self, layer: str, upper: NdisOffloadHandle, lower: Binding) -> None:
        self.id = next_object_id()
        self.upper = upper
        self.lower = lower
        self.handle = NdisOffloadHandle(layer, self, upper.trace)
        self.lifecycle = OffloadLifecycle(self)

    def __str__(self) -> str:
        return f"{self.handle.layer} IM offload entry {self.id}"


class ImCallEntry:
    """One in-flight state operation: the upper root, the mirror and the new entries."""

    __slots__ = ("new_entries", "op", "pairs", "saved_im_reserved", "upper_root")

    def __init__(self, op: str, upper_root: OffloadBlock) -> None:
        self.op = op
        self.upper_root = upper_root
        self.saved_im_reserved: Any = upper_root.im_reserved
        self.pairs: list[tuple[OffloadBlock, OffloadBlock]] = []
        self.new_entries: dict[int, ImOffloadEntry] = {}  # id(upper block) -> entry


class PassthroughIm(DriverLayer):
    kind = "passthrough"
    has_miniport_edge = True
    has_protocol_edge = True

    def __init__(self, name: str, ndis: Ndis, timers: Timers, capacity: int = 1 << 20) -> None:
        super().__init__(name, ndis, timers, capacity)
        self.call_entries: set[ImCallEntry] = set()

    def lower_binding(self, upper_root: OffloadBlock) -> Binding:
        """The binding a new tree goes down (one for a pass-through IM)."""
        return self.lower_bindings[0]

    # -- state operations down (spec §1.6: IM going down) ----------------------------------------
    def _mirror(
        self, op: str, upper_root: OffloadBlock
    ) -> tuple[ImCallEntry, OffloadBlock, Binding]:
        call = ImCallEntry(op, upper_root)
        binding: Binding | None = None
        mirror: dict[int, OffloadBlock] = {}
        lower_root: OffloadBlock | None = None
        for up in walk(upper_root):
            entry: ImOffloadEntry | None = None
            role = up.role()
            if role is BlockRole.NEW_OFFLOAD and op == "Initiate":
                upper_handle = up.ndis_offload_handle
                assert upper_handle is not None
                binding = binding or self.lower_binding(upper_root)
                entry = ImOffloadEntry(self.name, upper_handle, binding)
                entry.lifecycle.fire(Call.INITIATE)
                call.new_entries[id(up)] = entry
            elif role is not BlockRole.PLACEHOLDER:
                assert up.miniport_offload_context is not None
                entry = up.miniport_offload_context.miniport_offload_context
                if not isinstance(entry, ImOffloadEntry) or entry.id not in self.table:
                    raise ChimneyProtocolError(
                        f"{self.name}: block references no live IM offload entry"
                    )
                if op in _STATE_CALL:
                    entry.lifecycle.fire(_STATE_CALL[op])
                binding = binding or entry.lower
            low = OffloadBlock(
                up.header_type, entry.handle if entry else None, up.const, up.cached, up.delegated
            )
            low.net_buffer_list_chain = (
                up.net_buffer_list_chain
            )  # same NBLs travel down (spec §3.2.5)
            low.port_number = up.port_number
            mirror[id(up)] = low
            call.pairs.append((up, low))
            if lower_root is None:
                lower_root = low
        # link the mirror like the original
        for up, low in call.pairs:
            if up.next_block is not None:
                low.next_block = mirror[id(up.next_block)]
            if up.dependent_block_list is not None:
                low.dependent_block_list = mirror[id(up.dependent_block_list)]
        assert lower_root is not None
        upper_root.im_reserved = call  # the call entry is found again through ImReserved
        lower_root.im_reserved = call
        self.call_entries.add(call)
        return call, lower_root, binding or self.lower_bindings[0]

    @downcall
    def MiniportInitiateOffload(self, root: OffloadBlock) -> None:
        _, low, binding = self._mirror("Initiate", root)
        self.ndis.NdisInitiateOffload(self, binding, low)

    @downcall
    def MiniportTerminateOffload(self, root: OffloadBlock) -> None:
        _, low, binding = self._mirror("Terminate", root)
        self.ndis.NdisTerminateOffload(self, binding, low)

    @downcall
    def MiniportUpdateOffload(self, root: OffloadBlock) -> None:
        _, low, binding = self._mirror("Update", root)
        self.ndis.NdisUpdateOffload(self, binding, low)

    @downcall
    def MiniportInvalidateOffload(self, root: OffloadBlock) -> None:
        _, low, binding = self._mirror("Invalidate", root)
        self.ndis.NdisInvalidateOffload(self, binding, low)

    @downcall
    def MiniportQueryOffload(self, root: OffloadBlock) -> None:
        _, low, binding = self._mirror("Query", root)
        self.ndis.NdisQueryOffloadState(self, binding, low)

    # -- state completions up (spec §1.6: IM going up) -------------------------------------------
    def _unmirror(self, lower_root: OffloadBlock) -> ImCallEntry:
        call = lower_root.im_reserved
        if not isinstance(call, ImCallEntry) or call not in self.call_entries:
            raise ChimneyProtocolError(f"{self.name}: completion for an unknown IM call entry")
        self.call_entries.discard(call)
        for up, low in call.pairs:
            up.status = low.status
            if call.op == "Terminate":
                up.net_buffer_list_chain = low.net_buffer_list_chain
        call.upper_root.im_reserved = call.saved_im_reserved
        return call

    def ProtocolInitiateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        call = self._unmirror(lower_root)
        for up, _ in call.pairs:
            entry = call.new_entries.get(id(up))
            if entry is None:
                continue
            if up.status in OFFLOADED_STATUSES:
                entry.lifecycle.fire(Call.INITIATE_OFFLOADED)
                self.table_add(entry.id, entry)
                self.stats.offloads_active += 1
                # write the IM entry into the slot the upper layer gave (spec §1.5 item 5)
                assert up.miniport_offload_context is not None
                up.miniport_offload_context.miniport_offload_context = entry
            else:
                entry.lifecycle.fire(Call.INITIATE_FAILED)
        self.ndis.NdisMInitiateOffloadComplete(self, call.upper_root)

    def ProtocolTerminateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        call = self._unmirror(lower_root)
        for up, _ in call.pairs:
            if up.role() is BlockRole.PLACEHOLDER:
                continue
            assert up.miniport_offload_context is not None
            entry: ImOffloadEntry = up.miniport_offload_context.miniport_offload_context
            if up.status != NdisStatus.NDIS_STATUS_SUCCESS:
                entry.lifecycle.fire(Call.TERMINATE_FAILED)  # the object lives on (spec §3.7)
                continue
            entry.lifecycle.fire(Call.TERMINATE_COMPLETE)
            self.table_remove(entry.id)
            self.stats.offloads_active -= 1
        self.ndis.NdisMTerminateOffloadComplete(self, call.upper_root)

    def ProtocolUpdateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        self.ndis.NdisMUpdateOffloadComplete(self, self._unmirror(lower_root).upper_root)

    def ProtocolInvalidateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        self.ndis.NdisMInvalidateOffloadComplete(self, self._unmirror(lower_root).upper_root)

    def ProtocolQueryOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        self.ndis.NdisMQueryOffloadStateComplete(self, self._unmirror(lower_root).upper_root)

    # -- I/O down (spec §4.8) ----------------------------------------------------------------------
    def _entry_for_io(self, entry: ImOffloadEntry, call: str) -> ImOffloadEntry:
        entry.lifecycle.fire(Call.IO)
        return entry

    def _fail_send(self, head: NetBufferList, status: NdisStatus) -> None:
        """IM cannot relay a send: REQUEST_UPLOAD on the first NBL, UPLOAD_REQUESTED on the rest,
        completed upward without going down (spec §4.1)."""
        first = True
        for nbl in iter_chain(head):
            nbl.status = status if first else NdisStatus.NDIS_STATUS_UPLOAD_REQUESTED
            nbl.tcp_offload_bytes_transferred = 0
            first = False
        self.ndis.NdisTcpOffloadSendComplete(self, head)

    @downcall
    def MiniportTcpOffloadSend(self, entry: ImOffloadEntry, head: NetBufferList) -> None:
        self._entry_for_io(entry, "send")
        failure = self.take_failure("MiniportTcpOffloadSend")
        if failure is not None:
            if failure == NdisStatus.NDIS_STATUS_UPLOAD_IN_PROGRESS:
                failure = NdisStatus.NDIS_STATUS_REQUEST_UPLOAD
            self._fail_send(head, failure)
            return
        self.ndis.NdisOffloadTcpSend(self, entry.handle, head)

    @downcall
    def MiniportTcpOffloadReceive(self, entry: ImOffloadEntry, head: NetBufferList) -> None:
        self._entry_for_io(entry, "receive")
        self.ndis.NdisOffloadTcpReceive(self, entry.handle, head)

    @downcall
    def MiniportTcpOffloadDisconnect(
        self, entry: ImOffloadEntry, nbl: NetBufferList, flags: int
    ) -> None:
        self._entry_for_io(entry, "disconnect")
        self.ndis.NdisOffloadTcpDisconnect(self, entry.handle, nbl, flags)

    @downcall
    def MiniportTcpOffloadForward(self, entry: ImOffloadEntry, head: NetBufferList) -> None:
        self._entry_for_io(entry, "forward")
        self.ndis.NdisOffloadTcpForward(self, entry.handle, head)

    @downcall
    def MiniportTcpOffloadReceiveReturn(self, head: NetBufferList) -> None:
        self.ndis.NdisOffloadTcpReceiveReturn(self, self.lower_bindings[0], head)

    # -- completions up (spec §4.8) ----------------------------------------------------------------
    def ProtocolTcpOffloadSendComplete(self, binding: Binding, head: NetBufferList) -> None:
        self.ndis.NdisTcpOffloadSendComplete(self, head)

    def ProtocolTcpOffloadReceiveComplete(self, binding: Binding, head: NetBufferList) -> None:
        self.ndis.NdisTcpOffloadReceiveComplete(self, head)

    def ProtocolTcpOffloadDisconnectComplete(self, binding: Binding, nbl: NetBufferList) -> None:
        self.ndis.NdisTcpOffloadDisconnectComplete(self, nbl)

    def ProtocolTcpOffloadForwardComplete(self, binding: Binding, head: NetBufferList) -> None:
        self.ndis.NdisTcpOffloadForwardComplete(self, head)

    # -- indications up (spec §5.6) ----------------------------------------------------------------
    def ProtocolTcpOffloadEvent(
        self, handle: NdisOffloadHandle, event_type: TcpOffloadEventType, info: int
    ) -> None:
        entry: ImOffloadEntry = handle.owner  # container-of (spec §1.5 item 7)
        if entry.lifecycle.state is not OffloadState.TERMINATING:
            if event_type is TcpOffloadEventType.TcpIndicateRetrieve:
                entry.lifecycle.fire(Call.RETRIEVE)
            else:
                entry.lifecycle.fire(Call.INDICATE)
        self.ndis.NdisTcpOffloadEventHandler(self, entry.upper, event_type, info)

    def ProtocolTcpOffloadReceiveIndicate(
        self, handle: NdisOffloadHandle, nbl: NetBufferList, status: NdisStatus
    ) -> None:
        entry: ImOffloadEntry = handle.owner
        self.ndis.NdisTcpOffloadReceiveHandler(self, entry.upper, nbl, status)

    def ReceiveIndicateReturned(
        self, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None:
        # the lower indication's return value goes down unchanged (spec §4.8 [INF])
        self.ndis.NdisReturnReceiveIndication(self, nbl, status, bytes_consumed)

    def ProtocolReceiveNetBufferLists(
        self, binding: Binding, wire: Any, offset: int, data: bytes, flags: int
    ) -> None:
        self.ndis.NdisMIndicateReceiveNetBufferLists(self, wire, offset, data, flags)

    def ProtocolStatusEx(self, binding: Binding, status: NdisStatus) -> None:
        self.ndis.NdisMIndicateStatusEx(self, status)
