"""A teaming (LBFO) MUX intermediate driver: one miniport edge on top, a protocol edge to each
of several NICs below (spec §1.1, §3.8: the IM that relays every chimney call).

State operations are split by NIC (`trees`); I/O goes down the one NIC that carries the
connection, exactly as the pass-through IM relays it; indications and completions come up with
the upper handles. Which NIC takes a new connection is the policy's (`placement`); what happens
when a NIC fails or is taken out of service, and the capabilities the MUX advertises, are in
`failover`.

Longer than most modules because it is a whole IM: a relay method for every chimney call, as in
the pass-through IM, plus the split of state trees by NIC.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chimneyd.ndis.blocks import BlockKind, BlockRole, OffloadBlock, walk
from chimneyd.ndis.broker import Binding, Ndis
from chimneyd.ndis.errors import ChimneyProtocolError
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import LIVE, Event, Phase
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.oid import (
    NdisOidRequest,
    NdisTcpConnectionOffload,
    NdisTcpConnectionOffloadParameters,
)
from chimneyd.ndis.status import (
    OFFLOADED_STATUSES,
    NdisStatus,
    TcpOffloadEventType,
    TcpUploadReason,
)

from .. import fin_wait_2
from ..base import Timers, downcall
from ..passthrough import ImOffloadEntry, PassthroughIm
from ..queues import NO_ITEMS, grown
from . import failover, relink
from .objects import (
    ASKABLE,
    ASKED_MANDATORY,
    ASKED_OPTIONAL,
    Instance,
    Key,
    Lower,
    MuxConnection,
    VirtualObject,
)
from .placement import Fit, Placement, fit_of, nics_below, offers, usable
from .trees import LowerTree, MuxCall, mirror_block

S = NdisStatus
SUCCESS = S.NDIS_STATUS_SUCCESS
PENDING = S.NDIS_STATUS_PENDING  # a block not yet given a status
_OP_EVENT = {"Query": Event.QUERY, "Update": Event.UPDATE, "Invalidate": Event.INVALIDATE}
#: Phases of an instance still being offloaded or terminated on its NIC (spec §3.1).
_SETTLING = frozenset({Phase.OFFLOADING, Phase.TERMINATING})
#: Phases of an instance a new connection cannot be linked under: one settling, or one whose
#: terminate found its hardware state corrupt, for which only a terminate is left (spec §3.7).
#: The connection waits until the MUX has terminated it, then goes under a fresh copy.
_UNLINKABLE = frozenset({*_SETTLING, Phase.FAILED})
#: Phases of an instance a query, update or invalidate from above does not reach.
_NO_STATE_OPS = frozenset({*_SETTLING, Phase.FAILED})
#: Phases of an instance the MUX terminates once nothing on its NIC depends on it.
_TERMINABLE = frozenset({*LIVE, Phase.FAILED})
#: Seconds the MUX waits before terminating again a copy its NIC has found corrupt twice in a
#: row, doubling at each further failure up to the second [EMU]: a NIC stuck at corrupt would
#: otherwise get one terminate after another at once, as many as it fails (`_corrupt_again`).
CORRUPT_RETRY_FIRST = 1.0
CORRUPT_RETRY_MAX = 60.0


class MuxIm(PassthroughIm):
    kind = "mux"

    def __init__(
        self,
        name: str,
        ndis: Ndis,
        timers: Timers,
        policy: str = "least-loaded",
        capacity: int = 1 << 20,
    ) -> None:
        self.lowers: dict[int, Lower] = {}  # by binding id, in the order they were bound
        self.placement = Placement(policy)
        super().__init__(name, ndis, timers, capacity)
        self.call_entries: set[MuxCall] = set()  # type: ignore[assignment]
        # initiates and terminates waiting for an instance to settle on its NIC
        self.deferred: list[tuple[str, OffloadBlock]] = []
        # terminates from above whose lower parts are back but for the neighbor copies they
        # hold back (`MuxCall.held`, `_terminate`): completed above once those have gone
        self.held_terminates: list[MuxCall] = []
        # instance id -> the terminate from above that holds it back, in flight or not: it
        # may go before that terminate's other parts are back
        self.held_by: dict[int, MuxCall] = {}
        # id(held initiate's root) -> id(its TCP block) -> the NIC chosen for it before it was
        # held: the retry is the same initiate, and keeps that choice (`_initiate`)
        self.held_placements: dict[int, dict[int, Lower]] = {}
        # id(held initiate's root) -> the clock when the MUX first held it: the FIN_WAIT_2
        # timers it hands down ran meanwhile (`fin_wait_2.spend_held`, spec §8)
        self.held_since: dict[int, int] = {}
        # [EMU] the NICs the host withholds (`host_event`), as its last offload's placement
        # wish said: the host's reasons hold per NIC, for all its connections alike. A
        # rebalance plans onto none of them (`failover._barred`, through `host_avoid`),
        # whatever the older wishes of the connections it moves said
        self.wished_avoid: frozenset[str] = frozenset()
        # [EMU] NIC name -> the conditions behind the host's reasons that hold for it now, as
        # the NIC's own indications told the MUX (`lower_withheld`): for a NIC told of, this
        # and not an offload's wish, which may be older than the last indication, says
        self.withheld_below: dict[str, frozenset[str]] = {}
        self.indicating: dict[int, Lower] = {}  # NBL id -> NIC, while its indication is up
        self.returns_to: dict[int, Lower] = {}  # NBL id -> NIC, held above until returned
        self.params: NdisTcpConnectionOffloadParameters | None = None
        self.cap_waiters: list[NdisOidRequest] = []
        self.own_queries: dict[int, Lower] = {}  # id(capability query) -> the NIC asked
        self.param_sets: dict[int, list[Any]] = {}  # id(lower set) -> [upper request, left, status]
        self.evacuating: set[MuxConnection] = set()  # asked up, not yet uploaded
        # those of them whose terminate is back from their NIC and waits only for the neighbor
        # copies it holds back (`held_terminates`): the pause above does not wait for them
        # (`failover.evacuated`), as that copy's NIC may never come back (spec §5.5)
        self.evacuating_held: set[MuxConnection] = set()
        # the virtual objects (paths, neighbors) in the table, by id: what a terminate walks
        # to find the copies left unused, without walking every connection in the table
        self.vobj_table: dict[int, VirtualObject] = {}
        # connections of initiates still in flight when their NIC asked for every upload:
        # asked up once the initiate has completed above (`failover.offloaded_late`)
        self.owed: set[MuxConnection] = set()
        self.paused_above = False  # it indicated NDIS_STATUS_OFFLOAD_PAUSE to the layer above
        self.offered: NdisTcpConnectionOffload | None = None  # the capabilities last read above
        # send NBL id -> the bytes it added to its NIC's `outstanding_bytes` when it went down:
        # what it takes off again when it comes back, completed or handed back advanced
        self.bytes_below: dict[int, int] = {}
        # a rebalance asked while a NIC just back had its capabilities read: it runs once
        # they are in (`failover.rebalance`)
        self.rebalance_asked = False

    @property
    def host_avoid(self) -> frozenset[str]:
        """The NICs the host withholds, for a rebalance's plans [EMU]: those the NICs' own
        indications say are held (`lower_withheld`), and of the others those the newest
        offload's placement wish names."""
        told = self.withheld_below
        held = frozenset(nic for nic, events in told.items() if events)
        return held | frozenset(nic for nic in self.wished_avoid if nic not in told)

    def keeps(self, root: OffloadBlock) -> bool:
        """Passed on (a call entry, or a step of a next-hop change), or deferred until the
        NICs can take it."""
        return (
            super().keeps(root)
            or any(r is root for _, r in self.deferred)
            or any(c.upper_root is root for c in self.held_terminates)
            or any(c.relink is not None and c.relink.root is root for c in self.call_entries)
        )

    def lower_list(self) -> list[Lower]:
        return list(self.lowers.values())

    def lower_of(self, binding: Binding) -> Lower:
        return self.lowers[binding.id]

    def connections(self) -> list[MuxConnection]:
        return [c for c in self.table if isinstance(c, MuxConnection)]

    def table_remove(self, object_id: int) -> Any:
        """Out of the table; and when that was the last thing the MUX carried, the plans left
        unused go (`idle`), whichever way it went: a terminate's completion, a held one's
        (`complete_held`, also after a NIC failed the offload of a copy it held back), an
        offload that failed."""
        obj = super().table_remove(object_id)
        self.idle()
        return obj

    def on_bound(self, binding: Binding) -> None:
        lower = self.lowers[binding.id] = Lower(binding)
        failover.bound(self, lower)

    # ============================================================================================
    # initiate (spec §3.2): place each connection, offload what it depends on to its NIC
    # ============================================================================================
    @downcall
    def MiniportInitiateOffload(self, root: OffloadBlock) -> None:
        for up in walk(root):  # in the host's order: a held initiate, retried, is older
            if up.kind is BlockKind.TCP and up.role() is not BlockRole.PLACEHOLDER:
                wish = up.wish
                self.wished_avoid = wish[1] if wish is not None else frozenset()
        if not self._initiate(root):
            self.deferred.append(("Initiate", root))
            self.held_since[id(root)] = self.ndis.clock()

    def _initiate(self, root: OffloadBlock) -> bool:
        """Split and send the tree; False (nothing changed) when an object it needs on the
        chosen NIC is still being offloaded or terminated there (spec §3.1), or has a copy
        there whose terminate found it corrupt (spec §3.7, `_settling`), or a NIC has not yet
        said what it can carry (placing without it would refuse needlessly): retried later."""
        if self.own_queries:
            return False
        objects = self._objects_of(root)
        parents = _parents(root)
        placed: list[tuple[OffloadBlock, Lower | None, Key, Fit | None]] = []
        held = self.held_placements.pop(id(root), {})  # chosen before it was held
        # when it was first held (`spend_held`): taken now, as its placements are, so that an
        # initiate that goes (a retry that raised) leaves no entry for another to find by id
        since = self.held_since.pop(id(root), None)
        for up in walk(root):
            if up.kind is not BlockKind.TCP or up.role() is BlockRole.PLACEHOLDER:
                continue
            path_up = parents.get(id(up))
            path = objects.get(id(path_up))
            if not isinstance(path, VirtualObject) and path != "new":
                raise ChimneyProtocolError(f"{self.name}: a connection with no path above it")
            # what the MUX already has of the objects the connection goes under: its path, or
            # for a new path the neighbor it goes under (`_instance_for` links the new path
            # under that neighbor's copy on the chosen NIC, whatever its phase, spec §3.1)
            above = (
                path
                if isinstance(path, VirtualObject)
                else objects.get(id(parents.get(id(path_up))))
            )
            known = above if isinstance(above, VirtualObject) else None
            key = _key(parents, up)
            # [EMU] the host's placement wish for the connection, carried on its block (the
            # NIC the application pinned it to, the NICs the host keeps its connections off)
            fit = fit_of(up.wish)
            if known is not None:
                fit = _avoiding(known, fit)
            lower = held.get(id(up))
            if lower is None or not self._still_fits(lower, key, fit):
                lower = self.placement.choose(self.lower_list(), key, _ipv6(key), fit)
            if lower is not None and known is not None and self._settling(known, lower):
                for _, chosen, _, _ in placed:  # nothing changes: undo the counts taken so far
                    if chosen is not None:
                        chosen.connections -= 1
                # but the choices stand: the retry is the same initiate, so round robin's turn
                # does not move on again, and a rebalance's planned move (popped from
                # `placement.moves` by the first choice) is not lost to the policy
                held = {id(u): lo for u, lo, _, _ in placed if lo is not None}
                held[id(up)] = lower
                self.held_placements[id(root)] = held
                if since is not None:
                    self.held_since[id(root)] = since
                return False
            if lower is not None:
                lower.connections += 1  # counted now so the next choice in this tree sees it
            placed.append((up, lower, key, fit))
        if since is not None:
            # before the blocks are mirrored: the hold goes down on them (`mirror_block`)
            fin_wait_2.spend_held(
                root, self.ndis.clock() - since, fin_wait_2.ticks_per_second(self)
            )
        call = MuxCall("Initiate", root)
        for up in walk(root):  # the objects new to the MUX (spec §2.3 new-offload blocks)
            if objects.get(id(up)) == "new":
                parent = objects.get(id(parents.get(id(up))))
                upper = up.ndis_offload_handle
                assert upper is not None
                above = parent if isinstance(parent, VirtualObject) else None
                vobj = VirtualObject(upper, up, above)
                vobj.lifecycle.fire(Event.INITIATE)
                objects[id(up)] = vobj
                call.new_vobjs[id(up)] = vobj
        for up, lower, key, fit in placed:
            if lower is None:
                call.refused[id(up)] = self._refusal(_ipv6(key), fit)
                continue
            path = objects[id(parents.get(id(up)))]
            assert isinstance(path, VirtualObject) and up.ndis_offload_handle is not None
            entry = MuxConnection(self.name, up.ndis_offload_handle, lower.binding, path, key)
            entry.wish = up.wish  # what a rebalance keeps its plans within [EMU]
            entry.lifecycle.fire(Event.INITIATE)
            if up.net_buffer_list_chain is not None:
                # its send data goes down to the NIC with it, below from now on as a relayed
                # send is (spec §3.2.5): what the MUX fails later completes after it (§4.1)
                self.sends_went_below(entry, up.net_buffer_list_chain)
            _ref(self._instance_for(call, path, lower))
            low = mirror_block(up, entry.handle)
            call.tree(lower).connection_block(entry, low)
            call.link(up, low, entry)
        self._send(call, self.ndis.NdisInitiateOffload)
        return True

    def _still_fits(self, lower: Lower, key: Key, fit: Fit | None) -> bool:
        """Whether `lower`, chosen for a connection before its initiate was held, can still
        take it (in service, with room, its IP version, its placement wish)."""
        return (
            self.lowers.get(lower.binding.id) is lower
            and usable(lower, _ipv6(key))
            and (fit is None or fit(lower))
        )

    def _objects_of(self, root: OffloadBlock) -> dict[int, Any]:
        """id(upper block) -> its virtual object, "new" for a new offload, None a placeholder."""
        out: dict[int, Any] = {}
        for up in walk(root):
            if up.kind is BlockKind.TCP:
                continue
            role = up.role()
            if role is BlockRole.PLACEHOLDER:
                out[id(up)] = None
            elif role is BlockRole.NEW_OFFLOAD:
                out[id(up)] = "new"
            else:
                out[id(up)] = self._context(up, VirtualObject)
        return out

    def _settling(self, vobj: VirtualObject, lower: Lower) -> bool:
        """Whether `vobj` or its neighbor has a copy on `lower` that a new connection cannot
        be linked under yet (`_UNLINKABLE`). `vobj` is the connection's path, or for a path
        new to the MUX the neighbor it goes under: `_instance_for` links every copy the MUX
        has on that NIC, whatever its phase (a copy still being offloaded would be a second
        offload of its handle, spec §3.1).

        A FAILED copy makes the connection wait rather than get a second copy of the object
        on the same NIC, or another NIC: the MUX keeps one copy per object and NIC (it finds
        it by the NIC), the policy's choice stands (the hash policy keeps a connection on one
        NIC), and the host waits the same way for its own FAILED objects. The wait ends:
        the MUX puts a copy in a terminate only with every dependent it has on that NIC, so
        what still depends on a FAILED copy failed in the same terminate: connections the NIC
        asks up (`HardwareFailure`, mandatory: spec §3.7 step 2, §5.2), which the layer above
        terminates again (step 4). With them goes the copy (`_terminate_unused`; at once if
        nothing depends on it), and the retry after that completion offloads a fresh one."""
        if vobj.relinking:
            return True  # its copies are moving to another neighbor's (`relink`): after that
        if _misplaced(vobj, lower) or _missed(vobj, lower):
            return True  # placed by an earlier choice (held): after its copy has gone
        v: VirtualObject | None = vobj
        while v is not None:
            inst = v.instances.get(lower.binding.id)
            if inst is not None and inst.lifecycle.phase in _UNLINKABLE:
                return True
            if inst is None and self._updating(v):
                # a copy made now would carry the values from before the update below, which
                # is relayed only to the copies there were (`_relay_op`): that NIC would keep
                # them for good (spec §3.4 (a)). After the update, with its values
                return True
            v = v.parent
        return False

    def _updating(self, vobj: VirtualObject) -> bool:
        """Whether an update of `vobj` from the layer above is below, at its copies."""
        return any(
            call.op == "Update"
            and call.relink is None
            and any(isinstance(obj, Instance) and obj.vobj is vobj for _, _, obj in call.links)
            for call in self.call_entries
        )

    def _instance_for(self, call: MuxCall, vobj: VirtualObject, lower: Lower) -> Instance:
        """`vobj`'s instance on `lower`, in `call`'s tree for that NIC: linked when offloaded
        there already, else offloaded now with the state the MUX keeps (spec §2.3 roles)."""
        tree = call.tree(lower)
        if vobj.parent is not None:
            self._instance_for(call, vobj.parent, lower)  # its parent's block comes first
        inst = vobj.instances.get(lower.binding.id)
        if inst is None:
            inst = vobj.instances[lower.binding.id] = Instance(self.name, vobj, lower)
            if vobj.parent is not None:
                inst.under = vobj.parent.instances[lower.binding.id]
            inst.lifecycle.fire(Event.INITIATE)
            self.table_add(inst.id, inst)
            if vobj.lifecycle.phase is Phase.INVALIDATED:
                call.stale.append(inst)
            new = OffloadBlock(
                vobj.header_type, inst.handle, vobj.const, vobj.cached, vobj.delegated
            )
            tree.object_block(vobj, lambda: new)
            call.link(None, new, inst)
        elif vobj.id not in tree.nodes:
            handle = inst.handle
            tree.object_block(vobj, lambda: OffloadBlock(vobj.header_type, handle))  # a linker
            # the tree names it until its NIC has taken it: no terminate of it meanwhile, even
            # if a next-hop change moves what hangs under it away (spec §3.1, §2.3)
            inst.linked += 1
            call.linkers.setdefault(lower.binding.id, []).append(inst)
        return inst

    def _refusal(self, ipv6: bool, fit: Fit | None = None) -> NdisStatus:
        """No NIC takes the connection: none offloads its IP version, or none has room (of
        those its placement wish allows: a pinned NIC full refuses as a full team does)."""
        for lo in self.lower_list():
            if fit is not None and not fit(lo):
                continue
            if offers(lo, ipv6):
                return S.NDIS_STATUS_OFFLOAD_TCP_ENTRIES
        return S.NDIS_STATUS_FAILURE

    def ProtocolInitiateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        part = lower_root.im_reserved
        released = self._linkers_back(part, binding) if isinstance(part, MuxCall) else False
        call = self._lower_done(lower_root)
        if call is None:
            if released:
                # a copy this NIC's part linked under may be unused by now; the other NICs'
                # parts, which may be held for long (a failed NIC's, spec §5.5), do not name it
                self._release_unused()
            return
        if call.relink is not None:  # copies of a new neighbor for a next-hop change
            relink.completed(self, call)
            return
        failed: list[Instance] = []
        for up, low, obj in call.links:
            offloaded = low.status in OFFLOADED_STATUSES
            if isinstance(obj, Instance):
                obj.lifecycle.fire(Event.INITIATE_OFFLOADED if offloaded else Event.INITIATE_FAILED)
                if not offloaded:
                    failed.append(obj)
                if obj.vobj in call.new_vobjs.values():
                    if offloaded:
                        call.failed_new[id(obj.vobj)] = SUCCESS
                    else:
                        call.failed_new.setdefault(id(obj.vobj), low.status)
            elif isinstance(obj, MuxConnection):
                assert up is not None
                up.status = low.status  # a connection's status is its NIC's (spec §3.2.4)
                if offloaded:
                    obj.lifecycle.fire(Event.INITIATE_OFFLOADED)
                    self._offloaded(up, obj)
                else:
                    obj.lifecycle.fire(Event.INITIATE_FAILED)
                    self._unplace(obj)
                    obj.handle.release()  # never offloaded: nothing comes on it (§3.2.4)
                    # its send data stays with the host (spec §3.2.5): no longer below
                    self._sends_back(up.net_buffer_list_chain)
        for inst in failed:  # after its failed dependents let go of it, and of its parent
            self._drop_instance(inst)
            inst.handle.release()
        # the copies of objects invalidated above while they were being offloaded: made for
        # an invalidated object (`call.stale`), or held by a NIC that failed, which an
        # invalidate does not wait for (`_invalidate`); either way the invalidate missed them
        late = [
            obj
            for _, _, obj in call.links
            if isinstance(obj, Instance)
            and obj not in call.stale
            and obj.vobj.lifecycle.phase is Phase.INVALIDATED
        ]
        self._invalidate_copies(call.stale + late)
        self._finish_initiate(call)

    @staticmethod
    def _linkers_back(call: MuxCall, binding: Binding) -> bool:
        """`call`'s part on `binding`'s NIC is back: the copies it named as linkers there may
        go from now on (`Instance.linked`). True when it named one that nothing holds now."""
        idle = False
        for inst in call.linkers.pop(binding.id, []):
            inst.linked -= 1
            idle = idle or not (inst.linked or inst.refs)
        return idle

    def _invalidate_copies(self, copies: list[Instance]) -> None:
        """Invalidate the NIC's new copies of objects the layer above has invalidated.

        A connection can reach the MUX under such an object: its initiate was built before the
        invalidate and waited here, or was held below, while the invalidate went by. Placed on
        a NIC that had no live copy (none, or one being terminated), it gets a fresh copy there
        that the invalidate never reached. That NIC would never ask the connection up (spec
        §3.5), and every new connection above would wait behind the object for ever. So the
        MUX invalidates the copy itself, as the layer above did every other; the NIC then asks
        for the upload of what depends on it (`InvalidState`), as it would have. Nothing goes
        up when it completes: the layer above's invalidate already has."""
        live = [i for i in copies if i.lifecycle.phase is Phase.OFFLOADED and i.refs]
        if not live:
            return
        call = MuxCall("Invalidate", None)
        for inst in live:
            inst.lifecycle.fire(Event.INVALIDATE)
            inst.pending_ops += 1  # no terminate before it completes (spec §3.1, §9 item 7)
            block = call.tree(inst.lower).object_block(inst.vobj)
            block.offload_handle = inst.handle
            call.link(None, block, inst)
        self._send(call, self.ndis.NdisInvalidateOffload)

    def _finish_initiate(self, call: MuxCall) -> None:
        root = call.upper_root
        assert root is not None
        for up in walk(root):
            if id(up) in call.refused:
                up.status = call.refused[id(up)]
        blocks = {id(b): b for b in walk(root)}
        failed: dict[int, NdisStatus] = {}
        for key, vobj in call.new_vobjs.items():
            status = call.failed_new.get(id(vobj), SUCCESS)
            if status != SUCCESS:
                # every NIC it went to failed it: so does the MUX, with a NIC's status, as a
                # pass-through would; its connections there failed with it (spec §3.2.4)
                vobj.lifecycle.fire(Event.INITIATE_FAILED)
                failed[key] = status
                continue
            # offloaded to the MUX: on a NIC, or on none yet (its connections were refused
            # before any NIC saw them), kept for connections to come
            vobj.lifecycle.fire(Event.INITIATE_OFFLOADED)
            self._offloaded(blocks[key], vobj)
        _aggregate(root, call, failed)
        root.im_reserved = call.saved_im_reserved
        self.ndis.NdisMInitiateOffloadComplete(self, root)
        placed: list[MuxConnection] = []
        for _, _, obj in call.links:
            if isinstance(obj, MuxConnection):
                self._deliver_early(obj)
                placed.append(obj)
        failover.offloaded_late(self, placed)
        self._release_unused()
        self.retry_deferred()

    def _offloaded(self, up: OffloadBlock, ctx: VirtualObject | MuxConnection) -> None:
        self.table_add(ctx.id, ctx)
        if isinstance(ctx, VirtualObject):
            self.vobj_table[ctx.id] = ctx
        self.stats.offloads_active += 1
        assert up.miniport_offload_context is not None
        up.miniport_offload_context.miniport_offload_context = ctx  # the upper slot (§1.5)

    def _unplace(self, entry: MuxConnection) -> None:
        """A connection that is not (or no longer) on its NIC: its path there loses it."""
        lower = self.lowers[entry.lower.id]
        lower.connections -= 1
        self._unref(entry.path, lower)

    def _unref(self, vobj: VirtualObject, lower: Lower) -> None:
        """One dependent less for `vobj`'s instance on `lower` (and, when it has none left, for
        its parent's): the host's reference counting, per NIC."""
        inst = vobj.instances.get(lower.binding.id)
        if inst is None:
            return
        inst.refs -= 1
        if inst.refs == 0 and inst.under is not None:
            inst.under.refs -= 1

    def _drop_instance(self, inst: Instance) -> None:
        _cancel_retry(inst)
        self._tried(inst)  # gone (or its offload failed): a terminate holding it back goes on
        inst.vobj.instances.pop(inst.lower.binding.id, None)
        if inst.id in self.table:
            self.table_remove(inst.id)

    # ============================================================================================
    # terminate (spec §3.6), query, update, invalidate (spec §3.3-§3.5)
    # ============================================================================================
    @downcall
    def MiniportTerminateOffload(self, root: OffloadBlock) -> None:
        if not self._terminate(root):
            self.deferred.append(("Terminate", root))

    def _terminate(self, root: OffloadBlock) -> bool:
        """Split and send the tree; False (nothing changed) while a neighbor or path it names
        still has a copy being offloaded or terminated on a NIC: its completion would reach the
        layer above with that copy still alive below (spec §3.1, §9 item 8); or a copy with a
        state operation below it, which the layer above cannot know of when it is the MUX's
        own (`_invalidate_copies`): no terminate before it completes (spec §3.1, §9 item 7).
        Retried later.

        A copy of a neighbor it names that still has a copy of another neighbor's path under
        it on its NIC (a next-hop change left it there, `relink`; its connections there are
        asked up) is held back (`MuxCall.held`): the connections and paths the tree names go
        now, that copy once what hangs under it has gone (`_release_unused`), and the
        terminate completes above after it. Waiting with the whole tree instead, two
        neighbors whose paths crossed (each path's copy left under the other's neighbor on a
        failed NIC) each waited for the other's terminate, and their connections never came
        up (spec §3.1: dependents go first; each copy is in one call at a time).

        So too a copy of a neighbor that a failed NIC holds the offload of until its RESUME
        (spec §5.5), with nothing under it: a next-hop change's copy of the new neighbor, left
        out of the move (`relink.lower_failed`). The terminate completes after it, as no copy
        may outlive it below (spec §9 item 8), but what else it names goes now: waiting with
        the whole tree, it also held every terminate waiting for those paths' copies."""
        for up in walk(root):
            if up.role() is not BlockRole.PLACEHOLDER and up.kind is not BlockKind.TCP:
                vobj = self._context(up, VirtualObject)
                if any(
                    (i.lifecycle.phase in _SETTLING and not _left_to_resume(i))
                    or i.pending_ops
                    or i.linked
                    for i in vobj.instances.values()
                ):
                    return False
        call = MuxCall("Terminate", root)
        going: dict[int, int] = {}  # instance id -> its dependents terminated in this call
        for up in walk(root):
            if up.role() is BlockRole.PLACEHOLDER:
                continue
            if up.kind is BlockKind.TCP:
                entry = self._context(up, MuxConnection)
                entry.lifecycle.fire(Event.TERMINATE)
                lower = self.lowers[entry.lower.id]
                low = mirror_block(up, entry.handle)
                call.tree(lower).connection_block(entry, low)
                call.link(up, low, entry)
                # its path there keeps it until the NIC has completed its terminate (spec §3.1)
                inst = entry.path.instances.get(lower.binding.id)
                if inst is not None:
                    going[inst.id] = going.get(inst.id, 0) + 1
            else:
                vobj = self._context(up, VirtualObject)
                vobj.lifecycle.fire(Event.TERMINATE)
                for inst in vobj.instances.values():
                    # the layer above terminates the object: each copy goes with it now, a
                    # corrupt one waiting for its next try too (spec §3.1)
                    _cancel_retry(inst)
        going_now = self._terminate_unused(call, going)
        for up in walk(root):  # every instance of a terminated object goes now (spec §3.1)
            if up.role() is not BlockRole.PLACEHOLDER and up.kind is not BlockKind.TCP:
                vobj = self._context(up, VirtualObject)
                for inst in vobj.instances.values():
                    if inst in going_now:
                        continue
                    if vobj.parent is None and (_left_to_resume(inst) or self._strays_under(inst)):
                        call.held.add(inst)  # after what hangs under it there, or its offload
                        self.held_by[inst.id] = call
                        continue
                    raise ChimneyProtocolError(
                        f"{self.name}: {inst.vobj} terminated with dependents (spec §3.1)"
                    )
        self._send(call, self.ndis.NdisTerminateOffload)
        return True

    def _strays_under(self, neighbor: Instance) -> bool:
        """Whether the neighbor copy `neighbor` has a copy of another neighbor's path under it
        on its NIC: one a next-hop change moved there and its NIC could not move back, or left
        there as its NIC had failed (`relink`). The layer above does not know of it, and may
        terminate the neighbor first: that copy goes once the path's has (`_terminate`)."""
        return any(
            inst.under is neighbor
            for vobj in self._vobjs()
            if vobj.parent is not None and vobj.parent is not neighbor.vobj
            for inst in vobj.instances.values()
        )

    def _terminate_unused(
        self, call: MuxCall, going: dict[int, int] | None = None
    ) -> set[Instance]:
        """Add to `call` every offloaded instance nothing on its NIC depends on but what `call`
        terminates there too (`going`: instance id -> its connections in `call`): a neighbor or
        path is terminated only with or after its dependents (spec §3.1, §3.6). Returns the
        instances in `call`."""
        going = dict(going or {})
        added: set[Instance] = set()
        vobjs = self._vobjs()
        for vobj in vobjs:  # paths before their neighbors
            for inst in list(vobj.instances.values()):
                if inst.lifecycle.phase not in _TERMINABLE or inst.pending_ops:
                    continue  # a query, update or invalidate is below it: after that one
                if inst.linked:
                    continue  # an initiate below names it as a linker: after that one (§3.1)
                if inst.retry is not None:
                    continue  # its NIC keeps finding it corrupt: after the wait
                if vobj.parent is None and not _only_going(vobjs, inst, added):
                    continue  # a path there is offloaded, or in flight in another call
                if inst.refs - going.get(inst.id, 0) > 0:
                    continue
                inst.lifecycle.fire(Event.TERMINATE)
                block = call.tree(inst.lower).object_block(vobj)
                block.offload_handle = inst.handle
                call.link(None, block, inst)
                added.add(inst)
                parent = inst.under
                if parent is not None and inst.refs:
                    going[parent.id] = going.get(parent.id, 0) + 1  # it counts this path
        return added

    def _vobjs(self) -> list[VirtualObject]:
        # neighbors after the paths that depend on them: dependents are linked first
        objs = {id(v): v for o in self.vobj_table.values() for v in _object_chain(o)}
        return sorted(objs.values(), key=lambda v: v.parent is None)

    def _vobj_terminated(self, vobj: VirtualObject) -> None:
        vobj.lifecycle.fire(Event.TERMINATE_COMPLETE)
        self.table_remove(vobj.id)
        del self.vobj_table[vobj.id]
        self.stats.offloads_active -= 1

    def ProtocolTerminateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        for low in walk(lower_root):
            if low.kind is BlockKind.TCP and low.status != SUCCESS:
                # corrupt: the NIC asks for the upload and indicates the abort next (spec
                # §3.7), which must not reach the layer above before this terminate's
                # completion does, however long the other NICs' parts take
                assert low.offload_handle is not None
                low.offload_handle.owner.completing = True
        call = self._lower_done(lower_root)
        if call is None:
            return
        failed_below: list[Instance] = []  # the copies what failed here hangs under
        for up, low, obj in call.links:
            ok = low.status == SUCCESS
            if not ok and call.held:
                failed_below += _copies_above(obj)
            if isinstance(obj, MuxConnection):
                assert up is not None
                up.status = low.status
                up.net_buffer_list_chain = low.net_buffer_list_chain  # sends handed back
                self._sends_back(low.net_buffer_list_chain)
                if obj.held and ok:
                    # failures held here go back in the terminate's chain after the sends
                    # returned, not completed, as at the pass-through IM (`_hand_back_held`;
                    # spec §3.6.3, §9 item 2)
                    self._hand_back_held(obj, up)
                elif obj.held and not obj.below:
                    # after a corrupt terminate they stay behind the sends still below, until
                    # the host's next terminate completes those (spec §3.7 step 4, §9 item 2)
                    self._release_held(obj)
                if not ok:  # corrupt hardware: it lives on, for a further terminate (§3.7)
                    obj.lifecycle.fire(Event.TERMINATE_FAILED)
                    continue
                obj.lifecycle.fire(Event.TERMINATE_COMPLETE)
                lower = self.lowers[obj.lower.id]
                lower.connections -= 1
                self._unref(obj.path, lower)  # only now no dependent of its path (spec §3.1)
                self.table_remove(obj.id)
                self.stats.offloads_active -= 1
                obj.handle.release()
                if up.delegated is not None and up.delegated.BufferedData is not None:
                    self.returns_to[up.delegated.BufferedData.id] = lower
                if not call.held:  # else once the terminate has completed above
                    self.evacuating.discard(obj)
            else:
                obj.lifecycle.fire(Event.TERMINATE_COMPLETE if ok else Event.TERMINATE_FAILED)
                if ok:
                    self._drop_instance(obj)
                    obj.handle.release()
                else:
                    self._corrupt_again(obj)
                    self._tried(obj)  # corrupt: the terminate holding it back fails (§3.7)
        for inst in failed_below:
            if inst in call.held:
                # its own dependents there were found corrupt (spec §3.7): they stay until the
                # layer above terminates them again, which it does only once this terminate
                # has completed, failed. Held, the copy waited for them and they for it
                call.held.discard(inst)
                self.held_by.pop(inst.id, None)
                call.kept.add(inst)
        if call.upper_root is not None and call.held:
            self.held_terminates.append(call)  # the copies it holds back are still below
            self.evacuating_held.update(
                obj
                for _, _, obj in call.links
                if isinstance(obj, MuxConnection) and obj in self.evacuating
            )
        elif call.upper_root is not None:
            self._terminated_above(call)
        self.complete_held()
        # the copies left unused go below first: a stray path copy among them holds the
        # RESUME until it has gone (`failover._uploading`)
        self._release_unused()
        failover.evacuated(self)
        self.retry_deferred()

    def _tried(self, inst: Instance) -> None:
        """`inst`, held back by a terminate from above, has been terminated, or found corrupt,
        or its offload failed: that terminate no longer waits for it."""
        call = self.held_by.pop(inst.id, None)
        if call is not None:
            call.held.discard(inst)

    def complete_held(self) -> None:
        """Complete above the terminates whose held-back copies have all been tried."""
        for done in [c for c in self.held_terminates if not c.held]:
            self.held_terminates.remove(done)
            self._terminated_above(done)

    def _terminated_above(self, call: MuxCall) -> None:
        """Complete the terminate from above `call` stands for: every copy of the objects it
        names has gone, or its NIC found it corrupt (spec §3.6, §3.7)."""
        root = call.upper_root
        assert root is not None
        # paths before their neighbors: a neighbor lives on while a path of its does
        blocks = sorted(walk(root), key=lambda b: b.kind is BlockKind.NEIGHBOR)
        for up in blocks:
            if up.role() is BlockRole.PLACEHOLDER:
                up.status = SUCCESS
            elif up.kind is not BlockKind.TCP:
                vobj = self._context(up, VirtualObject)
                failed = [
                    i
                    for i in vobj.instances.values()
                    if i.lifecycle.phase is Phase.FAILED or i in call.kept
                ]
                # a path of its that failed may have had its copy under another neighbor's
                # (a move its NIC could not make or undo, `relink`): the neighbor has no copy
                # there to fail with it, yet lives on with that path (spec §3.7, §9 item 10)
                kept_by = up.kind is BlockKind.NEIGHBOR and any(
                    d.role() is not BlockRole.PLACEHOLDER and d.status != SUCCESS
                    for d in up.dependents()
                )
                up.status = S.NDIS_STATUS_FAILURE if failed or kept_by else SUCCESS
                if not failed and not kept_by:
                    self._vobj_terminated(vobj)
                else:
                    # a copy's hardware state is corrupt: the object lives on for the
                    # host's further terminate (spec §3.7), as a NIC's own object would
                    vobj.lifecycle.fire(Event.TERMINATE_FAILED)
        root.im_reserved = call.saved_im_reserved
        self.ndis.NdisMTerminateOffloadComplete(self, root)
        for _, _, obj in call.links:
            if isinstance(obj, MuxConnection):
                if obj.completing:
                    # its NIC found it corrupt: on its way up until that NIC's abort has gone
                    # up too (`_relay_event`), held in `early` or still to come (spec §3.7
                    # steps 2-3 follow step 1): the RESUME comes after them (spec §5.5)
                    obj.completing = False
                    self._deliver_early(obj)
                    continue
                self.evacuating.discard(obj)  # up at last (`failover.evacuated`)
                self.evacuating_held.discard(obj)

    def idle(self) -> None:
        """Once the MUX carries nothing (no connection, no object, no copy), a rebalance's
        plans not used yet are for connections the host closed (`failover.forget_plans`).
        Asked at each removal from the table (`table_remove`)."""
        if not self.table and self.placement.moves:
            failover.forget_plans(self)

    def _corrupt_again(self, inst: Instance) -> None:
        """A terminate found `inst`'s hardware state corrupt (spec §3.7). The first time, the
        MUX terminates it again as soon as nothing on its NIC depends on it: step 4's
        terminate, the one that completes it. A NIC that finds it corrupt again keeps failing
        it: the MUX then waits before each further terminate, twice as long each time up to
        `CORRUPT_RETRY_MAX` (so a NIC stuck at corrupt gets one terminate in that time, not
        one after another at once), and places no more connections of the object there for
        the rest of its life: they go to the other NICs, or are refused when none is left,
        instead of waiting for it [EMU]."""
        inst.corrupt += 1
        if inst.corrupt < 2:
            return
        inst.vobj.avoid.add(inst.lower.binding.id)
        wait = min(CORRUPT_RETRY_FIRST * 2 ** (inst.corrupt - 2), CORRUPT_RETRY_MAX)
        inst.retry = self.timers.call_later(wait, self._retry_corrupt, inst)

    def _retry_corrupt(self, inst: Instance) -> None:
        """The wait before terminating `inst` again is over (`_corrupt_again`). Every copy
        waiting on its NIC goes in the same terminate (a path's and its neighbor's failed
        together, and wait as long): one terminate for the NIC per wait."""
        for vobj in self._vobjs():
            waiting = vobj.instances.get(inst.lower.binding.id)
            if waiting is not None:
                _cancel_retry(waiting)
        self._release_unused()

    @downcall
    def MiniportQueryOffload(self, root: OffloadBlock) -> None:
        self._relay_op("Query", root, self.ndis.NdisQueryOffloadState)

    @downcall
    def MiniportUpdateOffload(self, root: OffloadBlock) -> None:
        if not self._update(root):
            self.deferred.append(("Update", root))

    def _update(self, root: OffloadBlock) -> bool:
        """Relay the update, or make the next-hop change it asks for (`_relink`); False
        (nothing changed) while a copy of an object it names is being offloaded, an update
        before it that shares an object with it waits here, or a next-hop change under way names one of its objects or moves a path from one: the
        move's updates (step 2, or step 3's values from before) would reach the NICs after
        this one and put older values back (spec §3.4 (a): an update's values are copied
        into the objects; §9 item 7: one update of an object in flight). Retried once that
        one is done."""
        objects = _named(self, root)
        if any(
            op == "Update" and _named(self, r).keys() & objects.keys() for op, r in self.deferred
        ):
            return False  # the one before it goes first (`retry_deferred` keeps the order)
        if any(self._moving(v) for v in objects.values()):
            return False
        if any(
            i.lifecycle.phase is Phase.OFFLOADING and not i.lower.failed
            for v in objects.values()
            for i in v.instances.values()
        ):
            # a copy being offloaded for a connection placed on its NIC takes no state call
            # yet (spec §3.1), and was made with the values from before this update: missed,
            # its NIC would keep them for good. After its offload, as an invalidate waits.
            # Not for a failed NIC's, which holds it until its RESUME (spec §5.5): the failover
            # asks its connection up (`failover.offloaded_late`), and the copy goes with it
            return False
        for up in walk(root):
            if up.role() is not BlockRole.PLACEHOLDER and up.kind is not BlockKind.TCP:
                for i in self._context(up, VirtualObject).instances.values():
                    if i.lifecycle.phase is Phase.OFFLOADING:  # a failed NIC's (above)
                        # made with the values from before this update: once its NIC is
                        # back, no new connection goes under it (`_missed`)
                        i.missed = True
        if self._relinks(root):
            return self._relink(root)  # a next-hop change
        self._relay_op("Update", root, self.ndis.NdisUpdateOffload)
        return True

    def _relink(self, root: OffloadBlock) -> bool:
        """Move paths to another neighbor (spec §3.4 (b), the next-hop change): each NIC's
        copy of a path under that NIC's copy of the new neighbor (`relink`). False (nothing
        changed) while a copy it needs is still being offloaded or terminated: retried."""
        plan = relink.plan(self, root)
        if plan is False:
            return False
        if plan is True:
            # a shape the MUX does not split (a connection under a moving path): it fails as
            # a whole rather than report a move it did not make; a failed update leaves the
            # objects as they were, and the host takes their connections up (§3.4)
            for block in walk(root):
                block.status = NdisStatus.NDIS_STATUS_FAILURE
            self.ndis.NdisMUpdateOffloadComplete(self, root)
            return True
        relink.start(self, plan)
        return True

    def _relinks(self, root: OffloadBlock) -> bool:
        """Whether the update names a path below a neighbor that is not the path's own."""
        block: OffloadBlock | None = root
        while block is not None:
            if block.kind is BlockKind.NEIGHBOR and block.role() is not BlockRole.PLACEHOLDER:
                neighbor = self._context(block, VirtualObject)
                dep = block.dependent_block_list
                while dep is not None:
                    if dep.role() is not BlockRole.PLACEHOLDER:
                        path = self._context(dep, VirtualObject)
                        if path.parent is not neighbor:
                            return True
                    dep = dep.next_block
            block = block.next_block
        return False

    @downcall
    def MiniportInvalidateOffload(self, root: OffloadBlock) -> None:
        if not self._invalidate(root):
            self.deferred.append(("Invalidate", root))

    def _invalidate(self, root: OffloadBlock) -> bool:
        """Relay the invalidate; False (nothing changed) while a neighbor or path it names is
        still being offloaded on some NIC, for a connection placed there. That copy takes no
        state operation yet (spec §3.1), and missed, its NIC would never ask its connections
        up (spec §3.5): they would stay offloaded under an invalidated object, and every new
        connection under it would wait for ever. Retried once the copy is offloaded. False
        too while a next-hop change under way names it or moves a path from it (`relink`):
        retried once that is done. False too while an update deferred before it shares an
        object with it: that update goes first, as a later update waits for it (`_update`);
        overtaken, it would be retried on an invalidated object (spec §3.1)."""
        objects = _named(self, root)
        if any(
            op == "Update" and _named(self, r).keys() & objects.keys() for op, r in self.deferred
        ):
            return False  # the update before it goes first (`retry_deferred` keeps the order)
        for up in walk(root):
            if up.role() is not BlockRole.PLACEHOLDER and up.kind is not BlockKind.TCP:
                vobj = self._context(up, VirtualObject)
                if any(
                    i.lifecycle.phase is Phase.OFFLOADING and not i.lower.failed
                    for i in vobj.instances.values()
                ):
                    # not for a failed NIC's copy, which it holds until its RESUME (spec
                    # §5.5), as an update does not wait (`_update`): that copy misses this
                    # invalidate, and the MUX invalidates it itself once offloaded
                    # (`_invalidate_copies`, from `ProtocolInitiateOffloadComplete`)
                    return False
                if self._moving(vobj):
                    # a next-hop change is under way for it: its update (or the one moving a
                    # copy back) must not reach a copy this invalidate has reached first
                    # (spec §3.1: no update of an invalidated object); after it
                    return False
        self._relay_op("Invalidate", root, self.ndis.NdisInvalidateOffload)
        return True

    def _moving(self, vobj: VirtualObject) -> bool:
        """Whether a next-hop change under way names `vobj`, or moves a path from it."""
        return any(
            c.relink is not None and c.relink.stage != "done" and vobj in c.relink.vobjs
            for c in self.call_entries
        )

    def _relay_op(self, op: str, root: OffloadBlock, ndis_call: Any) -> None:
        """Each connection's block to its NIC; a neighbor's or path's to every NIC that holds
        an instance of it (a query: to one), with the same state structures."""
        call = MuxCall(op, root)
        event = _OP_EVENT[op]
        for up in walk(root):
            if up.role() is BlockRole.PLACEHOLDER:
                continue
            if up.kind is BlockKind.TCP:
                entry = self._context(up, MuxConnection)
                entry.lifecycle.fire(event)
                low = mirror_block(up, entry.handle)
                call.tree(self.lowers[entry.lower.id]).connection_block(entry, low)
                call.link(up, low, entry)
                continue
            vobj = self._context(up, VirtualObject)
            vobj.lifecycle.fire(event)
            # not a copy being offloaded or terminated, nor one whose terminate found its
            # hardware state corrupt: only a terminate is left for that one (spec §3.7), and
            # the MUX gives it one once nothing on its NIC depends on it
            live = [i for i in vobj.instances.values() if i.lifecycle.phase not in _NO_STATE_OPS]
            # the trace the layer above lent its handle of the object for this call (a host
            # updating a neighbor for a connection): every NIC's hop shows in it too
            above = up.ndis_offload_handle
            for inst in live[:1] if op == "Query" else live:
                inst.lifecycle.fire(event)
                inst.pending_ops += 1
                handle = inst.handle
                handle.trace = above.trace if above is not None else None
                block = call.tree(inst.lower).object_block(
                    vobj,
                    lambda up=up, handle=handle: mirror_block(up, handle),  # type: ignore[misc]
                )
                call.link(up, block, inst)
        self._send(call, ndis_call)

    def ProtocolQueryOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        self._relayed_op_done(lower_root, self.ndis.NdisMQueryOffloadStateComplete)

    def ProtocolUpdateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        call = self._lower_done(lower_root)
        if call is None:
            return
        if call.relink is not None:  # a step of a next-hop change
            relink.completed(self, call)
            return
        self._relayed_call_done(call, self.ndis.NdisMUpdateOffloadComplete)

    def ProtocolInvalidateOffloadComplete(self, binding: Binding, lower_root: OffloadBlock) -> None:
        self._relayed_op_done(lower_root, self.ndis.NdisMInvalidateOffloadComplete)

    def _relayed_op_done(self, lower_root: OffloadBlock, complete: Any) -> None:
        call = self._lower_done(lower_root)
        if call is not None:
            self._relayed_call_done(call, complete)

    def _relayed_call_done(self, call: MuxCall, complete: Any) -> None:
        root = call.upper_root
        failed: set[int] = set()
        for up, low, obj in call.links:
            if isinstance(obj, Instance):
                obj.pending_ops -= 1
                obj.handle.trace = None  # lent for the call only (`_relay_op`)
            if up is None:  # the MUX's own invalidate of a copy: nothing goes up
                continue
            if low.status != SUCCESS:
                failed.add(id(up))
            if call.op == "Query" and isinstance(obj, MuxConnection):
                up.const, up.cached, up.delegated = low.const, low.cached, low.delegated
        if root is None:
            self._release_unused()
            failover.evacuated(self)  # a stray path copy it held back may be all it waited for
            self.retry_deferred()
            return
        for up in walk(root):
            up.status = S.NDIS_STATUS_FAILURE if id(up) in failed else SUCCESS
            if (
                call.op == "Update"
                and up.status == SUCCESS
                and up.kind is not BlockKind.TCP
                and up.role() is not BlockRole.PLACEHOLDER
                and up.cached is not None
            ):
                self._context(up, VirtualObject).cached = up.cached  # for NICs to come
        root.im_reserved = call.saved_im_reserved
        complete(self, root)
        self._release_unused()  # an instance left unused while the operation was below it
        # a stray path copy among them held the RESUME (`failover._uploading`): its terminate
        # is below now, or it stays for another reason, and the RESUME waits no more for it
        failover.evacuated(self)
        self.retry_deferred()

    # ============================================================================================
    # calls and their completions
    # ============================================================================================
    def _send(self, call: MuxCall, ndis_call: Any) -> None:
        """Send `call`'s lower trees, or complete it at once when it needs none."""
        if call.upper_root is not None:
            call.upper_root.im_reserved = call  # the call entry is found again (spec §1.6)
        trees = [t for t in call.trees.values() if t.root is not None]
        call.pending = len(trees)
        self.call_entries.add(call)
        if not trees:
            self._complete_empty(call)
            return
        unsent: list[LowerTree] = []
        error: ChimneyProtocolError | None = None
        for tree in trees:
            assert tree.root is not None
            tree.root.im_reserved = call
            if call.op != "Initiate" or call.relink is not None:
                ndis_call(self, tree.lower.binding, tree.root)
                continue
            try:
                ndis_call(self, tree.lower.binding, tree.root)
            except ChimneyProtocolError as exc:
                # NDIS refused the tree (a MUX fault): the call entry already holds the
                # initiate, so NDIS would not fail it above for the MUX (`keeps`) and it
                # would never complete. Its NIC never saw the tree: it fails as a NIC
                # would fail it (spec §3.2.4), the other NICs' parts go on, and the
                # initiate completes above with them; the fault is raised after that
                error = error or exc
                unsent.append(tree)
        for tree in unsent:
            assert tree.root is not None
            for low in walk(tree.root):
                low.status = S.NDIS_STATUS_FAILURE
            self.ProtocolInitiateOffloadComplete(tree.lower.binding, tree.root)
        if error is not None:
            raise error

    def _complete_empty(self, call: MuxCall) -> None:
        """A tree naming only the MUX's own objects (or nothing below): done here."""
        self.call_entries.discard(call)
        if call.relink is not None:  # a step of a next-hop change with nothing to move
            relink.completed(self, call)
            return
        root = call.upper_root
        if call.op == "Initiate":
            self._finish_initiate(call)
            return
        if root is None:
            return
        if call.op == "Terminate" and call.held:
            # it names neighbors only, whose copies it holds back (`_terminate`): it completes
            # once they have gone
            self.held_terminates.append(call)
            return
        for up in walk(root):
            up.status = SUCCESS
            if up.role() is BlockRole.PLACEHOLDER:
                continue
            vobj = self._context(up, VirtualObject)
            if call.op == "Terminate":
                self._vobj_terminated(vobj)
            elif call.op == "Update" and up.cached is not None:
                vobj.cached = up.cached  # for NICs to come
        root.im_reserved = call.saved_im_reserved
        complete = {
            "Terminate": self.ndis.NdisMTerminateOffloadComplete,
            "Query": self.ndis.NdisMQueryOffloadStateComplete,
            "Update": self.ndis.NdisMUpdateOffloadComplete,
            "Invalidate": self.ndis.NdisMInvalidateOffloadComplete,
        }[call.op]
        complete(self, root)

    def _lower_done(self, lower_root: OffloadBlock) -> MuxCall | None:
        """Count a lower completion; the call once every lower tree of it is back."""
        call = lower_root.im_reserved
        if not isinstance(call, MuxCall) or call not in self.call_entries:
            raise ChimneyProtocolError(f"{self.name}: a completion for no MUX call entry")
        lower_root.im_reserved = None
        call.pending -= 1
        if call.pending:
            return None
        self.call_entries.discard(call)
        return call

    def _release_unused(self) -> None:
        """Terminate the instances left with no connection on their NIC (spec §3.1)."""
        call = MuxCall("Terminate", None)
        self._terminate_unused(call)
        if call.trees:
            self._send(call, self.ndis.NdisTerminateOffload)

    def retry_deferred(self) -> None:
        deferred, self.deferred = self.deferred, []
        retry = {
            "Initiate": self._initiate,
            "Terminate": self._terminate,
            "Invalidate": self._invalidate,
            "Update": self._update,
        }
        for i, (op, root) in enumerate(deferred):
            try:
                done = retry[op](root)
            except BaseException:
                # the rest still wait: a fault in one retry must not drop them unanswered
                self.deferred += deferred[i + 1 :]
                raise
            if not done:
                self.deferred.append((op, root))

    def _context(self, up: OffloadBlock, cls: type[Any]) -> Any:
        cell = up.miniport_offload_context
        ctx = cell.miniport_offload_context if cell is not None else None
        if not isinstance(ctx, cls) or ctx.id not in self.table:
            raise ChimneyProtocolError(f"{self.name}: block references no live {cls.__name__}")
        return ctx

    # ============================================================================================
    # I/O: down the NIC that carries the connection (spec §4.8)
    # ============================================================================================
    def sends_went_below(self, entry: ImOffloadEntry, head: NetBufferList) -> None:
        """Count the bytes of sends going down a NIC, relayed or handed down with the
        initiate (spec §3.2.5): the least-bytes policy places by them."""
        lower = self.lowers[entry.lower.id]
        counted = self.bytes_below
        for nbl in iter_chain(head):
            n = nbl.data_length
            counted[nbl.id] = n
            lower.outstanding_bytes += n
        super().sends_went_below(entry, head)

    def _sends_back(
        self, head: NetBufferList | None, completed: bool = False
    ) -> list[ImOffloadEntry]:
        """Sends come back, completed or handed back by a terminate (spec §3.6.3): each takes
        off the bytes it added going down. What is left of it says less: a send handed back
        is advanced past the bytes the peer acknowledged, with no `TcpOffloadBytesTransferred`
        for them."""
        below, counted = self.sends_below, self.bytes_below
        for nbl in iter_chain(head):
            entry = below.get(nbl.id)
            if entry is not None:
                self.lowers[entry.lower.id].outstanding_bytes -= counted.pop(nbl.id, 0)
        return super()._sends_back(head, completed)

    def ProtocolTcpOffloadReceiveIndicate(
        self, handle: Any, nbl: NetBufferList, status: NdisStatus
    ) -> None:
        self.indicating[nbl.id] = self.lowers[handle.owner.lower.id]
        if not self._early(
            handle.owner, super().ProtocolTcpOffloadReceiveIndicate, handle, nbl, status
        ):
            super().ProtocolTcpOffloadReceiveIndicate(handle, nbl, status)

    def ProtocolTcpOffloadEvent(
        self, handle: NdisOffloadHandle, event_type: TcpOffloadEventType, info: int
    ) -> None:
        if not self._early(handle.owner, self._relay_event, handle, event_type, info):
            self._relay_event(handle, event_type, info)

    def _relay_event(
        self, handle: NdisOffloadHandle, event_type: TcpOffloadEventType, info: int
    ) -> None:
        """Up with the upper handle (spec §5.6), but for a retrieve that tells the layer above
        nothing new (`_news`), judged when it would go up: one held in `early` may meet the
        MUX's own request, made meanwhile."""
        entry = handle.owner
        if event_type is _RETRIEVE and not self._news(entry, TcpUploadReason(info)):
            return
        super().ProtocolTcpOffloadEvent(handle, event_type, info)
        if (
            event_type is TcpOffloadEventType.TcpIndicateAbort
            and entry.lifecycle.phase is Phase.FAILED
            and entry in self.evacuating
        ):
            # the last of a corrupt terminate's indications from its NIC (spec §3.7 step 3):
            # the layer above has heard how the connection ended, and only now hears of the
            # end of the evacuation (`_terminated_above`, `failover.evacuated`, spec §5.5)
            self.evacuating.discard(entry)
            self.evacuating_held.discard(entry)
            failover.evacuated(self)

    @staticmethod
    def _news(entry: MuxConnection, reason: TcpUploadReason) -> bool:
        """Whether a NIC's `TcpIndicateRetrieve(reason)` goes up; notes it if it does. The NIC
        does not know the MUX asked the connection up already (evacuating it, `retrieve_all`),
        and asks for its own reasons, such as the connection entering TIME_WAIT (spec §5.2):
        the layer above would hear of one upload twice. As the target's own rule
        (`target.events.request_upload`): a first request, or a mandatory reason after
        optional ones only, goes up; nothing else, nor anything once the upload is under way
        (TERMINATING) [INF]. But for the reasons that say more than "upload it", which go up
        whatever came before (`_ALWAYS_NEWS`): `TimeoutExpiration` (the host tells by it why
        the connection comes back CLOSED, spec §5.2), `InvalidState` (the answer for each
        connection an invalidate from above reached, spec §3.5) and `HardwareFailure` (step
        2 of spec §3.7)."""
        if reason in _ALWAYS_NEWS:
            entry.asked = ASKED_MANDATORY
            return True
        strength = ASKED_MANDATORY if reason.mandatory else ASKED_OPTIONAL
        if entry.asked >= strength or entry.lifecycle.phase is Phase.TERMINATING:
            return False
        entry.asked = strength
        return True

    @staticmethod
    def _early(entry: MuxConnection, fn: Callable[..., None], *args: Any) -> bool:
        """Hold what a NIC indicates on a connection the MUX has not yet completed upward.
        A call split over several NICs completes above once every NIC has completed its part,
        and a NIC that has may already indicate on its connections. Nothing about an object
        may go up before its initiate completion (spec §9 item 5), and a failed terminate's
        retrieve and abort come after its completion (spec §3.7): such indications wait in
        the entry, in order, and go up right after the completion (`_deliver_early`) [EMU]."""
        if entry.lifecycle.phase is not Phase.OFFLOADING and not entry.completing:
            return False
        entry.early = grown(entry.early, (fn, args))
        return True

    @staticmethod
    def _deliver_early(entry: MuxConnection) -> None:
        if entry.early:
            early, entry.early = entry.early, NO_ITEMS
            for fn, args in early:  # now, after the completion, in the order they came
                fn(*args)

    def ReceiveIndicateReturned(
        self, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None:
        lower = self.indicating.pop(nbl.id)
        if status == SUCCESS:
            self.returns_to[nbl.id] = lower  # held above; it goes back to this NIC
        super().ReceiveIndicateReturned(nbl, status, bytes_consumed)

    @downcall
    def MiniportTcpOffloadReceiveReturn(self, head: NetBufferList) -> None:
        """The chain may hold NBLs of several NICs: each goes back to its own (spec §1.5)."""
        by_lower: dict[int, list[NetBufferList]] = {}
        for nbl in iter_chain(head):
            lower = self.returns_to.pop(nbl.id, None)
            if lower is None:
                raise ChimneyProtocolError(f"{self.name}: NBL {nbl.id} returned but never held")
            by_lower.setdefault(lower.binding.id, []).append(nbl)
        for binding_id, nbls in by_lower.items():
            chain = link_chain(nbls)
            assert chain is not None
            self.ndis.NdisOffloadTcpReceiveReturn(self, self.lowers[binding_id].binding, chain)

    # ============================================================================================
    # the adapter: OIDs, status, failover (spec §1.3, §5.5)
    # ============================================================================================
    def MiniportOidRequest(self, request: NdisOidRequest) -> None:
        failover.oid_request(self, request)

    def ProtocolOidRequestComplete(self, binding: Binding, request: NdisOidRequest) -> None:
        failover.oid_complete(self, self.lowers[binding.id], request)

    def ProtocolStatusEx(self, binding: Binding, status: NdisStatus) -> None:
        failover.lower_status(self, self.lowers[binding.id], status)

    def lower_down(self, binding: Binding) -> None:
        """`nic_down`: take a NIC out of service; its connections move to the others."""
        failover.take_out(self, self.lowers[binding.id])

    def lower_up(self, binding: Binding) -> None:
        """`nic_up`: the NIC is in service again; new connections may go to it."""
        failover.put_back(self, self.lowers[binding.id])

    def lower_withheld(self, binding: Binding, event: str, on: bool) -> None:
        """[EMU] A condition behind one of the host's reasons to keep its connections off the
        NIC below `binding` starts (`on`) or ends: a media disconnect, a power change away
        from D0, a capability disabled, a `NetEventPause` (spec §6.2). NDIS tells each of
        them first to the protocol bound on the NIC, the MUX (a link-state status
        indication, spec §5.5, §6.2 "the target only indicates link status"; a PnP event
        for power and pause), and the host hears of a NIC under a team only through it.
        chimneyd has no link-state or PnP path, so the `host_event` fault gives it to the
        MUX at its start and its clear, as `nic_down` and `nic_up` give theirs.

        The end is what the MUX could not learn otherwise: no offload follows a clear
        until the host has something to offload, and until then a rebalance left the NIC
        out (`failover._barred`). Nothing else changes: the host's own offloads keep their
        connections off a NIC while its reason holds, whatever the MUX knows."""
        name = _nic_name(binding)
        events = set(self.withheld_below.get(name, frozenset()))
        if on:
            events.add(event)
        else:
            events.discard(event)
        self.withheld_below[name] = frozenset(events)

    def rebalance(self) -> None:
        """Move connections so the NICs in service carry as even a load as can be."""
        failover.rebalance(self)

    def retrieve_all(self, entries: list[MuxConnection]) -> None:
        """Ask the layer above to upload `entries` (a mandatory reason, spec §5.2).

        Not those on their way up already (terminated by the layer above, or asked up by
        their NIC), nor those found corrupt (spec §3.7). But one whose upload only the MUX
        wants so far, its request waiting behind sends still below (`_failed_send`, spec
        §4.8), is asked now, as any other: the layer above has not heard of it, and would
        only once the peer acknowledges those sends."""
        for entry in entries:
            phase = entry.lifecycle.phase
            if phase in ASKABLE:
                # nothing mandatory went up for it yet: once something has (its NIC's request,
                # the MUX's own), it is UPLOAD_REQUESTED or further on its way up
                # (test_mux_asked_interleavings)
                entry.lifecycle.fire(Event.RETRIEVE)
            elif phase is not Phase.UPLOAD_REQUESTED or entry.asked == ASKED_MANDATORY:
                continue  # on its way up already, or asked for it already (spec §5.2)
            self.evacuating.add(entry)
            entry.asked = ASKED_MANDATORY
            self.ndis.NdisTcpOffloadEventHandler(
                self, entry.upper, _RETRIEVE, int(TcpUploadReason.UploadRequested)
            )

    def _ask_upload(self, entry: ImOffloadEntry) -> None:
        """The pass-through IM's own request (`TcpIndicateRetrieve(UploadRequested)`, spec
        §4.8): after a send the MUX failed with no upload status, or a forward it could not
        serve. Mandatory, as the MUX's evacuation is (`retrieve_all`): it goes up unless a
        mandatory request did already, from the NIC or the MUX, and is noted, so that the
        NIC's own request after it is no news either (`_news`, spec §5.2). Noted when it goes
        up, not when the MUX holds it behind sends still below (`_failed_send`): until then
        the layer above has not heard it, and a request the NIC or a failover makes then is
        the one it hears."""
        assert isinstance(entry, MuxConnection)
        if entry.lifecycle.phase is not Phase.UPLOAD_REQUESTED or entry.asked == ASKED_MANDATORY:
            return
        entry.asked = ASKED_MANDATORY
        super()._ask_upload(entry)

    def fail_unserved_terminate(self, root: OffloadBlock) -> bool:
        """A terminate the MUX raised on fails as a corrupt one (the pass-through IM's way,
        spec §3.7 steps 1-3): its `HardwareFailure` request asks each connection up, and a
        request of its NIC's after it is no news (`_news`, spec §5.2).

        A connection of it a failover or rebalance asked up is on its way up no more, as one
        its NIC found corrupt is not once the terminate has completed above
        (`_terminated_above`): aborted, it is never offloaded again, and lives on only for
        the layer above's further terminate (step 4). The PAUSE waits for it no longer
        (`failover.evacuated`): kept among those asked up until that terminate was back, it
        held the whole team paused meanwhile, for ever above a layer that never sent it."""
        entries: list[MuxConnection] = []
        for up in walk(root):
            if up.kind is BlockKind.TCP and up.role() is not BlockRole.PLACEHOLDER:
                cell = up.miniport_offload_context
                entry = cell.miniport_offload_context if cell is not None else None
                if isinstance(entry, MuxConnection):
                    entry.asked = ASKED_MANDATORY
                    entries.append(entry)
        served = super().fail_unserved_terminate(root)
        for entry in entries:
            self.evacuating.discard(entry)
            self.evacuating_held.discard(entry)
        # after the completion and its indications (a NIC's corrupt terminate is released
        # once the NIC's own HardwareFailure request and abort, which follow its completion,
        # have gone up: `_relay_event`)
        failover.evacuated(self)
        return served

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.placement.policy,
            # state operations waiting for a copy to settle on its NIC (spec §3.1)
            "deferred": [op for op, _ in self.deferred],
            "evacuating": len(self.evacuating),  # connections asked up, not yet uploaded
            "lowers": {lo.name: lo.describe() for lo in self.lower_list()},
            "capabilities": failover.capabilities(self).as_map(),
        }

    def leftovers(self) -> dict[str, int]:
        """The pass-through IM's tables, and the MUX's own: operations deferred, NBLs on their
        way up or held above (the NIC each returns to), a rebalance's plans, OID requests in
        flight, connections asked up or owed an upload, virtual objects, bytes counted below."""
        return {
            **super().leftovers(),
            "deferred": len(self.deferred),
            "held_terminates": len(self.held_terminates),
            "held_by": len(self.held_by),
            "placement_moves": len(self.placement.moves),  # a rebalance's plans not used yet
            "held_placements": len(self.held_placements),
            "held_since": len(self.held_since),
            "indicating": len(self.indicating),
            "returns_to": len(self.returns_to),
            "cap_waiters": len(self.cap_waiters),
            "own_queries": len(self.own_queries),
            "param_sets": len(self.param_sets),
            "evacuating": len(self.evacuating),
            "evacuating_held": len(self.evacuating_held),
            "owed": len(self.owed),
            "vobj_table": len(self.vobj_table),
            "bytes_below": len(self.bytes_below),
        }


