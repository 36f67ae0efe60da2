"""The NDIS broker: bindings, handle → context resolution, and routing of every chimney call.

Layers never hold references to one another; they call the NDIS functions here, and NDIS puts
the matching handler call in the right layer's inbox (design §2). Routing follows spec §1.5:

* I/O down (`NdisOffloadTcpXxx(handle, nbl)`): the handle names the binding it was offloaded
  through (`NdisReserved`) and its `MiniportOffloadContext` slot holds the lower layer's context;
  NDIS calls `MiniportTcpOffloadXxx(context, nbl)` on the lower layer and pushes the binding on
  the NBL's source stack.
* Completions (`NdisTcpOffloadXxxComplete(nbl)`) carry no handle: each NBL pops the binding it came
  down through and goes to that binding's upper layer (spec §1.5 item 8 [EMU]).
* Indications carry the upper layer's handle; its binding names the upper layer.
* State operations go by binding; completions go back by the binding NDIS kept in the root block's
  `SourceHandle`.

The broker is sans-IO: it hands `(layer, handler, args)` to an injected `deliver` function; the
asyncio runtime puts them in layer inboxes, unit tests run them from a plain queue.

Longer than most modules on purpose: it is NDIS, and every chimney export routes through it as
through one ndis.sys; split, the down and up halves of one call's routing would part.

Longer than most modules because every chimney call is routed here and only here: one short
method per NDIS function of spec §1.5, the names layers call.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final, Protocol

from chimneyd.compiled import mypyc_attr

from .blocks import BlockKind, BlockRole, OffloadBlock, walk
from .errors import ChimneyProtocolError
from .handles import NdisOffloadHandle
from .nbl import NetBufferList, iter_chain
from .oid import NdisOidRequest as OidRequest
from .status import OFFLOADED_STATUSES, IndicateOffloadEvent, NdisStatus, TcpOffloadEventType
from .trace import HopTrace, LayerStats, pair_code

PENDING: Final = NdisStatus.NDIS_STATUS_PENDING
SUCCESS: Final = NdisStatus.NDIS_STATUS_SUCCESS

Deliver = Callable[["Layer", Callable[..., Any], tuple[Any, ...]], None]

#: The chimney handlers each edge registers with `NdisSetOptionalHandlers` (spec §1.3): a
#: miniport edge (target, IM upper edge) the provider sets, a protocol edge (host, IM lower edge)
#: the client sets. A binding whose edges lack one is refused (chimney would be blocked).
PROVIDER_CHARACTERISTICS: dict[str, tuple[str, ...]] = {
    "NDIS_PROVIDER_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS": (
        "MiniportInitiateOffload",
        "MiniportTerminateOffload",
        "MiniportUpdateOffload",
        "MiniportInvalidateOffload",
        "MiniportQueryOffload",
    ),
    "NDIS_PROVIDER_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS": (
        "MiniportTcpOffloadSend",
        "MiniportTcpOffloadReceive",
        "MiniportTcpOffloadDisconnect",
        "MiniportTcpOffloadForward",
        "MiniportTcpOffloadReceiveReturn",
    ),
}
CLIENT_CHARACTERISTICS: dict[str, tuple[str, ...]] = {
    "NDIS_CLIENT_CHIMNEY_OFFLOAD_GENERIC_CHARACTERISTICS": (
        "ProtocolInitiateOffloadComplete",
        "ProtocolTerminateOffloadComplete",
        "ProtocolUpdateOffloadComplete",
        "ProtocolInvalidateOffloadComplete",
        "ProtocolQueryOffloadComplete",
        "ProtocolIndicateOffloadEvent",
    ),
    "NDIS_CLIENT_CHIMNEY_OFFLOAD_TCP_CHARACTERISTICS": (
        "ProtocolTcpOffloadSendComplete",
        "ProtocolTcpOffloadReceiveComplete",
        "ProtocolTcpOffloadDisconnectComplete",
        "ProtocolTcpOffloadForwardComplete",
        "ProtocolTcpOffloadEvent",
        "ProtocolTcpOffloadReceiveIndicate",
    ),
}
#: The NDIS entry points `NdisMGetOffloadHandlers` hands a miniport edge (spec §1.3).
TCP_OFFLOAD_EVENT_HANDLERS = (
    "NdisTcpOffloadEventHandler",
    "NdisTcpOffloadReceiveHandler",
    "NdisTcpOffloadSendComplete",
    "NdisTcpOffloadReceiveComplete",
    "NdisTcpOffloadDisconnectComplete",
    "NdisTcpOffloadForwardComplete",
)
NdisTcpChimneyOffload = "NdisTcpChimneyOffload"


class NdisStandIn:
    """What a layer may talk to in place of the broker: an object that takes some calls itself
    and forwards the rest to the broker (the NIC's completion batch, drivers/target/batch.py).
    A layer's `ndis` is typed as either, so its calls stay checked against `Ndis`.

    Every NDIS call a layer makes has a forwarder here that runs `before_call` and then makes
    the broker's own call; the clock is the broker's, read as it is (reading it is no call).
    Forwarders, not a `__getattr__`: a class with one puts every attribute read of its objects,
    found or not, through the slot of `__getattr__`, which the interpreter does not specialize
    (~320 instructions a read under callgrind, README "Benchmarks"), and the NIC reads its
    `ndis` (the clock, the batch's `send` and `receive`) several times a round.
    tests/unit/test_ndis_stand_in.py keeps every call of `Ndis` forwarded, and the stand-in
    free of the slot."""

    def __init__(self, broker: Any) -> None:
        self.broker: Any = broker
        self.clock: Callable[[], int] = broker.clock

    def before_call(self) -> None:
        """What must happen before any call of the stand-in reaches the broker (nothing here)."""

    # -- topology (spec §1.3) and the runtime's hand-offs --------------------------------
    def NdisSetOptionalHandlers(self, *args: Any) -> NdisStatus:
        self.before_call()
        result: NdisStatus = self.broker.NdisSetOptionalHandlers(*args)
        return result

    def NdisMGetOffloadHandlers(self, *args: Any) -> Any:
        self.before_call()
        result: Any = self.broker.NdisMGetOffloadHandlers(*args)
        return result

    def path_of(self, *args: Any) -> list[Layer]:
        self.before_call()
        result: list[Layer] = self.broker.path_of(*args)
        return result

    def new_trace(self, *args: Any) -> HopTrace:
        self.before_call()
        result: HopTrace = self.broker.new_trace(*args)
        return result

    def post(self, *args: Any) -> None:
        self.before_call()
        self.broker.post(*args)

    # -- I/O down (spec §4) --------------------------------------------------------------
    def NdisOffloadTcpSend(self, *args: Any) -> NdisStatus:
        self.before_call()
        result: NdisStatus = self.broker.NdisOffloadTcpSend(*args)
        return result

    def NdisOffloadTcpReceive(self, *args: Any) -> NdisStatus:
        self.before_call()
        result: NdisStatus = self.broker.NdisOffloadTcpReceive(*args)
        return result

    def NdisOffloadTcpDisconnect(self, *args: Any) -> NdisStatus:
        self.before_call()
        result: NdisStatus = self.broker.NdisOffloadTcpDisconnect(*args)
        return result

    def NdisOffloadTcpForward(self, *args: Any) -> NdisStatus:
        self.before_call()
        result: NdisStatus = self.broker.NdisOffloadTcpForward(*args)
        return result

    def NdisOffloadTcpReceiveReturn(self, *args: Any) -> NdisStatus:
        self.before_call()
        result: NdisStatus = self.broker.NdisOffloadTcpReceiveReturn(*args)
        return result

    # -- I/O completions up (spec §4.0) --------------------------------------------------
    def NdisTcpOffloadSendComplete(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisTcpOffloadSendComplete(*args)

    def NdisTcpOffloadReceiveComplete(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisTcpOffloadReceiveComplete(*args)

    def NdisTcpOffloadDisconnectComplete(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisTcpOffloadDisconnectComplete(*args)

    def NdisTcpOffloadForwardComplete(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisTcpOffloadForwardComplete(*args)

    # -- indications up (spec §5.1, §4.3, §4.7, §5.4, §5.5) ------------------------------
    def NdisTcpOffloadEventHandler(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisTcpOffloadEventHandler(*args)

    def NdisTcpOffloadReceiveHandler(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisTcpOffloadReceiveHandler(*args)

    def NdisReturnReceiveIndication(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisReturnReceiveIndication(*args)

    def NdisMIndicateReceiveNetBufferLists(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisMIndicateReceiveNetBufferLists(*args)

    def NdisMIndicateStatusEx(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisMIndicateStatusEx(*args)

    def NdisMOffloadEventIndicate(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisMOffloadEventIndicate(*args)

    def NdisReturnOffloadEventIndicate(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisReturnOffloadEventIndicate(*args)

    # -- OID requests (spec §1.3, §8) ----------------------------------------------------
    def NdisOidRequest(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisOidRequest(*args)

    def NdisMOidRequestComplete(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisMOidRequestComplete(*args)

    # -- state operations (spec §3) ------------------------------------------------------
    def NdisInitiateOffload(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisInitiateOffload(*args)

    def NdisTerminateOffload(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisTerminateOffload(*args)

    def NdisUpdateOffload(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisUpdateOffload(*args)

    def NdisInvalidateOffload(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisInvalidateOffload(*args)

    def NdisQueryOffloadState(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisQueryOffloadState(*args)

    def NdisMInitiateOffloadComplete(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisMInitiateOffloadComplete(*args)

    def NdisMTerminateOffloadComplete(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisMTerminateOffloadComplete(*args)

    def NdisMUpdateOffloadComplete(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisMUpdateOffloadComplete(*args)

    def NdisMInvalidateOffloadComplete(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisMInvalidateOffloadComplete(*args)

    def NdisMQueryOffloadStateComplete(self, *args: Any) -> None:
        self.before_call()
        self.broker.NdisMQueryOffloadStateComplete(*args)


@mypyc_attr(allow_interpreted_subclasses=True)
class Layer:
    """Base of every driver layer: a name, its stats, and the NDIS instance it talks through.

    Subclasses implement the handlers of the edges they expose: `Miniport*` (miniport edge:
    targets and IM upper edges) and `Protocol*` (protocol edge: host and IM lower edges).
    """

    kind: ClassVar[str] = "layer"
    has_miniport_edge: ClassVar[bool] = False
    has_protocol_edge: ClassVar[bool] = False

    def __init__(self, name: str, ndis: Ndis) -> None:
        self.name = name
        # the broker, or (a batching NIC) a stand-in that forwards to it: drivers/target/batch.py
        self.ndis: Ndis | NdisStandIn = ndis
        self.stats = LayerStats()
        # the class's `has_miniport_edge` as a native field: the broker reads it for every NBL
        # it routes, and a `ClassVar` is a generic attribute read on the compiled build
        self.miniport_edge: bool = self.has_miniport_edge
        self.upper_bindings: list[Binding] = []  # bindings where this layer is the miniport
        self.lower_bindings: list[Binding] = []  # bindings where this layer is the protocol
        self.state = "running"
        self.inbox: Any = None  # the runtime's inbox for this layer
        # NDIS-private: the chimney handlers the layer registered, by name (spec §1.3)
        self.chimney_handlers: dict[str, Callable[..., Any]] = {}
        self.offload_event_handlers: Any = None  # what NdisMGetOffloadHandlers gave it
        ndis.register(self)
        self.set_options()

    def set_options(self) -> None:
        """`MiniportSetOptions` / `ProtocolSetOptions`: register the chimney handlers of the
        layer's edges, and (a miniport edge) get NDIS's offload event handlers (spec §1.3)."""
        sets = {}
        if self.has_miniport_edge:
            sets.update(PROVIDER_CHARACTERISTICS)
        if self.has_protocol_edge:
            sets.update(CLIENT_CHARACTERISTICS)
        for characteristics, names in sets.items():
            handlers = {n: fn for n in names if callable(fn := getattr(self, n, None))}
            self.ndis.NdisSetOptionalHandlers(self, characteristics, handlers)
        if self.has_miniport_edge:
            self.offload_event_handlers = self.ndis.NdisMGetOffloadHandlers(
                self, NdisTcpChimneyOffload
            )

    def on_bound(self, binding: Binding) -> None:
        """The layer's protocol edge opened `binding` (`NdisOpenAdapterEx` returned)."""

    def describe(self) -> dict[str, Any]:
        """What `stack.info` shows of the layer beyond its name, kind and bindings."""
        return {}

    # Emulator reply for the synchronous return of NdisTcpOffloadReceiveHandler (spec §4.3).
    def ReceiveIndicateReturned(
        self, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None:
        raise ChimneyProtocolError(f"{self.name} made no receive indication")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _handler(layer: Layer, name: str) -> Callable[..., Any]:
    """The layer's handler for an NDIS upcall/downcall: a registered chimney handler, or
    (ordinary NDIS handlers) its method; a missing one is a topology bug."""
    fn: Callable[..., Any] | None = layer.chimney_handlers.get(name) or getattr(layer, name, None)
    if fn is None:
        raise ChimneyProtocolError(f"{layer.name} ({layer.kind}) has no {name}")
    return fn


_BINDING_IDS = itertools.count(1)


class Binding:
    """An open binding: a protocol edge (`upper`) over a miniport edge (`lower`)."""

    __slots__ = ("codes", "id", "lower", "upper")

    def __init__(self, upper: Layer, lower: Layer) -> None:
        self.id = next(_BINDING_IDS)
        self.upper = upper
        self.lower = lower
        self.codes: dict[str, int] = {}  # first call of a traced pair -> its pair code

    def pair(self, call_a: str, call_b: str, down: bool, handle_both: bool = False) -> int:
        """The trace pair code (`pair_code`) of `call_a` on one edge of this binding and
        `call_b` on the other: down, the upper layer's call then the lower's handler; up, the
        reverse. Each `call_a` is made on a binding in one direction only."""
        code = self.codes.get(call_a)
        if code is None:
            a, b = (self.upper, self.lower) if down else (self.lower, self.upper)
            code = pair_code(a.name, call_a, b.name, call_b, handle_both)
            self.codes[call_a] = code
        return code

    def __repr__(self) -> str:
        return f"<Binding {self.id} {self.upper.name}->{self.lower.name}>"


class BrokerObserver(Protocol):
    """Hooks the invariant checker implements (observe/invariants.py)."""

    def on_io_down(
        self,
        lower: Layer,
        call: str,
        handle: NdisOffloadHandle,
        nbls: list[NetBufferList],
        caller: Layer | None = None,
    ) -> None: ...
    def on_io_complete(self, layer: Layer, call: str, nbls: list[NetBufferList]) -> None: ...
    def on_io_returned(self, layer: Layer, nbls: list[NetBufferList]) -> None: ...
    def on_indication(self, layer: Layer, call: str, handle: NdisOffloadHandle) -> None: ...
    def on_state_complete(self, layer: Layer, call: str, root: OffloadBlock) -> None: ...
    def on_state_down(self, binding: Binding, call: str, root: OffloadBlock) -> None: ...
    def on_receive_indication(
        self, layer: Layer, handle: NdisOffloadHandle, nbl: NetBufferList
    ) -> None: ...
    def on_indication_returned(
        self, lower: Layer, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None: ...
    def on_receive_return(self, binding: Binding, head: NetBufferList) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)
class SyncScheduler:
    """Runs deliveries from a FIFO, for sans-IO tests: `run()` until nothing is left."""

    def __init__(self) -> None:
        self.queue: deque[tuple[Layer, Callable[..., Any], tuple[Any, ...]]] = deque()

    def __call__(self, layer: Layer, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.queue.append((layer, fn, args))

    def run(self, limit: int = 1_000_000) -> int:
        n = 0
        while self.queue:
            _, fn, args = self.queue.popleft()
            fn(*args)
            n += 1
            if n >= limit:
                raise RuntimeError("scheduler did not go idle")
        return n


# Names of the completion handler for each I/O call, and the trace names (spec §7).
_IO: Final = {
    "Send": (
        "MiniportTcpOffloadSend",
        "ProtocolTcpOffloadSendComplete",
        "NdisTcpOffloadSendComplete",
    ),
    "Receive": (
        "MiniportTcpOffloadReceive",
        "ProtocolTcpOffloadReceiveComplete",
        "NdisTcpOffloadReceiveComplete",
    ),
    "Disconnect": (
        "MiniportTcpOffloadDisconnect",
        "ProtocolTcpOffloadDisconnectComplete",
        "NdisTcpOffloadDisconnectComplete",
    ),
    "Forward": (
        "MiniportTcpOffloadForward",
        "ProtocolTcpOffloadForwardComplete",
        "NdisTcpOffloadForwardComplete",
    ),
}

#: the NDIS call that sends each I/O call down: "NdisOffloadTcp" + its name, made once
_IO_DOWN: Final = {which: "NdisOffloadTcp" + which for which in _IO}

_STATE_OPS: Final = {
    "Initiate": (
        "NdisInitiateOffload",
        "MiniportInitiateOffload",
        "ProtocolInitiateOffloadComplete",
        "NdisMInitiateOffloadComplete",
    ),
    "Terminate": (
        "NdisTerminateOffload",
        "MiniportTerminateOffload",
        "ProtocolTerminateOffloadComplete",
        "NdisMTerminateOffloadComplete",
    ),
    "Update": (
        "NdisUpdateOffload",
        "MiniportUpdateOffload",
        "ProtocolUpdateOffloadComplete",
        "NdisMUpdateOffloadComplete",
    ),
    "Invalidate": (
        "NdisInvalidateOffload",
        "MiniportInvalidateOffload",
        "ProtocolInvalidateOffloadComplete",
        "NdisMInvalidateOffloadComplete",
    ),
    "Query": (
        "NdisQueryOffloadState",
        "MiniportQueryOffload",
        "ProtocolQueryOffloadComplete",
        "NdisMQueryOffloadStateComplete",
    ),
}


def _walk_key(block: OffloadBlock) -> int:
    """A TCP block's initiate walk: its TCP_OFFLOAD_STATE_CONST, the same at every layer
    (spec §1.6: an IM passes the state structures down as they are); the block itself
    without one."""
    const = block.const
    return id(const if const is not None else block)


class Ndis:
    """One NDIS instance: the layers, their bindings, and the routing of chimney calls."""

    def __init__(
        self,
        clock: Callable[[], int],
        deliver: Deliver | None = None,
        trace_depth: int = 64,
    ) -> None:
        self.clock = clock
        self.deliver: Deliver = deliver if deliver is not None else SyncScheduler()
        self.trace_depth = trace_depth
        self.layers: dict[str, Layer] = {}
        self.bindings: list[Binding] = []
        self.observer: BrokerObserver | None = None
        # [EMU] per initiate walk, by the connection's TCP_OFFLOAD_STATE_CONST, which goes
        # down the same at every layer (spec §1.6): the top layer's (the host's) handle, on
        # which the lowest failing layer is noted as the completions go up; and per tree the
        # top layer sent down, its walks. They go when that tree's completion reaches the top
        # layer, each walk whether its block came back in it or a layer below left it out
        # (lost below, spec §6.3): a block left out is never seen again
        self._walks: dict[int, NdisOffloadHandle] = {}
        self._walk_trees: dict[int, list[tuple[int, NdisOffloadHandle]]] = {}

    # -- topology -----------------------------------------------------------------------------
    def register(self, layer: Layer) -> None:
        if layer.name in self.layers:
            raise ValueError(f"a layer named {layer.name!r} exists")
        self.layers[layer.name] = layer

    def NdisSetOptionalHandlers(
        self, layer: Layer, characteristics: str, handlers: dict[str, Callable[..., Any]]
    ) -> NdisStatus:
        """Record one set of chimney handlers of `layer` (spec §1.3)."""
        if characteristics not in PROVIDER_CHARACTERISTICS | CLIENT_CHARACTERISTICS:
            return NdisStatus.NDIS_STATUS_NOT_SUPPORTED
        layer.chimney_handlers.update(handlers)
        return SUCCESS

    def NdisMGetOffloadHandlers(self, layer: Layer, chimney_type: str) -> Any:
        """NDIS's entry points for a miniport edge of `chimney_type` (spec §1.3); None (the
        `STATUS_NOT_SUPPORTED` of the reference) for any other type."""
        if chimney_type != NdisTcpChimneyOffload or not layer.has_miniport_edge:
            return None
        return {name: getattr(self, name) for name in TCP_OFFLOAD_EVENT_HANDLERS}

    def bind(self, upper: Layer, lower: Layer) -> Binding:
        """`NdisOpenAdapterEx`: the upper layer's protocol edge opens the lower's miniport edge.
        Both must have registered every chimney handler of their edge (spec §1.3: NDIS blocks
        chimney through a driver that did not); the error names what is missing."""
        if not (upper.has_protocol_edge and lower.has_miniport_edge):
            raise ChimneyProtocolError(f"cannot bind {upper.name} over {lower.name}")
        for layer, sets in ((lower, PROVIDER_CHARACTERISTICS), (upper, CLIENT_CHARACTERISTICS)):
            for characteristics, names in sets.items():
                missing = [n for n in names if n not in layer.chimney_handlers]
                if missing:
                    raise ChimneyProtocolError(
                        f"cannot bind {upper.name} over {lower.name}: {layer.name} registered no "
                        f"{', '.join(missing)} ({characteristics}, spec §1.3)"
                    )
        if lower.offload_event_handlers is None:
            raise ChimneyProtocolError(
                f"cannot bind {upper.name} over {lower.name}: {lower.name} has no offload event "
                "handlers (NdisMGetOffloadHandlers, spec §1.3)"
            )
        binding = Binding(upper, lower)
        self.bindings.append(binding)
        upper.lower_bindings.append(binding)
        lower.upper_bindings.append(binding)
        upper.on_bound(binding)
        return binding

    def path_of(self, handle: NdisOffloadHandle | None) -> list[Layer]:
        """The layers below a handle, top down, as NDIS routes its calls: the binding it was
        offloaded through, then the handle the layer below keeps for the same object (an IM
        offload entry's), and so on down to the layer that runs it. A MUX's choice of NIC shows
        here, and only here."""
        path: list[Layer] = []
        while handle is not None and handle.ndis_reserved is not None:
            binding: Binding = handle.ndis_reserved
            path.append(binding.lower)
            ctx = handle.miniport_offload_context
            handle = getattr(ctx, "handle", None) if ctx is not None else None
        return path

    def new_trace(self, conn_id: int) -> HopTrace:
        return HopTrace(conn_id, self.trace_depth, self.clock)

    def post(self, layer: Layer, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run `fn(*args)` in `layer`'s task (for wires and timers; the broker's own routing
        calls `deliver` itself, one call less per hand-off)."""
        self.deliver(layer, fn, args)

    # -- I/O down (spec §4, §1.5 item 6) --------------------------------------------------------
    def _io_down(
        self,
        caller: Layer,
        which: str,
        handle: NdisOffloadHandle,
        head: NetBufferList,
        extra: tuple[Any, ...] = (),
    ) -> NdisStatus:
        miniport_call = _IO[which][0]
        ndis_call = _IO_DOWN[which]
        context = handle.miniport_offload_context
        if context is None or handle.dead:
            context = handle.context()  # raises: not offloaded, or dead (spec §6.3)
        binding: Binding = handle.ndis_reserved
        lower = binding.lower
        trace: HopTrace | None = handle.trace  # typed: a native call, not a Python one
        ids: int | tuple[int, ...]
        if head.next is None:
            # one NBL, the common case (a host send or posted receive): no list of ids
            head.source_bindings.append(binding)
            n = 1
            ids = head.id
        else:
            # one walk by `Next` (nothing relinks the chain on its way down): the binding onto
            # each NBL's stack, and the NBL ids the trace lists (no list of the NBLs themselves)
            chain: list[int] = []
            nbl: NetBufferList | None = head
            while nbl is not None:
                nbl.source_bindings.append(binding)
                chain.append(nbl.id)
                nbl = nbl.next
            n = len(chain)
            ids = tuple(chain)
        if trace is not None:
            # one record per call; a chain's NBL ids are listed in it (one hop each when read)
            if caller is binding.upper:
                code = binding.codes.get(ndis_call) or binding.pair(ndis_call, miniport_call, True)
            else:
                code = pair_code(caller.name, ndis_call, lower.name, miniport_call)
            trace.record_pair(code, handle.id, context.id, ids)
        stats = caller.stats
        calls = stats.calls  # `LayerStats.count` written out: every NBL sent down passes here
        calls[ndis_call] = calls.get(ndis_call, 0) + n
        if not caller.miniport_edge:
            stats.outstanding_nbls += n  # the originator holds it until its completion
        lower.stats.outstanding_nbls += n
        if self.observer is not None:
            self.observer.on_io_down(lower, miniport_call, handle, list(iter_chain(head)), caller)
        handler = lower.chimney_handlers[miniport_call]
        self.deliver(lower, handler, (context, head, *extra) if extra else (context, head))
        return PENDING

    def NdisOffloadTcpSend(
        self, caller: Layer, handle: NdisOffloadHandle, nbl: NetBufferList
    ) -> NdisStatus:
        return self._io_down(caller, "Send", handle, nbl)

    def NdisOffloadTcpReceive(
        self, caller: Layer, handle: NdisOffloadHandle, nbl: NetBufferList
    ) -> NdisStatus:
        return self._io_down(caller, "Receive", handle, nbl)

    def NdisOffloadTcpDisconnect(
        self, caller: Layer, handle: NdisOffloadHandle, nbl: NetBufferList, flags: int
    ) -> NdisStatus:
        if nbl.next is not None:
            raise ChimneyProtocolError("a disconnect takes exactly one NBL (spec §4.5)")
        return self._io_down(caller, "Disconnect", handle, nbl, (flags,))

    def NdisOffloadTcpForward(
        self, caller: Layer, handle: NdisOffloadHandle, nbl: NetBufferList
    ) -> NdisStatus:
        return self._io_down(caller, "Forward", handle, nbl)

    def NdisOffloadTcpReceiveReturn(
        self, caller: Layer, binding: Binding, head: NetBufferList
    ) -> NdisStatus:
        """Return indicated NBLs down the binding (a binding handle, not an offload handle: spec §1.5 item 9)."""
        if binding.upper is not caller:
            raise ChimneyProtocolError(f"{caller.name} does not own binding {binding.id}")
        lower = binding.lower
        code = binding.pair("NdisOffloadTcpReceiveReturn", "MiniportTcpOffloadReceiveReturn", True)
        n = 0
        for nbl in iter_chain(head):
            n += 1
            trace: HopTrace | None = nbl.trace
            if trace is not None:
                trace.record_pair(code, 0, 0, nbl.id)
        caller.stats.count("NdisOffloadTcpReceiveReturn", n)
        if self.observer is not None:
            self.observer.on_receive_return(binding, head)
        if not caller.miniport_edge:
            caller.stats.outstanding_nbls -= n
        self.deliver(lower, _handler(lower, "MiniportTcpOffloadReceiveReturn"), (head,))
        return SUCCESS

    # -- I/O completions up (spec §4.0, §1.5 item 8) ----------------------------------------------
    def _io_complete(self, caller: Layer, which: str, head: NetBufferList) -> None:
        _, protocol_call, ndis_call = _IO[which]
        groups: list[tuple[Binding, list[NetBufferList]]] = []
        nbls: list[NetBufferList] = []
        binding: Binding | None = None
        # statuses are counted per run of one status (a chain's NBLs nearly always share
        # theirs), once the whole chain has passed the checks
        statuses: list[tuple[NdisStatus, int]] = []
        run_status: NdisStatus = head.status
        run = 0
        nbl: NetBufferList | None = head
        while nbl is not None:  # by `Next`, read before the NBL is relinked below
            nxt = nbl.next
            status = nbl.status
            if status == PENDING:
                raise ChimneyProtocolError(
                    f"{caller.name} completed NBL {nbl.id} with NDIS_STATUS_PENDING"
                )
            if status is not run_status:
                statuses.append((run_status, run))
                run_status, run = status, 0
            run += 1
            sources = nbl.source_bindings
            # the binding it came down last (typed: `source_bindings` holds `Any`)
            top: Binding | None = sources[-1] if sources else None
            if top is None or top.lower is not caller:
                raise ChimneyProtocolError(
                    f"{caller.name} completed NBL {nbl.id} that it does not own (twice, or never given)"
                )
            sources.pop()
            if top is binding:
                nbls.append(nbl)
            else:
                binding = top
                nbls = [nbl]
                groups.append((binding, nbls))
            nbl = nxt
        statuses.append((run_status, run))
        for status, n in statuses:
            caller.stats.count_status(ndis_call, status, n)
        # one binding's NBLs in the order they came: the chain as it is (its last `Next` is
        # None already). Several bindings' are relinked below, each into a chain of its own
        relink = len(groups) > 1
        for binding, nbls in groups:
            self._trace_completion(binding.pair(ndis_call, protocol_call, False), nbls)
            n = len(nbls)
            caller.stats.outstanding_nbls -= n
            upper = binding.upper
            if not upper.miniport_edge:
                upper.stats.outstanding_nbls -= n
            if self.observer is not None:
                self.observer.on_io_complete(caller, ndis_call, nbls)
            if relink:  # this binding's NBLs as one chain, in completion order
                if len(nbls) > 1:
                    for a, b in itertools.pairwise(nbls):
                        a.next = b
                nbls[-1].next = None
            self.deliver(upper, upper.chimney_handlers[protocol_call], (binding, nbls[0]))

    @staticmethod
    def _trace_completion(code: int, nbls: list[NetBufferList]) -> None:
        """One record (a pair: the completing call and the handler above) per call and
        connection when the NBLs share a status, else one per NBL."""
        first = nbls[0]
        trace: HopTrace | None = first.trace
        if len(nbls) == 1 or all([n.trace is trace and n.status == first.status for n in nbls]):
            if trace is not None:
                ids = first.id if len(nbls) == 1 else tuple([n.id for n in nbls])
                trace.record_pair(code, 0, 0, ids, first.status)
            return
        for nbl in nbls:
            trace = nbl.trace
            if trace is not None:
                trace.record_pair(code, 0, 0, nbl.id, nbl.status)

    def NdisTcpOffloadSendComplete(self, caller: Layer, nbl: NetBufferList) -> None:
        self._io_complete(caller, "Send", nbl)

    def NdisTcpOffloadReceiveComplete(self, caller: Layer, nbl: NetBufferList) -> None:
        self._io_complete(caller, "Receive", nbl)

    def NdisTcpOffloadDisconnectComplete(self, caller: Layer, nbl: NetBufferList) -> None:
        if nbl.next is not None:
            raise ChimneyProtocolError(
                "a disconnect completion carries only the disconnect NBL (spec §4.5)"
            )
        self._io_complete(caller, "Disconnect", nbl)

    def NdisTcpOffloadForwardComplete(self, caller: Layer, nbl: NetBufferList) -> None:
        self._io_complete(caller, "Forward", nbl)

    # -- indications up (spec §5.1, §4.3, §1.5 item 7) --------------------------------------------
    def _upper_of(
        self, caller: Layer, handle: NdisOffloadHandle, what: str
    ) -> tuple[Binding, Layer]:
        if handle.dead:
            raise ChimneyProtocolError(
                f"{caller.name}: {what} on dead handle {handle.id} (spec §9 item 8)"
            )
        binding: Binding | None = handle.ndis_reserved
        if binding is None or binding.lower is not caller:
            raise ChimneyProtocolError(f"{caller.name}: handle {handle.id} is not offloaded to it")
        return binding, binding.upper

    def NdisTcpOffloadEventHandler(
        self, caller: Layer, handle: NdisOffloadHandle, event_type: TcpOffloadEventType, info: int
    ) -> None:
        _, upper = self._upper_of(caller, handle, "event")
        trace = handle.trace
        if trace is not None:
            trace.record(
                caller.name, "NdisTcpOffloadEventHandler", handle.id, event=event_type.name
            )
            trace.record(upper.name, "ProtocolTcpOffloadEvent", handle.id, event=event_type.name)
        caller.stats.count(f"NdisTcpOffloadEventHandler/{event_type.name}")
        if self.observer is not None:
            self.observer.on_indication(caller, event_type.name, handle)
        self.deliver(upper, _handler(upper, "ProtocolTcpOffloadEvent"), (handle, event_type, info))

    def NdisTcpOffloadReceiveHandler(
        self,
        caller: Layer,
        handle: NdisOffloadHandle,
        nbl: NetBufferList,
        status: NdisStatus = SUCCESS,
    ) -> None:
        """Indicate one stand-alone NBL; the synchronous return arrives later as
        `caller.ReceiveIndicateReturned(nbl, status, bytes_consumed)` (spec §4.3 [EMU])."""
        if nbl.next is not None:
            raise ChimneyProtocolError(
                "a receive indication is a single, unchained NBL (spec §2.4)"
            )
        binding, upper = self._upper_of(caller, handle, "receive indication")
        nbl.source_bindings.append(binding)  # the route of the synchronous return
        trace: HopTrace | None = nbl.trace
        if trace is not None:
            code = binding.pair(
                "NdisTcpOffloadReceiveHandler", "ProtocolTcpOffloadReceiveIndicate", False, True
            )
            trace.record_pair(code, handle.id, 0, nbl.id)
        caller.stats.count("NdisTcpOffloadReceiveHandler")
        if self.observer is not None:
            self.observer.on_indication(caller, "NdisTcpOffloadReceiveHandler", handle)
            self.observer.on_receive_indication(caller, handle, nbl)
        self.deliver(
            upper, _handler(upper, "ProtocolTcpOffloadReceiveIndicate"), (handle, nbl, status)
        )

    def NdisReturnReceiveIndication(
        self, caller: Layer, nbl: NetBufferList, status: NdisStatus, bytes_consumed: int
    ) -> None:
        """The return value of `ProtocolTcpOffloadReceiveIndicate`, routed to the indicating layer."""
        if not nbl.source_bindings or nbl.source_bindings[-1].upper is not caller:
            raise ChimneyProtocolError(
                f"{caller.name} returned an indication it was not given (NBL {nbl.id})"
            )
        if status == SUCCESS:
            if bytes_consumed != nbl.data_length:
                raise ChimneyProtocolError("SUCCESS must consume the whole indication (spec §4.3)")
        elif status == NdisStatus.NDIS_STATUS_OFFLOAD_DATA_NOT_ACCEPTED:
            if bytes_consumed != 0:
                raise ChimneyProtocolError("NOT_ACCEPTED consumes nothing (spec §4.3)")
        elif status == NdisStatus.NDIS_STATUS_OFFLOAD_DATA_PARTIALLY_ACCEPTED:
            if not 0 < bytes_consumed < nbl.data_length:
                raise ChimneyProtocolError("PARTIALLY_ACCEPTED consumes 0 < n < length (spec §4.3)")
        else:
            raise ChimneyProtocolError(f"illegal receive-indication return {status.name}")
        binding: Binding = nbl.source_bindings.pop()  # typed: `source_bindings` holds `Any`
        lower = binding.lower
        if self.observer is not None:
            self.observer.on_indication_returned(lower, nbl, status, bytes_consumed)
        if status == SUCCESS and not caller.miniport_edge:
            caller.stats.outstanding_nbls += (
                1  # the host keeps it until NdisOffloadTcpReceiveReturn
            )
        if nbl.trace is not None:
            nbl.trace.record(
                lower.name, "NdisTcpOffloadReceiveHandler:return", 0, 0, nbl.id, status
            )
        self.deliver(lower, lower.ReceiveIndicateReturned, (nbl, status, bytes_consumed))

    def NdisMIndicateReceiveNetBufferLists(
        self, caller: Layer, wire: Any, offset: int, data: bytes, flags: int
    ) -> None:
        """The ordinary (non-chimney) receive path (spec §4.7): a segment of `wire` at stream
        `offset`, up every binding above the caller until a protocol consumes it."""
        caller.stats.count("NdisMIndicateReceiveNetBufferLists")
        for binding in caller.upper_bindings:
            upper = binding.upper
            handler = _handler(upper, "ProtocolReceiveNetBufferLists")
            self.deliver(upper, handler, (binding, wire, offset, data, flags))

    def NdisMIndicateStatusEx(
        self, caller: Layer, status: NdisStatus, traces: Iterable[HopTrace] = ()
    ) -> None:
        """Adapter status (PAUSE / UPLOAD_ALL / RESUME) to every protocol bound above (spec
        §5.5). It shows in the trace of each connection it affects (`traces`)."""
        caller.stats.count(f"NdisMIndicateStatusEx/{status.name}")
        uppers = [binding.upper for binding in caller.upper_bindings]
        for trace in traces:
            trace.record(caller.name, "NdisMIndicateStatusEx", event=status.name)
            for upper in uppers:
                trace.record(upper.name, "ProtocolStatusEx", event=status.name)
        for binding in caller.upper_bindings:
            upper = binding.upper
            self.deliver(upper, _handler(upper, "ProtocolStatusEx"), (binding, status))

    # -- NdisMOffloadEventIndicate (spec §5.4) ---------------------------------------------------
    def NdisMOffloadEventIndicate(
        self,
        caller: Layer,
        block: OffloadBlock,
        code: IndicateOffloadEvent,
        trace: HopTrace | None = None,
    ) -> None:
        """A neighbor event (a single `NeighborOffloadState` block) up the binding its object
        was offloaded through; the upper layer's answer (the HRD it writes into the block's
        cached state) comes back as `caller.OffloadEventIndicateReturned(block)` [EMU]."""
        handle = block.ndis_offload_handle
        if block.kind is not BlockKind.NEIGHBOR or handle is None or handle.dead:
            raise ChimneyProtocolError(f"{caller.name}: an offload event names a live neighbor")
        binding: Binding | None = handle.ndis_reserved
        if binding is None or binding.lower is not caller:
            raise ChimneyProtocolError(f"{caller.name}: handle {handle.id} is not offloaded to it")
        block.offload_handle = handle  # MOBL -> POBL (spec §1.6)
        block.source_handle = binding  # the route of the answer
        block.scratch = trace  # [EMU] the connection that raised it, for the layers above
        upper = binding.upper
        if trace is not None:
            trace.record(caller.name, "NdisMOffloadEventIndicate", handle.id, event=code.name)
            trace.record(upper.name, "ProtocolIndicateOffloadEvent", handle.id, event=code.name)
        caller.stats.count(f"NdisMOffloadEventIndicate/{code.name}")
        if self.observer is not None:
            self.observer.on_indication(caller, f"NdisMOffloadEventIndicate/{code.name}", handle)
        handler = upper.chimney_handlers["ProtocolIndicateOffloadEvent"]
        self.deliver(upper, handler, (binding, block, code))

    def NdisReturnOffloadEventIndicate(self, caller: Layer, block: OffloadBlock) -> None:
        """The synchronous return of `ProtocolIndicateOffloadEvent`, to the indicating layer."""
        binding: Binding | None = block.source_handle
        if binding is None or binding.upper is not caller:
            raise ChimneyProtocolError(f"{caller.name} answered an offload event it was not given")
        block.source_handle = None
        block.scratch = None
        lower = binding.lower
        self.deliver(lower, _handler(lower, "OffloadEventIndicateReturned"), (block,))

    # -- OID requests (spec §1.3, §8) ------------------------------------------------------------
    def NdisOidRequest(self, caller: Layer, binding: Binding, request: OidRequest) -> None:
        """A query or set down `binding`; completed later by `NdisMOidRequestComplete`."""
        if binding.upper is not caller:
            raise ChimneyProtocolError(f"{caller.name} does not own binding {binding.id}")
        request.source_bindings.append(binding)
        caller.stats.count(f"NdisOidRequest/{request.oid.value}")
        lower = binding.lower
        self.deliver(lower, _handler(lower, "MiniportOidRequest"), (request,))

    def NdisMOidRequestComplete(self, caller: Layer, request: OidRequest) -> None:
        if not request.source_bindings or request.source_bindings[-1].lower is not caller:
            raise ChimneyProtocolError(f"{caller.name} completed an OID request it was not given")
        if request.status == PENDING:
            raise ChimneyProtocolError(f"{caller.name} completed an OID request with PENDING")
        binding = request.source_bindings.pop()
        upper = binding.upper
        self.deliver(upper, _handler(upper, "ProtocolOidRequestComplete"), (binding, request))

    # -- state operations (spec §3) -------------------------------------------------------------
    def _state_down(self, caller: Layer, op: str, binding: Binding, root: OffloadBlock) -> None:
        ndis_call, miniport_call, _, _ = _STATE_OPS[op]
        if binding.upper is not caller:
            raise ChimneyProtocolError(f"{caller.name} does not own binding {binding.id}")
        if root.source_handle is not None:
            raise ChimneyProtocolError(f"{caller.name}: block list already in flight ({ndis_call})")
        if self.observer is not None:
            self.observer.on_state_down(binding, ndis_call, root)
        root.source_handle = binding  # NDIS-private: the route of the completion
        top = not caller.has_miniport_edge  # an initiate walk starts here (the host)
        walks: list[tuple[int, NdisOffloadHandle]] = []
        # POBL -> MOBL in place (spec §1.6): the slot of each referenced object's handle.
        for block in walk(root):
            handle = block.offload_handle
            block.miniport_offload_context = handle
            block.ndis_offload_handle = handle
            if handle is None:
                continue
            if op == "Initiate" and block.role() is BlockRole.NEW_OFFLOAD:
                if handle.ndis_reserved is not None:
                    raise ChimneyProtocolError(f"handle {handle.id} is already offloaded")
                handle.ndis_reserved = binding
            elif handle.ndis_reserved is not binding:
                raise ChimneyProtocolError(
                    f"handle {handle.id} was not offloaded through binding {binding.id}"
                )
            if handle.trace is not None:
                ctx = handle.miniport_offload_context
                handle.trace.record(caller.name, ndis_call, handle.id)
                handle.trace.record(
                    binding.lower.name, miniport_call, 0, ctx.id if ctx is not None else 0
                )
            # outstanding send data travels down with the tree (spec §3.2.5)
            if block.kind is BlockKind.TCP and op == "Initiate":
                handle.failed_at = None  # this initiate's completion will say
                key = _walk_key(block)
                if top:
                    walks.append((key, handle))
                else:
                    walk_top = self._walks.get(key)
                    if walk_top is not None:
                        walk_top.failed_at = None  # gone down again: its completion will say
                chain = list(iter_chain(block.net_buffer_list_chain))
                for nbl in chain:
                    nbl.source_bindings.append(binding)
                    binding.lower.stats.outstanding_nbls += 1
                if chain and self.observer is not None:
                    self.observer.on_io_down(
                        binding.lower, "MiniportTcpOffloadSend", handle, chain, caller
                    )
        if walks:  # once the whole tree checked out: a tree NDIS refused starts no walk
            for key, handle in walks:
                self._walks[key] = handle
            self._walk_trees[id(root)] = walks
        caller.stats.count(ndis_call)
        lower = binding.lower
        self.deliver(lower, lower.chimney_handlers[miniport_call], (root,))

    def _state_complete(self, caller: Layer, op: str, root: OffloadBlock) -> None:
        _, _, protocol_call, ndis_call = _STATE_OPS[op]
        binding: Binding | None = root.source_handle
        if binding is None or binding.lower is not caller:
            raise ChimneyProtocolError(
                f"{caller.name}: {ndis_call} of a block list it was not given"
            )
        root.source_handle = None
        upper = binding.upper
        for block in walk(root):
            if block.status == PENDING:
                raise ChimneyProtocolError(
                    f"{caller.name}: {ndis_call} left a block without Status (spec §3.1)"
                )
            handle = block.offload_handle
            if handle is None:
                continue
            if handle.trace is not None:
                handle.trace.record(caller.name, ndis_call, 0, 0, 0, block.status)
                handle.trace.record(upper.name, protocol_call, handle.id, 0, 0, block.status)
            if op == "Initiate":
                offloaded = block.status in OFFLOADED_STATUSES
                if block.kind is BlockKind.TCP and not offloaded:
                    # the lowest layer that failed the connection: the layers above pass its
                    # status up (spec §3.2.4); `tcp.info`'s `offload_refused` names it. It is
                    # noted on the walk's top handle as soon as it fails, for a layer above
                    # may leave the block out (spec §6.3), and on each layer's handle as the
                    # completion passes; a layer sees only its own (spec §2)
                    walk_top = self._walks.get(_walk_key(block))
                    if walk_top is None:  # no walk from the top: the completing layer
                        handle.failed_at = caller.name
                    else:
                        if walk_top.failed_at is None:
                            walk_top.failed_at = caller.name
                        handle.failed_at = walk_top.failed_at
                if (
                    handle.ndis_reserved is binding
                    and not offloaded
                    and handle.miniport_offload_context is None
                ):
                    handle.ndis_reserved = None  # never offloaded: NDIS forgets the binding
                if block.kind is BlockKind.TCP and not offloaded:
                    # a failed connection's send data goes back untouched (spec §3.2.4)
                    back = list(iter_chain(block.net_buffer_list_chain))
                    for nbl in back:
                        if nbl.source_bindings and nbl.source_bindings[-1] is binding:
                            nbl.source_bindings.pop()
                            caller.stats.outstanding_nbls -= 1
                    if back and self.observer is not None:
                        self.observer.on_io_returned(caller, back)
            elif op == "Terminate":
                if block.status == SUCCESS:
                    handle.dead = True  # dead at every layer once terminated (spec §3.9)
                if block.kind is BlockKind.TCP:
                    for nbl in iter_chain(block.net_buffer_list_chain):
                        if not nbl.source_bindings or nbl.source_bindings[-1] is not binding:
                            raise ChimneyProtocolError(
                                f"terminate returned NBL {nbl.id} not sent through {binding}"
                            )
                        nbl.source_bindings.pop()
                        caller.stats.outstanding_nbls -= 1
                    if self.observer is not None and block.net_buffer_list_chain is not None:
                        self.observer.on_io_returned(
                            caller, list(iter_chain(block.net_buffer_list_chain))
                        )
        if op == "Initiate" and not upper.has_miniport_edge:
            # the walks of the tree the top sent down are over: its blocks all came back
            # here, or a layer below left some out (lost below), which never come back
            for key, walk_top in self._walk_trees.pop(id(root), ()):
                if self._walks.get(key) is walk_top:
                    del self._walks[key]
        caller.stats.count(ndis_call)
        if self.observer is not None:
            self.observer.on_state_complete(caller, ndis_call, root)
        self.deliver(upper, upper.chimney_handlers[protocol_call], (binding, root))

    def NdisInitiateOffload(self, caller: Layer, binding: Binding, root: OffloadBlock) -> None:
        self._state_down(caller, "Initiate", binding, root)

    def NdisTerminateOffload(self, caller: Layer, binding: Binding, root: OffloadBlock) -> None:
        self._state_down(caller, "Terminate", binding, root)

    def NdisUpdateOffload(self, caller: Layer, binding: Binding, root: OffloadBlock) -> None:
        self._state_down(caller, "Update", binding, root)

    def NdisInvalidateOffload(self, caller: Layer, binding: Binding, root: OffloadBlock) -> None:
        self._state_down(caller, "Invalidate", binding, root)

    def NdisQueryOffloadState(self, caller: Layer, binding: Binding, root: OffloadBlock) -> None:
        self._state_down(caller, "Query", binding, root)

    def NdisMInitiateOffloadComplete(self, caller: Layer, root: OffloadBlock) -> None:
        self._state_complete(caller, "Initiate", root)

    def NdisMTerminateOffloadComplete(self, caller: Layer, root: OffloadBlock) -> None:
        self._state_complete(caller, "Terminate", root)

    def NdisMUpdateOffloadComplete(self, caller: Layer, root: OffloadBlock) -> None:
        self._state_complete(caller, "Update", root)

    def NdisMInvalidateOffloadComplete(self, caller: Layer, root: OffloadBlock) -> None:
        self._state_complete(caller, "Invalidate", root)

    def NdisMQueryOffloadStateComplete(self, caller: Layer, root: OffloadBlock) -> None:
        self._state_complete(caller, "Query", root)

    # -- observability ------------------------------------------------------------------------
    def walks_in_flight(self) -> int:
        """The initiate walks NDIS keeps a failing layer for (`_state_complete`): 0 once
        every initiate's completion reached the top layer (spec §9 item 10)."""
        return len(self._walks) + len(self._walk_trees)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {name: layer.stats.as_map() for name, layer in self.layers.items()}
