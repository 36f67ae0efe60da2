"""An audit of every call NDIS delivers, taken as it crosses the broker (what a layer owes its
neighbours, seen only through handles, contexts, NBLs and statuses; spec §1.5, §4.0, §9).

It complements `observe.invariants.InvariantChecker` (which sees the calls a layer *makes*) by
checking the calls each layer *receives*:

* a context reaches only the layer that wrote it into a slot, and no context is written into the
  slots of two different bindings (handles and contexts never leak across layers, §9 item 9);
* a layer is given only handles of a binding it is the miniport of, and is indicated only on
  handles it owns (§1.5);
* no indication reaches a layer on a handle before that handle's initiate completion reached
  it, and none after its terminate completion did (§3.2.7, §9 items 5 and 8);
* every NBL given to a layer comes back up from it exactly once, completed or handed back by a
  terminate or a failed initiate, never after its connection's terminate completed, with a
  status legal for its kind and `TcpOffloadBytesTransferred` equal to how far it was advanced
  (§4.0, §9 items 1 and 3).
"""

from __future__ import annotations

from typing import Any

from chimneyd.ndis.blocks import BlockKind, OffloadBlock, walk
from chimneyd.ndis.broker import Binding, Layer
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.nbl import NetBufferList, iter_chain
from chimneyd.ndis.status import OFFLOADED_STATUSES, NdisStatus

from .clock import Delivery
from .records import COMPLETION_KIND, MINIPORT_IO_KIND, STATE_REQUEST

S = NdisStatus

#: Completion statuses each I/O kind may carry (spec §4.1, §4.2, §4.5, §4.6 [INF]). A send
#: may carry more (`legal_io_status`): these are the ones the pages name.
LEGAL_IO_STATUSES: dict[str, frozenset[NdisStatus]] = {
    "send": frozenset(
        {
            S.NDIS_STATUS_SUCCESS,
            S.NDIS_STATUS_UPLOAD_IN_PROGRESS,
            S.NDIS_STATUS_REQUEST_ABORTED,
            S.NDIS_STATUS_REQUEST_UPLOAD,
            S.NDIS_STATUS_UPLOAD_REQUESTED,
        }
    ),
    "receive": frozenset(
        {
            S.NDIS_STATUS_SUCCESS,
            S.NDIS_STATUS_REQUEST_ABORTED,
            S.NDIS_STATUS_UPLOAD_IN_PROGRESS,
            S.NDIS_STATUS_INVALID_STATE,
        }
    ),
    "disconnect": frozenset(
        {S.NDIS_STATUS_SUCCESS, S.NDIS_STATUS_UPLOAD_IN_PROGRESS, S.NDIS_STATUS_REQUEST_ABORTED}
    ),
    "forward": frozenset(
        {S.NDIS_STATUS_SUCCESS, S.NDIS_STATUS_UPLOAD_IN_PROGRESS, S.NDIS_STATUS_REQUEST_ABORTED}
    ),
}

#: The severity bits of an NDIS status (NTSTATUS layout): 0b11 is an error.
_SEVERITY_ERROR = 0xC0000000


def legal_io_status(kind: str, status: int) -> bool:
    """Whether an I/O completion of `kind` may carry `status`. For a send the
    `NdisTcpOffloadSendComplete` page defines SUCCESS (all sent and acknowledged) and lets any
    other status say the data was not all acknowledged, naming REQUEST_ABORTED and
    UPLOAD_IN_PROGRESS only as examples (spec §4.1): any error status is legal there (the
    `fail_next` fault's NDIS_STATUS_FAILURE among them). A status that is no error and not
    SUCCESS (PENDING, an informational code such as an adapter status) does not say the send
    ended, and stays illegal."""
    if status in LEGAL_IO_STATUSES[kind]:
        return True
    return kind == "send" and status & _SEVERITY_ERROR == _SEVERITY_ERROR


_STATE_REQUESTS = frozenset(STATE_REQUEST.values())
_INDICATIONS = frozenset({"ProtocolTcpOffloadEvent", "ProtocolTcpOffloadReceiveIndicate"})