# -- helpers over the upper tree ---------------------------------------------------------------
_RETRIEVE = TcpOffloadEventType.TcpIndicateRetrieve
#: Upload reasons a NIC's retrieve always carries up, asked before or not (`MuxIm._news`).
_ALWAYS_NEWS = frozenset(
    {
        TcpUploadReason.TimeoutExpiration,
        TcpUploadReason.InvalidState,
        TcpUploadReason.HardwareFailure,
    }
)


def _parents(root: OffloadBlock) -> dict[int, OffloadBlock]:
    """id(block) -> the block whose dependent list holds it (none for the root level), in one
    walk of the tree: a whole NIC's initiate carries thousands of connections, and looking
    each one's path up by walking the tree again took n² steps."""
    parents: dict[int, OffloadBlock] = {}
    for block in walk(root):
        for dep in block.dependents():
            parents[id(dep)] = block
    return parents


def _key(parents: dict[int, OffloadBlock], tcp: OffloadBlock) -> Key:
    path = parents.get(id(tcp))
    src = dst = b""
    if path is not None and path.const is not None:
        src, dst = path.const.SourceAddress, path.const.DestinationAddress
    elif path is not None and path.miniport_offload_context is not None:
        vobj = path.miniport_offload_context.miniport_offload_context
        if isinstance(vobj, VirtualObject) and vobj.const is not None:
            src, dst = vobj.const.SourceAddress, vobj.const.DestinationAddress
    const = tcp.const
    return (src, const.LocalPort if const else 0, dst, const.RemotePort if const else 0)


