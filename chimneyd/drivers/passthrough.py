"""Pass-through IM driver: a miniport edge above, a protocol edge below, relaying everything.

Spec §1.5, §1.6, §3.8, §4.8, §5.6. For each offloaded object the IM keeps an *IM offload entry*
holding the overlying driver's handle (`upper`) and the IM's own `NDIS_OFFLOAD_HANDLE` (`handle`)
used towards the lower driver. For each in-flight state operation it keeps an *IM call entry*
holding the mirrored tree it sent down (spec §1.6 [EMU]: a mirror rather than an overlay).
Completions go up only after the lower completion arrives (spec §3.8 [INF]).

Slightly over the usual length: one relay method per chimney call, kept together so the relay
rules read as one table.
"""

from __future__ import annotations

import copy
from typing import Any, Final, Protocol

from chimneyd.compiled import mypyc_attr
from chimneyd.ndis.blocks import BlockKind, BlockRole, OffloadBlock, new_neighbor_block, walk
from chimneyd.ndis.broker import Binding, Ndis
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.handles import NdisOffloadHandle, next_object_id
from chimneyd.ndis.lifecycle import LIVE, Event, Lifecycle, Phase, Role
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.oid import NdisOidRequest
from chimneyd.ndis.status import (
    OFFLOADED_STATUSES,
    IndicateOffloadEvent,
    NdisStatus,
    TcpDisconnectFlags,
    TcpOffloadEventType,
    TcpUploadReason,
)

from .base import DriverLayer, Timers, downcall

#: send statuses after which the host sends the data itself, after an upload (spec §4.1)
UPLOAD_STATUSES: Final = frozenset(
    {
        NdisStatus.NDIS_STATUS_UPLOAD_IN_PROGRESS,
        NdisStatus.NDIS_STATUS_REQUEST_UPLOAD,
        NdisStatus.NDIS_STATUS_UPLOAD_REQUESTED,
    }
)
# Members the I/O path reads, bound once: on Python 3.11 a read off an enum class passes the
# slot of `EnumType.__getattr__` (~800 instructions), a global a few (README, "Benchmarks").
_IO: Final = Event.IO
_STATE_EVENT: Final = {
    "Terminate": Event.TERMINATE,
    "Update": Event.UPDATE,
    "Invalidate": Event.INVALIDATE,
    "Query": Event.QUERY,
}


#: in an entry's `held` list: ask for the upload here (after the failure before it went up)
_ASK_UPLOAD: Any = object()


def _hold(entry: ImOffloadEntry, item: Any) -> None:
    if entry.held is None:
        entry.held = []
    entry.held.append(item)


class _Disconnect:
    """In an entry's `held` list: a disconnect refused while sends before it were below."""

    __slots__ = ("nbl",)

    def __init__(self, nbl: NetBufferList) -> None:
        self.nbl = nbl


class _Indicated(Protocol):
    """What an indication from below is about: an IM's entry or, under a MUX, its copy of a
    neighbor or path on one NIC (`mux.objects.Instance`). Both go up with their upper handle."""

    @property
    def lifecycle(self) -> Lifecycle: ...

    @property
    def upper(self) -> NdisOffloadHandle: ...


@mypyc_attr(allow_interpreted_subclasses=True)
class ImOffloadEntry(Lifecycle):
    """The IM's per-object context: the upper handle and the IM's own handle (spec §1.2);
    its own `Lifecycle`."""

    __slots__ = (
        "below",
        "handle",
        "held",
        "id",
        "lends",
        "lower",
        "own_trace",
        "refusing",
        "upper",
    )

    def __init__(self, layer: str, upper: NdisOffloadHandle, lower: Binding) -> None:
        self.id = next_object_id()
        self.upper = upper
        self.lower = lower
        self.handle = NdisOffloadHandle(layer, self, upper.trace)
        Lifecycle.__init__(self, None, Role.OFFLOADED_OBJECT)
        self.below = 0  # its send NBLs passed down and not yet back
        # sends this IM failed (and a disconnect it refused) while earlier sends were below:
        # they complete after those (spec §4.1, §9 item 2: completions keep posting order)
        self.held: list[Any] | None = None  # made when something is held
        self.refusing = False  # this IM failed a send: it relays no more I/O ahead of the upload
        # state calls below that lent the handle the upper handle's trace (`_lend_trace`), and
        # the trace it had before the first of them: calls on one object overlap and complete
        # in any order, so the handle gets its own back when the last is over, not at each
        self.lends = 0
        self.own_trace: Any = None

    def __str__(self) -> str:
        return f"{self.handle.layer} IM offload entry {self.id}"


