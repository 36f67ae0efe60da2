"""Per-hop cost of the broker and the layer runtime against a bare `asyncio.Queue` hop.

Both move a message through HOPS hand-offs between tasks: the baseline on asyncio.Queue relay
tasks, the broker on real LayerTasks, either relaying with `Ndis.post` ("post") or running a
real NdisOffloadTcpSend → MiniportTcpOffloadSend → NdisTcpOffloadSendComplete →
ProtocolTcpOffloadSendComplete round trip ("io"). The daemon records every hop of a connection
in its trace, so the round trip is measured twice: with no trace (the broker alone) and with a
connection's HopTrace of the daemon's default depth on the handle and the NBLs (as the daemon
runs). Three load shapes: one message in flight, bursts of 64, and items carrying 64 (a list /
an NBL chain). Baseline and broker runs are interleaved, repeat by repeat.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from bench.baselines import BURST, HOPS, queue_hops
from bench.common import Section
from bench.context import Ctx
from bench.judge import interleaved
from chimneyd.ndis.broker import CLIENT_CHARACTERISTICS, PROVIDER_CHARACTERISTICS, Layer, Ndis
from chimneyd.ndis.handles import NdisOffloadHandle, next_object_id
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import NdisStatus
from chimneyd.ndis.trace import HopTrace
from chimneyd.runtime.layer_task import LayerTask, deliver

TRACE_DEPTH = 64  # the daemon's default `engine.trace_depth`
MODES = ("single", "burst", "batch")
LABELS = {"single": "1 in flight", "burst": f"burst of {BURST}", "batch": f"items of {BURST}"}
VARIANTS = {
    "post": "broker hop, Ndis.post → LayerTask",
    "io": "Send → SendComplete round trip, tracing off",
    "io_traced": "Send → SendComplete round trip, tracing on (as the daemon runs)",
}


# ================================================================================================
# broker hops
# ================================================================================================
class _Relay(Layer):
    """A trivial layer: its one handler posts the message on to the next layer, through NDIS."""

    kind = "bench-relay"
    has_miniport_edge = True
    has_protocol_edge = True

    def __init__(self, name: str, ndis: Ndis) -> None:
        super().__init__(name, ndis)
        self.next: _Relay | None = None
        self.arrive: Callable[[Any], None] = lambda msg: None

    def Relay(self, msg: Any) -> None:
        nxt = self.next
        if nxt is None:
            self.arrive(msg)
        else:
            self.ndis.post(nxt, nxt.Relay, (msg,))


class _Protocol(Layer):
    """A protocol edge that sends NBLs with `NdisOffloadTcpSend` and takes their completions."""

    kind = "bench-protocol"
    has_protocol_edge = True

    def __init__(self, name: str, ndis: Ndis) -> None:
        super().__init__(name, ndis)
        self.handle = NdisOffloadHandle(name, None)
        self.arrive: Callable[[int], None] = lambda n: None

    def Start(self, head: NetBufferList) -> None:
        self.ndis.NdisOffloadTcpSend(self, self.handle, head)

    def ProtocolTcpOffloadSendComplete(self, binding: Any, head: NetBufferList) -> None:
        n = 0
        for nbl in iter_chain(head):
            nbl.next = None
            n += 1
        self.arrive(n)


class _Miniport(Layer):
    """A miniport edge that completes every send at once with SUCCESS."""

    kind = "bench-miniport"
    has_miniport_edge = True

    def MiniportTcpOffloadSend(self, context: Any, head: NetBufferList) -> None:
        for nbl in iter_chain(head):
            nbl.status = NdisStatus.NDIS_STATUS_SUCCESS
        self.ndis.NdisTcpOffloadSendComplete(self, head)


def _unused(name: str) -> Callable[..., None]:
    def handler(self: Layer, *args: Any) -> None:
        raise NotImplementedError(f"{name} is not part of this benchmark")

    return handler


# NDIS binds only edges that registered every chimney handler (spec §1.3): the bench's minimal
# layers register the ones they never use as errors
for _cls, _sets in (
    (_Relay, {**PROVIDER_CHARACTERISTICS, **CLIENT_CHARACTERISTICS}),
    (_Protocol, CLIENT_CHARACTERISTICS),
    (_Miniport, PROVIDER_CHARACTERISTICS),
):
    for _names in _sets.values():
        for _name in _names:
            if not hasattr(_cls, _name):
                setattr(_cls, _name, _unused(_name))


async def broker_hops(n_messages: int, mode: str, variant: str) -> float:
    """ns per hop per message through HOPS broker deliveries on real LayerTasks.

    variant "post": HOPS-1 `_Relay` layers, each handler `Ndis.post`s to the next; the last hop
    wakes the driver through a future (the queue baseline's last hop is its `get`).
    variant "io" / "io_traced": the real I/O routing: driver → `_Protocol` (post), `NdisOffloadTcpSend` →
    `_Miniport.MiniportTcpOffloadSend`, `NdisTcpOffloadSendComplete` →
    `_Protocol.ProtocolTcpOffloadSendComplete` (source-binding stack, stats, chain relinking),
    future → driver: also HOPS hand-offs. NBLs are made once and reused: routing, not allocation.
    "io_traced" gives the handle and the NBLs a HopTrace, as the host does for a connection.
    mode as in `baselines.queue_hops`; "batch" is one message carrying 64 (a list / an NBL chain).
    """
    loop = asyncio.get_running_loop()
    ndis = Ndis(clock=time.monotonic_ns, deliver=deliver, trace_depth=0)
    tasks: list[LayerTask] = []
    state = SimpleNamespace(want=0, got=0, fut=None)

    def arrive_n(n: int) -> None:
        state.got += n
        if state.got >= state.want and state.fut is not None and not state.fut.done():
            state.fut.set_result(None)

    def arrive_msg(msg: Any) -> None:
        arrive_n(len(msg) if isinstance(msg, list) else 1)

    entry: Layer
    start: Callable[[Any], None]
    if variant == "post":
        relays = [_Relay(f"r{i}", ndis) for i in range(HOPS - 1)]
        for a, b in itertools.pairwise(relays):
            a.next = b
        relays[-1].arrive = arrive_msg
        entry = relays[0]
        layers: list[Layer] = list(relays)

        def start(msg: Any) -> None:
            ndis.post(entry, relays[0].Relay, (msg,))

        nbls: list[NetBufferList] = []
    else:
        upper = _Protocol("proto", ndis)
        lower = _Miniport("mini", ndis)
        binding = ndis.bind(upper, lower)
        upper.handle.miniport_offload_context = SimpleNamespace(id=next_object_id())
        upper.handle.ndis_reserved = binding
        upper.arrive = arrive_n
        layers = [upper, lower]
        nbls = [NetBufferList.for_data(b"x") for _ in range(BURST)]
        if variant == "io_traced":
            trace = HopTrace(1, TRACE_DEPTH, time.monotonic_ns)
            upper.handle.trace = trace
            for nbl in nbls:
                nbl.trace = trace

        def start(msg: Any) -> None:
            head = link_chain(msg) if isinstance(msg, list) else msg
            ndis.post(upper, upper.Start, (head,))

    for layer in layers:
        task = LayerTask(layer, loop)
        task.start()
        tasks.append(task)

    async def round_trip(msgs: list[Any], want: int) -> None:
        state.want, state.got = want, 0
        state.fut = loop.create_future()
        for m in msgs:
            start(m)
        await state.fut

    try:
        await asyncio.sleep(0)
        single = [nbls[0]] if nbls else [0]
        burst = nbls if nbls else list(range(BURST))
        batch = [nbls if nbls else list(range(BURST))]
        t0 = time.perf_counter()
        if mode == "single":
            for _ in range(n_messages):
                await round_trip(single, 1)
            n = n_messages
        elif mode == "burst":
            for _ in range(n_messages // BURST):
                await round_trip(burst, BURST)
            n = (n_messages // BURST) * BURST
        else:
            for _ in range(n_messages // BURST):
                await round_trip(batch, BURST)
            n = (n_messages // BURST) * BURST
        elapsed = time.perf_counter() - t0
    finally:
        for task in tasks:
            await task.stop()
    return elapsed / (n * HOPS) * 1e9


# ================================================================================================
# the section
# ================================================================================================
async def run(ctx: Ctx, sec: Section) -> None:
    sc = ctx.scale
    ctx.progress.begin("hops", len(MODES) * sc.repeats, "warming up")
    for mode in MODES:  # untimed: the first run in a process pays for what later ones reuse
        await queue_hops(BURST * 4, mode)
        for variant in VARIANTS:
            await broker_hops(BURST * 4, mode, variant)
    raw: dict[str, dict[str, list[float]]] = {}
    for mode in MODES:
        n = sc.hop_single if mode == "single" else sc.hop_burst
        ctx.progress.step(f"{LABELS[mode]}: asyncio.Queue, post, io, io traced")

        def runner(variant: str, mode: str = mode, n: int = n) -> Callable[[], Awaitable[float]]:
            if variant == "queue":
                return lambda: queue_hops(n, mode)
            return lambda: broker_hops(n, mode, variant)

        runs = {v: runner(v) for v in ("queue", *VARIANTS)}
        got = await interleaved(runs, sc.repeats, lambda _i: ctx.progress.advance())
        raw[mode] = got
        for variant, what in VARIANTS.items():
            sec.add(
                f"hops.{variant}.{mode}",
                f"{what}, {LABELS[mode]}",
                "ns/hop/msg",
                got[variant],
                got["queue"],
                f"asyncio.Queue, {LABELS[mode]}",
            )
    sec.raw["ns_per_hop"] = raw
    sec.notes.append(
        f"{HOPS} hand-offs per message on real LayerTasks; 'post' relays through 3 trivial "
        "Layers with Ndis.post (deliver → inbox → task drain); the round trip runs driver → "
        "protocol → miniport → protocol → driver between two minimal Layers, with no trace, "
        f"then with a HopTrace of depth {TRACE_DEPTH} on the handle and the NBLs (4 records per "
        f"call, as the daemon keeps). Baseline: {HOPS - 1} relay tasks on asyncio.Queue + the "
        f"driver's get. Items of {BURST} = one message carrying {BURST}. Lower is better."
    )