def _nic_name(binding: Binding) -> str:
    """The NIC below a MUX's binding (one: its lower is a NIC or IMs over one)."""
    (name,) = nics_below(binding.lower)
    return name


def _ipv6(key: Key) -> bool:
    return len(key[0]) == 16  # the path's source address, 4 or 16 bytes


def _ref(inst: Instance) -> None:
    """One more connection on `inst` (a path's instance); its neighbor's counts the path."""
    inst.refs += 1
    if inst.refs == 1 and inst.under is not None:
        inst.under.refs += 1


def _avoiding(path: VirtualObject, fit: Fit | None) -> Fit | None:
    """`fit`, and not a NIC that kept finding a copy of `path` or its neighbor corrupt, nor
    one whose copy of `path` hangs under another neighbor's copy (`_misplaced`), nor one
    whose copy of `path` or its neighbor missed an update (`_missed`)."""
    avoid = path.avoid | path.parent.avoid if path.parent is not None else path.avoid
    if (
        not avoid
        and not any(i.under is not None for i in path.instances.values())
        and not any(i.missed for v in _object_chain(path) for i in v.instances.values())
    ):
        return fit  # a neighbor, or a path with no copy under a neighbor's: nothing to leave out
    return lambda lower: (
        lower.binding.id not in avoid
        and not _misplaced(path, lower)
        and not _missed(path, lower)
        and (fit is None or fit(lower))
    )