class ImCallEntry:
    """One in-flight state operation: the upper root, the mirror and the new entries."""

    __slots__ = ("lent", "new_entries", "op", "pairs", "saved_im_reserved", "upper_root")

    def __init__(self, op: str, upper_root: OffloadBlock) -> None:
        self.op = op
        self.upper_root = upper_root
        self.saved_im_reserved: Any = upper_root.im_reserved
        self.pairs: list[tuple[OffloadBlock, OffloadBlock]] = []
        self.new_entries: dict[int, ImOffloadEntry] = {}  # id(upper block) -> entry
        # entries whose handle carries a trace lent from above for this call (`_lend_trace`)
        self.lent: list[ImOffloadEntry] | None = None


@mypyc_attr(allow_interpreted_subclasses=True)
class PassthroughIm(DriverLayer):
    kind = "passthrough"
    has_miniport_edge = True
    has_protocol_edge = True
    # an IM that cannot relay a send fails it upward with REQUEST_UPLOAD (spec §4.1)
    failable_calls = frozenset({"MiniportTcpOffloadSend"})

    def __init__(self, name: str, ndis: Ndis, timers: Timers, capacity: int = 1 << 20) -> None:
        super().__init__(name, ndis, timers, capacity)
        self.call_entries: set[ImCallEntry] = set()
        # send NBL id -> its entry while the NBL is below: a completion names no connection
        self.sends_below: dict[int, ImOffloadEntry] = {}
        # receive NBL id -> its entry while this IM's indication of it is up, not returned;
        # and the receive requests this IM failed meanwhile, owed once it returns (spec §4.2)
        self.indications: dict[int, ImOffloadEntry] = {}
        self.owed_receives: dict[ImOffloadEntry, list[NetBufferList]] = {}

    def keeps(self, root: OffloadBlock) -> bool:
        """A block list with a call entry was passed on: what is below completes it."""
        call = root.im_reserved
        return call is not None and any(c is call for c in self.call_entries)

    def fail_unserved_send(self, ctx: Any, head: NetBufferList) -> bool:
        """As this IM fails a send it cannot relay (`_failed_send`), unless any of it went
        below or is held here already."""
        entry: ImOffloadEntry = ctx
        if any(nbl.id in self.sends_below for nbl in iter_chain(head)) or (
            entry.held and any(h is head for h in entry.held)
        ):
            return False
        self._failed_send(entry, head, NdisStatus.NDIS_STATUS_FAILURE)
        return True

    def fail_unserved_receive(self, ctx: Any, head: NetBufferList) -> bool:
        """An IM keeps no receive request: one still here was never passed on. It completes
        at once, or, while this IM's indication of received bytes on the connection is up,
        once that has returned: receive completions and indications are serialised per
        connection (spec §4.2, §9 item 4)."""
        entry: ImOffloadEntry = ctx
        _nothing_transferred(head, NdisStatus.NDIS_STATUS_REQUEST_ABORTED)
        if any(e is entry for e in self.indications.values()):
            self.owed_receives.setdefault(entry, []).append(head)
            return True
        self.ndis.NdisTcpOffloadReceiveComplete(self, head)
        return True

    def fail_unserved_disconnect(self, ctx: Any, nbl: NetBufferList) -> bool:
        """Refused as this IM refuses one (no FIN), after the sends still below it."""
        entry: ImOffloadEntry = ctx
        if entry.held and any(isinstance(h, _Disconnect) and h.nbl is nbl for h in entry.held):
            return False
        self._refuse_disconnect(entry, nbl, NdisStatus.NDIS_STATUS_FAILURE)
        return True

    def fail_unserved_forward(self, ctx: Any, head: NetBufferList) -> bool:
        """An IM keeps no forwarded segment: one still here never went below. Back to the
        host with NDIS_STATUS_UPLOAD_IN_PROGRESS, and this IM asks for the upload (as after a
        send it failed), unless one is asked already."""
        entry: ImOffloadEntry = ctx
        _nothing_transferred(head, NdisStatus.NDIS_STATUS_UPLOAD_IN_PROGRESS)
        self.ndis.NdisTcpOffloadForwardComplete(self, head)
        phase = entry.lifecycle.phase
        if phase in LIVE and phase is not Phase.UPLOAD_REQUESTED:
            entry.lifecycle.fire(Event.RETRIEVE)
            self._ask_upload(entry)
        return True

    def fail_unserved_terminate(self, root: OffloadBlock) -> bool:
        """Nothing of it went below, and what the layers below hold is not this IM's to
        know: the terminate fails as one that finds its state corrupt (spec §3.7 steps 1-3).
        FAILURE in every block, then `TcpIndicateRetrieve` (HardwareFailure) and
        `TcpIndicateAbort` for each connection; the host's next terminate goes below as any
        other, the target hands the connection up, and the host, told of the abort, ends it
        (the application hears of a reset, never of bytes it did not get)."""
        lost: list[NdisOffloadHandle] = []
        for up in walk(root):
            if up.role() is BlockRole.PLACEHOLDER:
                up.status = NdisStatus.NDIS_STATUS_SUCCESS
                continue
            up.status = NdisStatus.NDIS_STATUS_FAILURE
            assert up.miniport_offload_context is not None
            ctx: _Indicated = up.miniport_offload_context.miniport_offload_context
            if ctx.lifecycle.phase is not Phase.TERMINATING:
                ctx.lifecycle.fire(Event.TERMINATE)
            ctx.lifecycle.fire(Event.TERMINATE_FAILED)  # the object lives on (spec §3.7)
            if up.kind is BlockKind.TCP:
                lost.append(ctx.upper)
        self.ndis.NdisMTerminateOffloadComplete(self, root)
        indicate = self.ndis.NdisTcpOffloadEventHandler
        retrieve, abort = (
            TcpOffloadEventType.TcpIndicateRetrieve,
            TcpOffloadEventType.TcpIndicateAbort,
        )
        for upper in lost:
            indicate(self, upper, retrieve, int(TcpUploadReason.HardwareFailure))
            indicate(self, upper, abort, 0)
        return True

    def _refuse_disconnect(
        self, entry: ImOffloadEntry, nbl: NetBufferList, status: NdisStatus
    ) -> None:
        """Complete a disconnect with `status`, no FIN sent, after the sends still below."""
        nbl.status = status
        nbl.tcp_offload_bytes_transferred = 0
        if entry.below or entry.held:
            _hold(entry, _Disconnect(nbl))  # after the sends before it (spec §9 item 2)
        else:
            self.ndis.NdisTcpOffloadDisconnectComplete(self, nbl)

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
        existing: list[ImOffloadEntry] = []
        for up in walk(upper_root):
            entry: ImOffloadEntry | None = None
            role = up.role()
            if role is BlockRole.NEW_OFFLOAD and op == "Initiate":
                upper_handle = up.ndis_offload_handle
                assert upper_handle is not None
                binding = binding or self.lower_binding(upper_root)
                entry = ImOffloadEntry(self.name, upper_handle, binding)
                entry.lifecycle.fire(Event.INITIATE)
                call.new_entries[id(up)] = entry
            elif role is not BlockRole.PLACEHOLDER:
                assert up.miniport_offload_context is not None
                entry = up.miniport_offload_context.miniport_offload_context
                if not isinstance(entry, ImOffloadEntry) or entry.id not in self.table:
                    raise ChimneyProtocolError(
                        f"{self.name}: block references no live IM offload entry"
                    )
                if op in _STATE_EVENT:
                    entry.lifecycle.fire(_STATE_EVENT[op])
                binding = binding or entry.lower
                existing.append(entry)
            low = up.mirror(entry.handle if entry else None)  # same NBLs go down (spec §3.2.5)
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
        for entry in existing:  # once every block is checked: a refused call lends nothing
            _lend_trace(call, entry)
        for up, _ in call.pairs:
            new_entry = call.new_entries.get(id(up))
            if new_entry is not None and up.net_buffer_list_chain is not None:
                # send data handed down with the initiate is below from now on, as a relayed
                # send is: the NIC completes it like one (spec §3.2.5), and what this IM fails
                # later completes after it (spec §4.1, §9 item 2)
                self.sends_went_below(new_entry, up.net_buffer_list_chain)
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
        lower_root.im_reserved = None  # the entry points at this block: no cycle left behind
        if call.lent is not None:
            for entry in call.lent:
                _give_back_trace(entry)
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
                entry.lifecycle.fire(Event.INITIATE_OFFLOADED)
                self.table_add(entry.id, entry)
                self.stats.offloads_active += 1
                # write the IM entry into the slot the upper layer gave (spec §1.5 item 5)
                assert up.miniport_offload_context is not None
                up.miniport_offload_context.miniport_offload_context = entry
            else:
                entry.lifecycle.fire(Event.INITIATE_FAILED)
                entry.handle.release()  # never offloaded: nothing comes on it (spec §3.2.4)
                # its send data stays with the host (spec §3.2.4, §3.2.5): no longer below
                self._sends_back(up.net_buffer_list_chain)
        self.ndis.NdisMInitiateOffloadComplete(self, call.upper_root)

    def ProtocolTerminateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        call = self._unmirror(lower_root)
        for up, _ in call.pairs:
            if up.role() is BlockRole.PLACEHOLDER:
                continue
            assert up.miniport_offload_context is not None
            entry: ImOffloadEntry = up.miniport_offload_context.miniport_offload_context
            self._sends_back(up.net_buffer_list_chain)  # handed back, no longer below
            ok = up.status == NdisStatus.NDIS_STATUS_SUCCESS
            if entry.held and ok:
                # the sends this IM held go back after those handed back (`_hand_back_held`)
                self._hand_back_held(entry, up)
            elif entry.held and not entry.below:
                # a corrupt terminate (spec §3.7) with nothing below: the failures held go up
                # now, before it. With sends still below, which it does not hand back, they
                # stay behind those, which the host's next terminate completes (step 4), and
                # go up after them (`ProtocolTcpOffloadSendComplete`; spec §4.1, §9 item 2)
                self._release_held(entry)
            if not ok:
                entry.lifecycle.fire(Event.TERMINATE_FAILED)  # the object lives on (spec §3.7)
                continue
            entry.lifecycle.fire(Event.TERMINATE_COMPLETE)
            self.table_remove(entry.id)
            self.stats.offloads_active -= 1
            entry.handle.release()
        self.ndis.NdisMTerminateOffloadComplete(self, call.upper_root)

    def ProtocolUpdateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        self.ndis.NdisMUpdateOffloadComplete(self, self._unmirror(lower_root).upper_root)

    def ProtocolInvalidateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        self.ndis.NdisMInvalidateOffloadComplete(self, self._unmirror(lower_root).upper_root)

    def ProtocolQueryOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        self.ndis.NdisMQueryOffloadStateComplete(self, self._unmirror(lower_root).upper_root)

    # -- I/O down (spec §4.8) ----------------------------------------------------------------------
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
        entry.fire(_IO)  # the entry is its own Lifecycle: no `lifecycle` property call
        if entry.refusing:
            # this IM failed a send: nothing may go down ahead of what the host sends after
            # the upload (a target that asks for one refuses by itself, with its own status).
            # UPLOAD_REQUESTED in every NBL, the first too: the upload is asked already
            # (spec §4.8 [INF]; REQUEST_UPLOAD marks only the chain that failed, §4.1)
            if entry.below or entry.held:
                _nothing_transferred(head, NdisStatus.NDIS_STATUS_UPLOAD_REQUESTED)
                _hold(entry, head)  # after what is still below, in order
            else:
                self._fail_send(head, NdisStatus.NDIS_STATUS_UPLOAD_REQUESTED)
            return
        # `take_failure` only while a `fail_next` fault is set: its call cost ~1% of a round
        failure = self.take_failure("MiniportTcpOffloadSend", head) if self.fail_next else None
        if failure is not None:
            self._failed_send(entry, head, failure)
            return
        self.relay_send(entry, head)

    def _failed_send(self, entry: ImOffloadEntry, head: NetBufferList, status: NdisStatus) -> None:
        """This IM fails a send (a `fail_next` fault). The stream has a hole there: nothing
        more may go down ahead of what the host sends after an upload, so the connection wants
        one — said by the status when it is an upload status (spec §4.1), else by a
        `TcpIndicateRetrieve` once the failure has gone up. The failure completes after the
        sends still below (completions keep posting order)."""
        if status == NdisStatus.NDIS_STATUS_UPLOAD_IN_PROGRESS:
            status = NdisStatus.NDIS_STATUS_REQUEST_UPLOAD
        said = status in UPLOAD_STATUSES
        entry.refusing = True
        entry.lifecycle.fire(Event.RETRIEVE)
        if said and not entry.below:
            self._fail_send(head, status)
            return
        first = True
        for nbl in iter_chain(head):
            nbl.status = status if first or not said else NdisStatus.NDIS_STATUS_UPLOAD_REQUESTED
            nbl.tcp_offload_bytes_transferred = 0
            first = False
        if entry.below:
            _hold(entry, head)
            if not said:
                _hold(entry, _ASK_UPLOAD)
            return
        self.ndis.NdisTcpOffloadSendComplete(self, head)
        self._ask_upload(entry)

    def _ask_upload(self, entry: ImOffloadEntry) -> None:
        if entry.lifecycle.phase is Phase.UPLOAD_REQUESTED:
            self.ndis.NdisTcpOffloadEventHandler(
                self,
                entry.upper,
                TcpOffloadEventType.TcpIndicateRetrieve,
                int(TcpUploadReason.UploadRequested),
            )

    def _release_held(self, entry: ImOffloadEntry) -> None:
        held, entry.held = entry.held or [], None
        for head in held:
            if head is _ASK_UPLOAD:
                self._ask_upload(entry)
            elif isinstance(head, _Disconnect):
                self.ndis.NdisTcpOffloadDisconnectComplete(self, head.nbl)
            else:
                self.ndis.NdisTcpOffloadSendComplete(self, head)

    def _hand_back_held(self, entry: ImOffloadEntry, up: OffloadBlock) -> None:
        """A terminate succeeded with sends this IM failed or refused still held behind the
        sends below it. Those below come back in the TCP block's `NetBufferListChain`, not
        completed: completing the held ones now would put them ahead of those (spec §9 item
        2), and nothing may complete on the connection after the terminate (§9 item 8). None
        of them went below, so they go back in that chain after the sends returned, in
        posting order, not completed, as the target hands back the sends it refused (spec
        §3.6.3: "original order"); the host carries them all after the upload (§4.1). A
        held disconnect completes before the terminate, as the target's pending one does
        (spec §3.6.3 [EMU]); the upload this IM meant to ask for is under way."""
        held, entry.held = entry.held or [], None
        returned = list(iter_chain(up.net_buffer_list_chain))
        for item in held:
            if isinstance(item, _Disconnect):
                self.ndis.NdisTcpOffloadDisconnectComplete(self, item.nbl)
            elif item is not _ASK_UPLOAD:
                for nbl in iter_chain(item):
                    nbl.status = NdisStatus.NDIS_STATUS_PENDING  # never completed
                    returned.append(nbl)
        up.net_buffer_list_chain = link_chain(returned)
        d = up.delegated
        if d is not None and returned:
            d.SendDataHead, d.SendDataTail = returned[0], returned[-1]

    # The two loops below walk chains by `next` themselves: they run on every send through
    # the IM, where a generator per chain (`iter_chain`) was a measurable part of a hop.
    def relay_send(self, entry: ImOffloadEntry, head: NetBufferList) -> None:
        """Pass a send down to the lower binding of `entry`."""
        self.sends_went_below(entry, head)
        self.ndis.NdisOffloadTcpSend(self, entry.handle, head)

    def sends_went_below(self, entry: ImOffloadEntry, head: NetBufferList) -> None:
        """The send NBLs of `head` are below `entry` until they come back (`_sends_back`):
        relayed, or handed down with the initiate (spec §3.2.5). A MUX counts their bytes."""
        below = self.sends_below
        n = 0
        nbl: NetBufferList | None = head
        while nbl is not None:
            below[nbl.id] = entry
            n += 1
            nbl = nbl.next
        entry.below += n

    def _sends_back(
        self, head: NetBufferList | None, completed: bool = False
    ) -> list[ImOffloadEntry]:
        """Sends come back up (completed, or handed back by a terminate): the entries that
        now have none below and failures held behind them. Completed ones add the bytes they
        carried to `stats.bytes_sent`."""
        out: list[ImOffloadEntry] = []
        pop = self.sends_below.pop
        sent = 0
        nbl = head
        while nbl is not None:
            sent += nbl.tcp_offload_bytes_transferred
            entry = pop(nbl.id, None)
            if entry is not None:
                entry.below -= 1
                if not entry.below and entry.held:
                    out.append(entry)
            nbl = nbl.next
        if completed:
            self.stats.bytes_sent += sent
        return out

    @downcall
    def MiniportTcpOffloadReceive(self, entry: ImOffloadEntry, head: NetBufferList) -> None:
        entry.fire(_IO)
        self.ndis.NdisOffloadTcpReceive(self, entry.handle, head)

    @downcall
    def MiniportTcpOffloadDisconnect(
        self, entry: ImOffloadEntry, nbl: NetBufferList, flags: int
    ) -> None:
        entry.lifecycle.fire(Event.IO)
        if entry.refusing and not (flags & TcpDisconnectFlags.TCP_DISCONNECT_ABORTIVE_CLOSE):
            # no FIN ahead of the data the host sends after the upload: it finishes it then
            self._refuse_disconnect(entry, nbl, NdisStatus.NDIS_STATUS_UPLOAD_IN_PROGRESS)
            return
        self.ndis.NdisOffloadTcpDisconnect(self, entry.handle, nbl, flags)

    @downcall
    def MiniportTcpOffloadForward(self, entry: ImOffloadEntry, head: NetBufferList) -> None:
        entry.lifecycle.fire(Event.IO)
        self.ndis.NdisOffloadTcpForward(self, entry.handle, head)

    @downcall
    def MiniportTcpOffloadReceiveReturn(self, head: NetBufferList) -> None:
        self.ndis.NdisOffloadTcpReceiveReturn(self, self.lower_bindings[0], head)

    # -- completions up (spec §4.8) ----------------------------------------------------------------
    def ProtocolTcpOffloadSendComplete(self, binding: Binding, head: NetBufferList) -> None:
        released = self._sends_back(head, completed=True)
        self.ndis.NdisTcpOffloadSendComplete(self, head)
        for entry in released:
            self._release_held(entry)

    def ProtocolTcpOffloadReceiveComplete(self, binding: Binding, head: NetBufferList) -> None:
        self.stats.bytes_received += _transferred(head)
        self.ndis.NdisTcpOffloadReceiveComplete(self, head)

    def ProtocolTcpOffloadDisconnectComplete(self, binding: Binding, nbl: NetBufferList) -> None:
        self.ndis.NdisTcpOffloadDisconnectComplete(self, nbl)

    def ProtocolTcpOffloadForwardComplete(self, binding: Binding, head: NetBufferList) -> None:
        self.ndis.NdisTcpOffloadForwardComplete(self, head)

    # -- indications up (spec §5.6) ----------------------------------------------------------------
    def ProtocolTcpOffloadEvent(
        self, handle: NdisOffloadHandle, event_type: TcpOffloadEventType, info: int
    ) -> None:
        entry: _Indicated = handle.owner  # container-of (spec §1.5 item 7)
        if event_type is TcpOffloadEventType.TcpIndicateRetrieve:
            mandatory = TcpUploadReason(info).mandatory
            entry.lifecycle.fire(Event.RETRIEVE if mandatory else Event.RETRIEVE_OPTIONAL)
        else:
            entry.lifecycle.fire(Event.INDICATE)
        self.ndis.NdisTcpOffloadEventHandler(self, entry.upper, event_type, info)

    def ProtocolTcpOffloadReceiveIndicate(
        self, handle: NdisOffloadHandle, nbl: NetBufferList, status: NdisStatus
    ) -> None:
        entry: ImOffloadEntry = handle.owner
        self.indications[nbl.id] = entry
        self.ndis.NdisTcpOffloadReceiveHandler(self, entry.upper, nbl, status)

    def ReceiveIndicateReturned(
        self, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None:
        self.stats.bytes_received += bytes_consumed
        entry = self.indications.pop(nbl.id, None)
        # the lower indication's return value goes down unchanged (spec §4.8 [INF])
        self.ndis.NdisReturnReceiveIndication(self, nbl, status, bytes_consumed)
        if self.owed_receives and entry is not None:
            for head in self.owed_receives.pop(entry, ()):
                self.ndis.NdisTcpOffloadReceiveComplete(self, head)

    def ProtocolReceiveNetBufferLists(
        self, binding: Binding, wire: Any, offset: int, data: bytes, flags: int
    ) -> None:
        # relayed as it came, in the order it came, the kernel's timeout too (an RST with
        # `wire.TIMEOUT_MARK`, [EMU] spec §4.7, §5.2): it must not overtake the segments the
        # target indicated before it. A MUX relays the ordinary path with this method
        self.ndis.NdisMIndicateReceiveNetBufferLists(self, wire, offset, data, flags)

    def ProtocolStatusEx(self, binding: Binding, status: NdisStatus) -> None:
        traces = [e.upper.trace for e in self.table if e.upper.trace is not None]
        self.ndis.NdisMIndicateStatusEx(self, status, traces)

    # -- OID requests: the capability query and the parameters pass through (spec §1.3) ----------
    def MiniportOidRequest(self, request: NdisOidRequest) -> None:
        self.ndis.NdisOidRequest(self, self.lower_bindings[0], request)

    def ProtocolOidRequestComplete(self, binding: Binding, request: NdisOidRequest) -> None:
        self.ndis.NdisMOidRequestComplete(self, request)

    # -- NdisMOffloadEventIndicate: up with the upper handle, the answer back down (§5.4, §5.6) -
    def ProtocolIndicateOffloadEvent(
        self, binding: Binding, block: OffloadBlock, code: IndicateOffloadEvent
    ) -> None:
        assert block.offload_handle is not None
        entry: _Indicated = block.offload_handle.owner  # container-of (a MUX: its instance)
        up = new_neighbor_block(None, block.const, copy.copy(block.cached), block.delegated)
        up.status = block.status
        up.ndis_offload_handle = entry.upper
        up.miniport_reserved = block  # the lower block waits for the answer
        self.ndis.NdisMOffloadEventIndicate(self, up, code, block.scratch)

    def OffloadEventIndicateReturned(self, up: OffloadBlock) -> None:
        low: OffloadBlock = up.miniport_reserved
        up.miniport_reserved = None
        low.cached = up.cached  # the HRD the host wrote
        self.ndis.NdisReturnOffloadEventIndicate(self, low)

    def leftovers(self) -> dict[str, int]:
        """Call entries of state operations in flight (spec §1.2), send NBLs below, receive
        indications up and not returned, receive requests owed until they are."""
        return {
            "call_entries": len(self.call_entries),
            "sends_below": len(self.sends_below),
            "indications": len(self.indications),
            "owed_receives": sum(len(owed) for owed in self.owed_receives.values()),
        }


def _lend_trace(call: ImCallEntry, entry: ImOffloadEntry) -> None:
    """A neighbor's or path's handle has no trace of its own; for a state call on it the layer
    above may lend one (the host lends the asking connection's for a `tcp.update` of the
    object). The IM lends it on to its own handle for the call, so the hops below show in
    that trace too (spec §1.6: the IM relays the call as its own). Calls on one object
    overlap (an initiate linking a connection under the path while the path is updated) and
    complete in any order: the handle shows the newest call's trace, and gets its own back
    once every lending call is over (`_give_back_trace`), never a trace an earlier call
    lent, which would outlive that call and its connection."""
    trace = entry.upper.trace
    if entry.lends == 0:
        if trace is entry.handle.trace:
            return  # nothing lent: a connection's own handle, or no trace above
        entry.own_trace = entry.handle.trace
    entry.lends += 1
    entry.handle.trace = trace
    if call.lent is None:
        call.lent = []
    call.lent.append(entry)


def _give_back_trace(entry: ImOffloadEntry) -> None:
    """A call that lent `entry`'s handle a trace is over (`_lend_trace`)."""
    entry.lends -= 1
    if entry.lends == 0:
        entry.handle.trace = entry.own_trace
        entry.own_trace = None


def _nothing_transferred(head: NetBufferList, status: NdisStatus) -> None:
    """Every NBL of the chain completes with `status`, no byte moved."""
    nbl: NetBufferList | None = head
    while nbl is not None:
        nbl.status = status
        nbl.tcp_offload_bytes_transferred = 0
        nbl = nbl.next


def _transferred(head: NetBufferList) -> int:
    """Bytes the NBLs of a completion carried (`TcpOffloadBytesTransferred`, spec §2.4)."""
    total = 0
    nbl: NetBufferList | None = head
    while nbl is not None:
        total += nbl.tcp_offload_bytes_transferred
        nbl = nbl.next
    return total
