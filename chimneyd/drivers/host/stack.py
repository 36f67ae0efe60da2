"""The host TCP/IP stack: TCBs for real TCP connections, their socket API, the offload policy.

Spec §1.1 (the host's role). Not offloaded, the host carries a connection's bytes itself on its
socket; offloaded, it drives the target through NDIS. This class holds the host's tables and
routes: application requests (typed methods taking the connection id and a `done` callback,
which the asyncio shell turns into futures) and NDIS handlers each go to the module of their
spec chapter, with the `Tcb` as the unit of work.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, cast

import structlog

from chimneyd.ndis.blocks import (
    NeighborOffloadStateCached,
    OffloadBlock,
    PathOffloadStateCached,
    TcpOffloadStateCached,
)
from chimneyd.ndis.broker import Binding, Ndis
from chimneyd.ndis.handles import NdisOffloadHandle
from chimneyd.ndis.lifecycle import Phase
from chimneyd.ndis.nbl import NetBufferList, link_chain
from chimneyd.ndis.oid import NdisOidRequest, NdisTcpConnectionOffloadParameters
from chimneyd.ndis.status import IndicateOffloadEvent, NdisStatus, TcpOffloadEventType

from ..base import DriverLayer, Timers
from ..fin_wait_2 import FinWait2Timer
from ..queues import NO_ITEMS, grown
from ..wire import WirePort
from . import (
    adapter,
    disconnect,
    events,
    host_reasons,
    offload,
    receive,
    send,
    state_ops,
    terminate,
)
from .tcb import AppError, Done, HostObject, Tcb

log = structlog.get_logger("chimneyd.host")

P = ParamSpec("P")
Emit = Callable[[int, str, dict[str, Any]], None]
#: Phases during which a connection changes hands: requests wait until it is over.
_MOVING = frozenset({Phase.OFFLOADING, Phase.TERMINATING})
#: How many neighbors and paths the host keeps what an update gave them for, once no
#: connection holds them (`HostStack.updated_objects`): a real host's neighbor and path caches
#: are bounded too [EMU: the size].
OBJECT_CACHE_CAP = 1024


def request(
    defer: bool = True, behind_initiate: bool = True
) -> Callable[
    [Callable[Concatenate[HostStack, Tcb, P], None]],
    Callable[Concatenate[HostStack, int, P], None],
]:
    """An application request on a connection: look the TCB up (NOT_FOUND otherwise), hold the
    request while the connection changes hands (`defer`), or while an offload asked before it
    waits for its initiate (`behind_initiate`: sends go on in the host meanwhile), and answer
    it whatever happens — an exception inside the host answers it with INTERNAL and is logged
    with the connection."""

    def wrap(
        fn: Callable[Concatenate[HostStack, Tcb, P], None],
    ) -> Callable[Concatenate[HostStack, int, P], None]:
        name = fn.__name__  # the request, replayed by name: a closure naming itself is one
        # a compiled build cannot make

        # positional arguments only, as the inbox calls it (`Engine._request`, `post_host`): no
        # keyword dict made and unpacked on every request
        @functools.wraps(fn)
        def run(self: HostStack, conn_id: int, *args: Any) -> None:
            done: Done = args[-1]
            tcb = self.tcbs.get(conn_id)
            if tcb is None:
                done(None, AppError("NOT_FOUND", f"no connection {conn_id}"))
                return
            # it waits while the connection changes hands, or behind held ones (order); the
            # closure to replay it is made only then. The TCB is its own Lifecycle: its phase
            # read in place, not through the `lifecycle` property, on every request
            if defer and (
                tcb.phase in _MOVING
                or (tcb.deferred and not tcb.replaying)
                or (behind_initiate and tcb.initiate_queued)
            ):
                self.defer(tcb, lambda: getattr(self, name)(conn_id, *args))
                return
            try:
                fn(self, tcb, *args)  # type: ignore[call-arg]
            except Exception as exc:
                log.exception("host_request_failed", conn=conn_id, request=fn.__name__)
                done(None, AppError("INTERNAL", f"{fn.__name__} on connection {conn_id}: {exc!r}"))

        return cast("Callable[Concatenate[HostStack, int, P], None]", run)

    return wrap


class HostStack(DriverLayer):
    """The host TCP/IP stack (protocol edge only)."""

    kind = "host"
    has_protocol_edge = True

    def __init__(
        self,
        name: str,
        ndis: Ndis,
        timers: Timers,
        rx_buffer_bytes: int = 256 * 1024,
        capacity: int = 1 << 20,
        honor_optional_retrieve: bool = True,
        params: NdisTcpConnectionOffloadParameters | None = None,
        object_cache_cap: int = OBJECT_CACHE_CAP,
    ) -> None:
        self.rx_buffer_bytes = rx_buffer_bytes
        self.object_cache_cap = object_cache_cap
        self.honor_optional_retrieve = honor_optional_retrieve
        # the global parameters the host sets on every target (spec §8), and what it learned of
        # each binding: its capabilities (adapter.ASKED while a query is out) and how many
        # connections it carries offloaded
        self.params = params or NdisTcpConnectionOffloadParameters()
        self.capabilities: dict[int, Any] = {}
        self.offloads_on: dict[int, int] = {}
        # offered again at RESUME, by binding and connection (a connection that closes first
        # leaves: nothing says another RESUME will come to drop it)
        self.resume_offloads: dict[int, dict[int, Tcb]] = {}
        super().__init__(name, ndis, timers, capacity)
        self.tcbs: dict[int, Tcb] = {}
        self.objects: dict[Any, HostObject] = {}  # neighbors and paths by key
        # neighbors and paths whose terminate the host has sent, and invalidated or failed
        # neighbors only initiates still below keep (spec §3.1), by `id`: leaving, they no
        # longer stand for their key, which a fresh object may hold meanwhile (a new
        # connection does not wait for a terminate a MUX may hold back for ever, spec §5.5,
        # §9 item 8) [EMU]; each goes once its terminate has completed (`terminate`)
        self.leaving: dict[int, HostObject] = {}
        # the cached state `tcp.update` last gave a neighbor or path, by key: a later offload
        # of that object carries it (spec §3.4: ARP or ICMP learned it, not the offload). The
        # host's neighbor and path cache: it outlives the objects' offloads, so it is no table
        # a drain empties, but it is bounded (`remember_update`), least recently used first
        self.updated_objects: dict[Any, NeighborOffloadStateCached | PathOffloadStateCached] = {}
        # the next hop a next-hop change last moved each path to, by path key (spec §3.4 (b)):
        # a later offload of the path goes under that neighbor. The host's route cache, bounded
        # as the update cache is (`remember_next_hop`), least recently used first
        self.next_hops: dict[Any, bytes] = {}
        # next-hop changes waiting for a neighbor to be offloaded or to go (`state_ops`)
        self.moves_waiting: list[Callable[[], None]] = []
        self.pending_initiates: list[Tcb] = []
        # queued connections waiting for a path, neighbor or capabilities to settle, by it
        self.initiates_blocked: dict[Any, list[Tcb]] = {}
        self.pending_terminates: list[Tcb] = []
        self.paused: set[int] = set()  # binding ids under NDIS_STATUS_OFFLOAD_PAUSE
        # targets the host keeps its connections off, and why (spec §6.2)
        self.withheld: dict[str, host_reasons.Withheld] = {}
        self.emit: Emit = lambda conn_id, event, info: None
        # batched per inbox drain (perf-notes: batch at every hand-off)
        self.returns: dict[Binding, list[NetBufferList]] = {}
        self.send_batches: dict[Tcb, list[NetBufferList]] = {}
        # receive buffers whose bytes the application has read, kept to post again, by size
        # (`receive.spare`): a verified echo round then allocates and zeroes no new one
        self.rx_spares: dict[int, list[bytearray]] = {}
        self.rx_spare_bytes = 0
        self._default_cached: TcpOffloadStateCached | None = None
        # the FIN_WAIT_2 timers (spec §8) of the connections the host carries in FIN_WAIT_2,
        # by connection id (`disconnect.start_fin_wait_2`)
        self.fin_wait_2: dict[int, FinWait2Timer] = {}

    # ============================================================================================
    # the neighbor and path cache (what updates gave objects, spec §3.4)
    # ============================================================================================
    def remember_update(
        self, key: Any, cached: NeighborOffloadStateCached | PathOffloadStateCached
    ) -> None:
        """An update of object `key` succeeded: the next offload of it carries `cached`."""
        cache = self.updated_objects
        cache.pop(key, None)  # the newest entry now (insertion order is the LRU order)
        cache[key] = cached
        self.trim_object_cache()

    def remembered(self, key: Any) -> NeighborOffloadStateCached | PathOffloadStateCached | None:
        """What an update gave object `key`, for its offload now (a use: the newest entry)."""
        cache = self.updated_objects
        cached = cache.pop(key, None)
        if cached is not None:
            cache[key] = cached
        return cached

    def objects_let_go(self, keys: list[Any]) -> None:
        """The host holds the objects `keys` no more: what updates gave them was in use until
        now, so their entries are the most recently used ones (a real host's neighbor and path
        caches age an entry from its last use), and count against the cap from now on."""
        cache = self.updated_objects
        hops = self.next_hops
        for key in keys:
            cached = cache.pop(key, None)
            if cached is not None:
                cache[key] = cached
            # and where a path was moved (spec §3.4 (b)): its route was in use until now too
            hop = hops.pop(key, None)
            if hop is not None:
                hops[key] = hop
        self.trim_object_cache()
        self._trim(hops)

    def trim_object_cache(self) -> None:
        """Drop the least recently used entries of objects the host no longer holds past
        `object_cache_cap` of them. An object it still holds keeps its entry, and does not
        count: its connections' `tcp.info` shows it and its next offload carries it. Those
        are bounded by the connections and go with them (the host trims again as it lets objects
        go, `objects_let_go`), so once every connection has gone the cache is within its cap."""
        self._trim(self.updated_objects)

    def _trim(self, cache: dict[Any, Any]) -> None:
        """Drop the least recently used entries of `cache` (by object key, in LRU order) of
        objects the host no longer holds past `object_cache_cap` of them."""
        if len(cache) <= self.object_cache_cap:
            return
        held_keys = self.held_keys()
        held = sum(1 for key in held_keys if key in cache)
        excess = len(cache) - held - self.object_cache_cap
        if excess <= 0:
            return
        doomed: list[Any] = []
        for key in cache:  # oldest first
            if key not in held_keys:
                doomed.append(key)
                if len(doomed) == excess:
                    break
        for key in doomed:
            del cache[key]

    def remember_next_hop(self, path_key: Any, next_hop: bytes) -> None:
        """A next-hop change moved path `path_key` under the neighbor of `next_hop`."""
        hops = self.next_hops
        hops.pop(path_key, None)  # the newest entry now
        hops[path_key] = next_hop
        # as the update cache: the paths the host still holds do not count against the bound
        # (it trims again as it lets them go, `objects_let_go`)
        self._trim(hops)

    def next_hop_of(self, path_key: Any) -> bytes:
        """The next hop a new path `path_key` goes under: where the host last moved it."""
        hop = self.next_hops.get(path_key)
        if hop is None:
            return offload.DEFAULT_NEXT_HOP
        return hop

    def held_keys(self) -> set[Any] | dict[Any, HostObject]:
        """The keys of the objects the host holds: those leaving too (until their terminate
        completes an object is the host's, and its cache entry with it)."""
        if not self.leaving:
            return self.objects
        return {*self.objects, *(o.key for o in self.leaving.values())}

    def all_objects(self) -> list[HostObject]:
        """Every neighbor and path the host holds: those of their keys, then those leaving."""
        objects = list(self.objects.values())
        if self.leaving:
            objects.extend(self.leaving.values())
        return objects

    def objects_moving(self) -> bool:
        """Whether a next-hop change is under way (a path held for it, `state_ops`)."""
        return any(o.moving for o in self.all_objects())  # not an ARP or MTU update

    def objects_settled(self) -> None:
        """A neighbor was offloaded or went: the next-hop changes waiting for one look again."""
        if self.moves_waiting:
            waiting, self.moves_waiting = self.moves_waiting, []
            for retry in waiting:
                retry()

    def leftovers(self) -> dict[str, int]:
        """The host's own tables, empty once every connection is closed and every operation
        is over (spec §9 item 8): neighbor and path objects, connections waiting to go down or
        up, batched sends and receive returns, connections waiting for a RESUME, FIN_WAIT_2
        timers (spec §8). The update
        cache (`updated_objects`) outlives connections by design; what must be back to zero
        for it is its excess over `object_cache_cap` (of objects the host no longer holds)."""
        held = self.held_keys()
        return {
            "objects": len(self.objects),
            "objects_leaving": len(self.leaving),
            "pending_initiates": len(self.pending_initiates),
            "initiates_blocked": sum(len(q) for q in self.initiates_blocked.values()),
            "pending_terminates": len(self.pending_terminates),
            "send_batches": len(self.send_batches),
            "returns": len(self.returns),
            "resume_offloads": sum(len(w) for w in self.resume_offloads.values()),
            "moves_waiting": len(self.moves_waiting),
            "fin_wait_2_timers": len(self.fin_wait_2),
            "next_hops_over_cap": max(
                0,
                sum(1 for key in self.next_hops if key not in held) - self.object_cache_cap,
            ),
            "object_cache_over_cap": max(
                0,
                sum(1 for key in self.updated_objects if key not in held) - self.object_cache_cap,
            ),
        }

    def default_cached(self) -> TcpOffloadStateCached:
        """The cached TCP variables of a connection offloaded without an update (spec §2.2),
        one set shared by all of them. No layer changes a set in place: an update makes a new
        one (`dataclasses.replace`, spec §3.4) and the target keeps that. Ten thousand copies
        of the same eleven values were a 128-byte chunk of every offloaded connection."""
        cached = self._default_cached
        if cached is None or cached.InitialRcvWnd != self.rx_buffer_bytes:
            cached = TcpOffloadStateCached(InitialRcvWnd=self.rx_buffer_bytes)
            self._default_cached = cached
        return cached

    # ============================================================================================
    # connections and the batch
    # ============================================================================================
    def attach(self, conn_id: int, wire: WirePort, listener: int | None = None) -> None:
        """A new established connection (the runtime opened or accepted its socket)."""
        tcb = Tcb(conn_id, wire, self.ndis.new_trace(conn_id))
        tcb.listener = listener
        self.tcbs[conn_id] = tcb
        wire.set_home(self, tcb)  # the host owns the socket's bytes whenever no target does

    def after_batch(self) -> None:
        """Once per inbox drain: issue the batched sends, state operations and receive returns."""
        if self.send_batches:
            for tcb in list(self.send_batches):
                send.flush_sends(self, tcb)
        if self.pending_terminates:
            terminate.flush_terminates(self)
        if offload.initiates_due(self):
            offload.flush_initiates(self)
        if self.returns:
            returns, self.returns = self.returns, {}
            for binding, nbls in returns.items():
                head = link_chain(nbls)
                assert head is not None
                self.ndis.NdisOffloadTcpReceiveReturn(self, binding, head)

    @staticmethod
    def defer(tcb: Tcb, fn: Callable[[], None]) -> None:
        """Hold a request until the transition is over (`run_deferred`)."""
        tcb.deferred = grown(tcb.deferred, fn)

    def run_deferred(self, tcb: Tcb) -> None:
        """Replay requests that waited for a transition, in order, until one starts another.
        Each is replayed once per call: one that must wait again defers itself anew, to the
        next transition, not to this loop (an offload while the host's FIN waits for its ACK
        waits apart, in `Tcb.after_fin`)."""
        if tcb.replaying:
            return
        tcb.replaying = True
        pending, tcb.deferred = tcb.deferred, NO_ITEMS
        try:
            while pending and tcb.lifecycle.phase not in _MOVING and not tcb.initiate_queued:
                pending.pop(0)()
        finally:
            if pending:
                tcb.deferred = pending + tcb.deferred  # the earlier ones first
            tcb.replaying = False

    # ============================================================================================
    # application requests
    # ============================================================================================
    @request(behind_initiate=False)  # a second one is answered by the same initiate
    def app_offload(self, tcb: Tcb, target: str | None, done: Done) -> None:
        """The application's offload (`tcp.connect`, `tcp.offload`). A connection made with a
        `target` keeps it: a later `tcp.offload` places it on that NIC again [EMU]."""
        offload.request(self, tcb, target if target is not None else tcb.target, done, pin=True)

    @request(defer=False)
    def app_pin(self, tcb: Tcb, target: str, done: Done) -> None:
        """A connection made with a `target` and not offloaded at once: its later `tcp.offload`
        goes to that NIC [EMU]."""
        tcb.target = target
        done(None, None)

    @request(defer=False)
    def app_upload(self, tcb: Tcb, done: Done) -> None:
        if tcb.lifecycle.phase is Phase.OFFLOADING or tcb.initiate_queued:
            tcb.deferred = grown(tcb.deferred, lambda: terminate.app_upload(self, tcb, done))
            return
        terminate.app_upload(self, tcb, done)

    @request(behind_initiate=False)
    def app_send(self, tcb: Tcb, data: bytes, done: Done) -> None:
        send.app_send(self, tcb, data, done)

    @request(defer=False)
    def app_recv(self, tcb: Tcb, max_bytes: int, waitall: bool, done: Done) -> None:
        receive.app_recv(self, tcb, max_bytes, waitall, done)

    @request(defer=False)
    def app_cancel_recv(self, tcb: Tcb, waiting: Done, done: Done) -> None:
        receive.cancel_recv(self, tcb, waiting, done)

    @request()
    def app_disconnect(self, tcb: Tcb, abortive: bool, done: Done) -> None:
        disconnect.app_disconnect(self, tcb, abortive, done)

    @request(defer=False)
    def app_close(self, tcb: Tcb, done: Done) -> None:
        disconnect.app_close(self, tcb, done)

    def host_event(self, target: str, event: str, on: bool) -> None:
        """One of the host's own reasons to upload starts (`on`) or ends for `target`: a power
        change away from D0, media disconnect, capability disabled, NetEventPause (spec §6.2)."""
        host_reasons.event(self, target, event, on)

    @request()
    def app_query(self, tcb: Tcb, done: Done) -> None:
        state_ops.app_query(self, tcb, done)

    @request()
    def app_update(self, tcb: Tcb, changes: dict[str, int], done: Done) -> None:
        state_ops.app_update(self, tcb, changes, done)

    @request()
    def app_update_object(self, tcb: Tcb, what: str, changes: dict[str, Any], done: Done) -> None:
        state_ops.app_update_object(self, tcb, what, changes, done)

    @request(defer=False)
    def app_invalidate(self, tcb: Tcb, what: str, done: Done) -> None:
        state_ops.app_invalidate(self, tcb, what, done)

    # ============================================================================================
    # NDIS handlers (protocol edge)
    # ============================================================================================
    def ProtocolInitiateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        offload.complete(self, binding, root)

    def ProtocolTerminateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        terminate.complete(self, binding, root)

    def ProtocolQueryOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        state_ops.query_complete(self, root)

    def ProtocolUpdateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        state_ops.update_complete(self, root)

    def ProtocolInvalidateOffloadComplete(self, binding: Binding, root: OffloadBlock) -> None:
        state_ops.invalidate_complete(self, root)

    def ProtocolTcpOffloadSendComplete(self, binding: Binding, head: NetBufferList) -> None:
        send.complete(self, head)

    def ProtocolTcpOffloadReceiveComplete(self, binding: Binding, head: NetBufferList) -> None:
        receive.receive_complete(self, head)

    def ProtocolTcpOffloadDisconnectComplete(self, binding: Binding, nbl: NetBufferList) -> None:
        disconnect.complete(self, nbl)

    def ProtocolTcpOffloadForwardComplete(self, binding: Binding, head: NetBufferList) -> None:
        offload.forward_complete(self, head)

    def ProtocolTcpOffloadReceiveIndicate(
        self, handle: NdisOffloadHandle, nbl: NetBufferList, status: NdisStatus
    ) -> None:
        receive.receive_indicate(self, handle, nbl)

    def ProtocolTcpOffloadEvent(
        self, handle: NdisOffloadHandle, event_type: TcpOffloadEventType, info: int
    ) -> None:
        events.tcp_event(self, handle, event_type, info)

    def ProtocolStatusEx(self, binding: Binding, status: NdisStatus) -> None:
        adapter.status(self, binding, status)

    def ProtocolOidRequestComplete(self, binding: Binding, request: NdisOidRequest) -> None:
        adapter.oid_complete(self, binding, request)

    def ProtocolIndicateOffloadEvent(
        self, binding: Binding, block: OffloadBlock, code: IndicateOffloadEvent
    ) -> None:
        adapter.offload_event(self, block, code)

    def on_bound(self, binding: Binding) -> None:
        adapter.bound(self, binding)

    def ProtocolReceiveNetBufferLists(
        self, binding: Binding, wire: WirePort, offset: int, data: bytes, flags: int
    ) -> None:
        receive.ordinary_path(self, binding, wire.home_ctx, offset, data, flags)

    # -- the socket's events while the host owns it -----------------------------------------------
    def WireData(self, tcb: Tcb, offset: int, data: bytes) -> None:
        receive.wire_data(self, tcb, offset, data)

    def WireEof(self, tcb: Tcb, offset: int) -> None:
        receive.wire_eof(self, tcb, offset)

    def WireReset(self, tcb: Tcb, reason: str) -> None:
        receive.wire_reset(self, tcb)

    def WireTimeout(self, tcb: Tcb, reason: str) -> None:
        receive.wire_timeout(self, tcb)

    def WireAcked(self, tcb: Tcb, acked: int) -> None:
        send.wire_acked(self, tcb, acked)

    def fin_wait_2_expired(self, tcb: Tcb) -> None:
        disconnect.fin_wait_2_expired(self, tcb)

    # ============================================================================================
    # lookups and observability
    # ============================================================================================
    def binding_for(self, target: str | None) -> Binding | None:
        """The binding a connection offloaded to `target` goes down (None: the first)."""
        if not self.lower_bindings:
            return None
        if target is None:
            return self.lower_bindings[0]
        for binding in self.lower_bindings:
            if target in _names_below(binding.lower):
                return binding
        return None

    def tcb_of(self, nbl: NetBufferList) -> Tcb | None:
        trace = nbl.trace
        return self.tcbs.get(trace.conn_id) if trace is not None else None

    def ref(self, path: HostObject) -> None:
        path.refs += 1
        if path.refs == 1 and path.parent is not None:
            path.parent.refs += 1

    def unref(self, path: HostObject) -> None:
        path.refs -= 1
        if path.refs == 0 and path.parent is not None:
            path.parent.refs -= 1

    def path_names(self, tcb: Tcb) -> list[str]:
        """The layers the connection goes through, host first (its NIC last when offloaded)."""
        if tcb.lifecycle.phase in (Phase.IDLE, Phase.CLOSED):
            return [self.name]
        return [self.name, *(layer.name for layer in self.ndis.path_of(tcb.handle))]

    def describe_offload(self, tcb: Tcb) -> dict[str, Any]:
        return {"state": tcb.state, "path": self.path_names(tcb)}

    def describe(self) -> dict[str, Any]:
        return adapter.describe(self)


def _names_below(layer: Any) -> set[str]:
    names = {layer.name}
    for b in layer.lower_bindings:
        names |= _names_below(b.lower)
    return names