def _left_to_resume(inst: Instance) -> bool:
    """Whether `inst` is a neighbor copy that a failed NIC holds the offload of until its
    RESUME (spec §5.5), with nothing under it: a next-hop change's copy of the new neighbor,
    left out of the move (`relink.lower_failed`). A terminate of the neighbor holds it back
    and sends the rest of its tree (`MuxIm._terminate`)."""
    return (
        inst.lifecycle.phase is Phase.OFFLOADING
        and inst.lower.failed
        and inst.vobj.parent is None
        and not inst.refs
    )


def _copies_above(obj: Instance | MuxConnection) -> list[Instance]:
    """The copies `obj` hangs under on its NIC: its path's copy and that one's neighbor's for
    a connection, its neighbor's for a path copy."""
    on = obj.path.instances.get(obj.lower.id) if isinstance(obj, MuxConnection) else obj.under
    out: list[Instance] = []
    inst = on
    while inst is not None:
        out.append(inst)
        inst = inst.under
    return out


def _missed(vobj: VirtualObject, lower: Lower) -> bool:
    """Whether `vobj`'s copy on `lower`, or its neighbor's, missed an update: a failed NIC
    held its offload then, and offloaded it with the values from before once back (spec
    §5.5). The failover asks its connection up and the copy goes with it; a new connection
    linked under it would keep the old values (a stale MAC) for its whole life. It goes to
    another NIC, as from a NIC avoided."""
    v: VirtualObject | None = vobj
    while v is not None:
        inst = v.instances.get(lower.binding.id)
        if inst is not None and inst.missed:
            return True
        v = v.parent
    return False