class _Given:
    """An NBL given to a layer: on which handle (of the layer above), and its length then."""

    __slots__ = ("handle", "kind", "length", "nbl")

    def __init__(self, nbl: NetBufferList, kind: str, handle: NdisOffloadHandle | None) -> None:
        self.nbl = nbl
        self.kind = kind
        self.handle = handle
        self.length = nbl.data_length


class DeliveryAudit:
    """Observer for `RecordingScheduler`: call it with each `Delivery` before it runs."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        # id(context) -> (context, the layer whose slot-writing it is, the handle whose slot)
        self._contexts: dict[int, tuple[Any, Layer, NdisOffloadHandle]] = {}
        self._initiated: dict[int, NdisOffloadHandle] = {}  # handle ids whose initiate completed
        self._dead: dict[int, NdisOffloadHandle] = {}  # handle ids whose terminate completed
        self._given: dict[tuple[int, str], _Given] = {}  # (NBL id, layer name) -> given
        self.audited = 0

    def violation(self, what: str) -> None:
        self.violations.append(what)

    def __call__(self, d: Delivery) -> None:
        self.audited += 1
        handler = d.handler
        if handler in MINIPORT_IO_KIND:
            self._io_down(d.layer, MINIPORT_IO_KIND[handler], d.args[0], d.args[1])
        elif handler in COMPLETION_KIND:
            self._io_up(d.layer, COMPLETION_KIND[handler], d.args[0], d.args[1])
        elif handler in _INDICATIONS:
            self._indication(d.layer, handler, d.args[0])
        elif handler in _STATE_REQUESTS:
            self._state_down(d.layer, handler, d.args[0])
        elif handler == "ProtocolInitiateOffloadComplete":
            self._initiate_up(d.layer, d.args[0], d.args[1])
        elif handler == "ProtocolTerminateOffloadComplete":
            self._terminate_up(d.layer, d.args[0], d.args[1])

    # -- state operations ------------------------------------------------------------------------
    def _state_down(self, layer: Layer, handler: str, root: OffloadBlock) -> None:
        for block in walk(root):
            h = block.ndis_offload_handle
            if h is None:
                continue
            binding = h.ndis_reserved
            if not isinstance(binding, Binding) or binding.lower is not layer:
                self.violation(
                    f"{layer.name}: {handler} names handle {h.id} of {h.layer}, which is not "
                    f"bound to it (handles leak across layers, spec §1.5)"
                )
            if block.kind is BlockKind.TCP and handler == "MiniportInitiateOffload":
                for nbl in iter_chain(block.net_buffer_list_chain):
                    self._give(layer, nbl, "send", h)

    def _initiate_up(self, layer: Layer, binding: Binding, root: OffloadBlock) -> None:
        lower = binding.lower
        for block in walk(root):
            h = block.offload_handle
            if h is None:
                continue
            offloaded = block.status in OFFLOADED_STATUSES
            ctx = h.miniport_offload_context
            if offloaded and ctx is not None:
                self._initiated[h.id] = h
                known = self._contexts.get(id(ctx))
                if known is None:
                    self._contexts[id(ctx)] = (ctx, lower, h)
                elif known[1] is not lower or known[2] is not h:
                    self.violation(
                        f"{layer.name}: the slot of handle {h.id} holds a context {lower.name} "
                        f"did not make for it: {ctx!r} was written by {known[1].name} for handle "
                        f"{known[2].id} (a context leaked across layers, spec §9 item 9)"
                    )
            if block.kind is BlockKind.TCP and not offloaded:
                # a failed connection's send data comes back untouched (spec §3.2.4)
                for nbl in iter_chain(block.net_buffer_list_chain):
                    self._given.pop((nbl.id, lower.name), None)

    def _terminate_up(self, layer: Layer, binding: Binding, root: OffloadBlock) -> None:
        lower = binding.lower
        for block in walk(root):
            h = block.offload_handle
            if h is None or block.status != S.NDIS_STATUS_SUCCESS:
                continue
            self._dead[h.id] = h
            self._initiated.pop(h.id, None)
            for nbl in iter_chain(block.net_buffer_list_chain):
                if self._given.pop((nbl.id, lower.name), None) is None:
                    self.violation(
                        f"{lower.name}: terminate handed back NBL {nbl.id}, which it was not "
                        f"given or already completed (spec §3.6.3)"
                    )
        # everything the lower layer still held for these connections is lost to the host
        for key, given in list(self._given.items()):
            if key[1] == lower.name and given.handle is not None and given.handle.id in self._dead:
                self.violation(
                    f"{lower.name}: terminate of handle {given.handle.id} completed with "
                    f"{given.kind} NBL {given.nbl.id} neither completed nor handed back "
                    f"(spec §3.6.3)"
                )
                del self._given[key]

    # -- I/O ---------------------------------------------------------------------------------------
    def _io_down(self, layer: Layer, kind: str, ctx: Any, head: NetBufferList) -> None:
        known = self._contexts.get(id(ctx))
        handle: NdisOffloadHandle | None = None
        if known is None:
            self.violation(
                f"{layer.name}: given {kind} I/O on {ctx!r}, a context no layer wrote into a "
                f"slot (spec §1.5)"
            )
        elif known[1] is not layer:
            self.violation(
                f"{layer.name}: given {kind} I/O on a context of {known[1].name} (a context "
                f"leaked across layers, spec §9 item 9)"
            )
        else:
            handle = known[2]
        for nbl in iter_chain(head):
            self._give(layer, nbl, kind, handle)

    def _give(
        self, layer: Layer, nbl: NetBufferList, kind: str, handle: NdisOffloadHandle | None
    ) -> None:
        key = (nbl.id, layer.name)
        if key in self._given:
            self.violation(f"{layer.name}: given NBL {nbl.id} again before it came back")
        self._given[key] = _Given(nbl, kind, handle)

    def _io_up(self, layer: Layer, kind: str, binding: Binding, head: NetBufferList) -> None:
        lower = binding.lower
        for nbl in iter_chain(head):
            given = self._given.pop((nbl.id, lower.name), None)
            where = f"{lower.name} -> {layer.name}"
            if given is None:
                self.violation(
                    f"{where}: {kind} completion of NBL {nbl.id}, which {lower.name} was not "
                    f"given or already completed (spec §9 item 1)"
                )
                continue
            if given.kind != kind:
                self.violation(
                    f"{where}: NBL {nbl.id} given as {given.kind} completed as {kind} (spec §4.0)"
                )
            if given.handle is not None and given.handle.id in self._dead:
                self.violation(
                    f"{where}: NBL {nbl.id} completed after its connection's terminate "
                    f"completed (spec §9 item 8)"
                )
            status = nbl.status
            if not legal_io_status(kind, status):
                self.violation(
                    f"{where}: {kind} NBL {nbl.id} completed with {S(status).name} (spec §4)"
                )
            advanced = given.length - nbl.data_length
            if nbl.tcp_offload_bytes_transferred != advanced:
                self.violation(
                    f"{where}: NBL {nbl.id} says {nbl.tcp_offload_bytes_transferred} bytes "
                    f"transferred but was advanced by {advanced} (spec §9 item 3)"
                )
            if kind == "send" and status == S.NDIS_STATUS_SUCCESS and nbl.data_length:
                self.violation(
                    f"{where}: send NBL {nbl.id} SUCCESS with {nbl.data_length} bytes not "
                    f"transferred (spec §4.1)"
                )

    # -- indications -------------------------------------------------------------------------------
    def _indication(self, layer: Layer, handler: str, handle: NdisOffloadHandle) -> None:
        binding = handle.ndis_reserved
        if not isinstance(binding, Binding) or binding.upper is not layer:
            self.violation(
                f"{layer.name}: {handler} on handle {handle.id} of {handle.layer}, not its own "
                f"(spec §5.6)"
            )
        if handle.id in self._dead:
            self.violation(
                f"{layer.name}: {handler} on handle {handle.id} after its terminate completed "
                f"(spec §9 item 8)"
            )
        elif handle.id not in self._initiated:
            self.violation(
                f"{layer.name}: {handler} on handle {handle.id} before its initiate completion "
                f"reached it (spec §3.2.7, §9 item 5)"
            )

    # -- at the end ----------------------------------------------------------------------------------
    def outstanding(self) -> list[str]:
        """NBLs some layer was given and never gave back."""
        return [
            f"{name}: {g.kind} NBL {nbl_id} was never completed nor handed back"
            for (nbl_id, name), g in self._given.items()
        ]