def _misplaced(path: VirtualObject, lower: Lower) -> bool:
    """Whether `path`'s copy on `lower` hangs under a copy of a neighbor other than the one
    the layer above has it under: one a next-hop change left under the old neighbor's copy
    (its NIC had failed, `relink.plan`), or could not move back (`relink._undone`). Its
    connections there are on their way up, and the copy goes with the last of them; a new
    connection linked under it would be under the wrong neighbor on its NIC, asked up by
    nothing, and hold back the host's terminate of that neighbor for as long as it lives
    (`MuxIm._terminate`). It goes to another NIC, as from a NIC avoided."""
    inst = path.instances.get(lower.binding.id)
    if inst is None or inst.under is None:
        return False
    parent = path.parent
    return parent is None or inst.under is not parent.instances.get(lower.binding.id)


def _named(mux: MuxIm, root: OffloadBlock) -> dict[int, VirtualObject]:
    """The neighbors and paths an update names, and the neighbors of the paths it names
    (those a next-hop change moves them from), by id."""
    out: dict[int, VirtualObject] = {}
    for up in walk(root):
        if up.role() is not BlockRole.PLACEHOLDER and up.kind is not BlockKind.TCP:
            for vobj in _object_chain(mux._context(up, VirtualObject)):
                out[vobj.id] = vobj
    return out


def _cancel_retry(inst: Instance) -> None:
    if inst.retry is not None:
        inst.retry.cancel()
        inst.retry = None


def _only_going(vobjs: list[VirtualObject], neighbor: Instance, going: set[Instance]) -> bool:
    """Whether every path instance under the neighbor instance `neighbor` is in `going`."""
    for vobj in vobjs:
        if vobj.parent is not None:
            inst = vobj.instances.get(neighbor.lower.binding.id)
            if inst is not None and inst.under is neighbor and inst not in going:
                return False
    return True


def _object_chain(ctx: Any) -> list[VirtualObject]:
    if isinstance(ctx, VirtualObject):
        return [ctx, *([ctx.parent] if ctx.parent is not None else [])]
    return []


def _aggregate(root: OffloadBlock, call: MuxCall, failed: dict[int, NdisStatus]) -> None:
    """Each neighbor and path block's status from its dependents (spec §3.2.4, §2.3): success
    when all were offloaded, partial when some were, and for a linker failure when none was. A
    new object offloaded to the MUX is offloaded whatever its dependents did; one that failed
    on every NIC it went to (`failed`) keeps that NIC's status, and its dependents fail."""
    block: OffloadBlock | None = root
    while block is not None:
        _aggregated(block, call, failed)
        block = block.next_block


# `_aggregate`'s two walks are functions of the module, not closures: a closure that calls
# itself is a reference cycle, which kept every initiate's call and blocks for the collector


def _fail_tree(block: OffloadBlock, status: NdisStatus, failed: dict[int, NdisStatus]) -> None:
    # a dependent the NIC never tried, or a neighbor's or path's not yet aggregated (the
    # walk stops at a failed object): it fails with its own NIC's status, or this one
    if block.status == PENDING or block.status in OFFLOADED_STATUSES:
        block.status = failed.get(id(block), status)
    for d in block.dependents():
        _fail_tree(d, S.NDIS_STATUS_FAILURE, failed)


def _aggregated(block: OffloadBlock, call: MuxCall, failed: dict[int, NdisStatus]) -> bool:
    """Set `block`'s status from its dependents'; whether it counts as offloaded."""
    if id(block) in failed:
        block.status = failed[id(block)]
        _fail_tree(block, block.status, failed)
        return False
    if block.kind is BlockKind.TCP:
        return block.status in OFFLOADED_STATUSES
    results = [_aggregated(d, call, failed) for d in block.dependents()]
    role = "new" if id(block) in call.new_vobjs else block.role()
    if role is BlockRole.PLACEHOLDER or not results or all(results):
        block.status = SUCCESS
    elif any(results) or role == "new":
        block.status = S.NDIS_STATUS_OFFLOAD_PARTIAL_SUCCESS
    else:
        block.status = S.NDIS_STATUS_FAILURE
    return block.status in OFFLOADED_STATUSES
