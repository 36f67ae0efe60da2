"""The engine against its baselines, measured in the same run:

* per-hop cost of the broker + layer runtime against a bare `asyncio.Queue` hop;
* bulk offloaded send (64 KiB sends, a window in flight) through host → IM → NIC to a sink in
  its own process, against raw uvloop loopback to the same kind of sink;
* throughput and p99 send latency with 0, 1, 2 and 4 IM layers;
* memory per idle offloaded connection against a bare uvloop server (bench/memory.py).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from bench.baselines import BURST, HOPS, raw_send
from bench.common import PAYLOAD, Figure, Section, child, mbps, percentile, ports_of
from bench.peers import SINK_HEADER
from chimneyd.engine import EngineSettings, LayerSpec, start_engine
from chimneyd.ndis.broker import Layer, Ndis
from chimneyd.ndis.handles import NdisOffloadHandle, next_object_id
from chimneyd.ndis.nbl import NetBufferList, iter_chain, link_chain
from chimneyd.ndis.status import NdisStatus
from chimneyd.runtime.layer_task import LayerTask, deliver

WINDOW = 32  # sends in flight, as a host keeps its send backlog
IM_CURVE = (0, 1, 2, 4)


def topology(n_im: int) -> tuple[LayerSpec, ...]:
    """tcpip → n_im pass-through IMs → nic0 (n_im = 1 is the default topology)."""
    names = ["tcpip", *[f"im{i}" for i in range(n_im)], "nic0"]
    layers = [LayerSpec("tcpip", "host", (names[1],))]
    layers += [LayerSpec(f"im{i}", "passthrough", (names[i + 2],)) for i in range(n_im)]
    layers.append(LayerSpec("nic0", "target"))
    return tuple(layers)


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


async def broker_hops(n_messages: int, mode: str, variant: str) -> float:
    """ns per hop per message through HOPS broker deliveries on real LayerTasks.

    variant "post": HOPS-1 `_Relay` layers, each handler `Ndis.post`s to the next; the last hop
    wakes the driver through a future (the queue baseline's last hop is its `get`).
    variant "io": the real I/O routing: driver → `_Protocol` (post), `NdisOffloadTcpSend` →
    `_Miniport.MiniportTcpOffloadSend`, `NdisTcpOffloadSendComplete` →
    `_Protocol.ProtocolTcpOffloadSendComplete` (source-binding stack, stats, chain relinking),
    future → driver: also HOPS hand-offs. NBLs are made once and reused: routing, not allocation.
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
# bulk offloaded send
# ================================================================================================
async def engine_bulk(
    n_im: int, total: int, sink_port: int, window: int = WINDOW
) -> dict[str, float]:
    """Send `total` bytes in 64 KiB `Engine.send`s, `window` in flight, through `n_im` IMs to
    the sink; the clock stops when the sink confirms every byte. Returns MB/s, latencies, and
    broker messages per send (from the layer tasks' counters)."""
    engine = await start_engine(EngineSettings(), topology(n_im))
    try:
        conn = await engine.connect("127.0.0.1", sink_port, offload=True)
        state = engine.conn_info(conn)["state"]
        if state != "offloaded":
            raise RuntimeError(f"connection is {state}, not offloaded")
        payload = bytes(PAYLOAD)
        n_sends = (total - SINK_HEADER.size) // PAYLOAD
        total = SINK_HEADER.size + n_sends * PAYLOAD
        await engine.send(conn, SINK_HEADER.pack(total))
        before = dict(engine.stats()["engine"]["messages"])
        latencies: list[float] = []
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        issued = 0
        outstanding = 0

        def issue() -> None:
            nonlocal issued, outstanding
            issued += 1
            outstanding += 1
            t = time.perf_counter()
            fut = asyncio.ensure_future(engine.send(conn, payload))
            fut.add_done_callback(lambda f, t=t: done(f, t))  # type: ignore[misc]

        def done(fut: asyncio.Future[int], t: float) -> None:
            nonlocal outstanding
            outstanding -= 1
            latencies.append(time.perf_counter() - t)
            if fut.exception() is not None and not finished.done():
                finished.set_exception(fut.exception())  # type: ignore[arg-type]
                return
            if issued < n_sends:
                issue()
            elif outstanding == 0 and not finished.done():
                finished.set_result(None)

        t0 = time.perf_counter()
        for _ in range(min(window, n_sends)):
            issue()
        await asyncio.wait_for(finished, 60.0)
        reply = await engine.recv(conn, 1 + SINK_HEADER.size, 10.0)
        elapsed = time.perf_counter() - t0
        if reply[:1] != b"D":
            raise RuntimeError(f"sink answered {reply!r}")
        after = engine.stats()["engine"]["messages"]
        messages = sum(after[k] - before.get(k, 0) for k in after)
        await engine.close(conn)
        return {
            "mbps": mbps(total, elapsed),
            "seconds": elapsed,
            "bytes": total,
            "sends": n_sends,
            "p50_ms": percentile(latencies, 50) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3,
            "messages_per_send": messages / n_sends,
        }
    finally:
        await engine.shutdown(2.0)


async def trace_hops(sink_port: int) -> int:
    """Hops one lone send's NBL records in the trace (default topology: 4 down, 4 up)."""
    engine = await start_engine(EngineSettings(), topology(1))
    try:
        conn = await engine.connect("127.0.0.1", sink_port, offload=True)
        before = len(engine.trace(conn, None))
        await engine.send(conn, SINK_HEADER.pack(SINK_HEADER.size + 4) + b"1234")
        await engine.recv(conn, 1 + SINK_HEADER.size, 5.0)
        hops = engine.trace(conn, None)[before:]
        await engine.close(conn)
        sends = [h for h in hops if h["call"] == "NdisOffloadTcpSend"]
        nbl = sends[0]["nbl"] if sends else None
        return sum(1 for h in hops if nbl is not None and h["nbl"] == nbl)
    finally:
        await engine.shutdown(2.0)


def bulk_total(quick: bool) -> int:
    return (48 if quick else 384) * 1024 * 1024


# ================================================================================================
# the section
# ================================================================================================
async def run(quick: bool, base: dict[str, Any]) -> Section:
    sec = Section("engine")
    # -- per-hop ----------------------------------------------------------------------------------
    n_single = 5_000 if quick else 40_000
    n_burst = 64_000 if quick else 512_000
    hops: dict[str, dict[str, float]] = {}
    for variant in ("post", "io"):
        hops[variant] = {
            "single": min([await broker_hops(n_single, "single", variant) for _ in range(3)]),
            "burst": min([await broker_hops(n_burst, "burst", variant) for _ in range(3)]),
            "batch": min([await broker_hops(n_burst, "batch", variant) for _ in range(3)]),
        }
    sec.raw["broker_hop_ns"] = hops
    q = base["queue_hop_ns"]
    labels = {"single": "1 in flight", "burst": f"burst of {BURST}", "batch": f"batch of {BURST}"}
    for variant, what in (("post", "Ndis.post → LayerTask"), ("io", "NDIS Send → SendComplete")):
        for mode in ("single", "burst", "batch"):
            ratio = hops[variant][mode] / q[mode]
            sec.figures.append(
                Figure(
                    "engine",
                    f"broker hop, {what}, {labels[mode]}",
                    hops[variant][mode],
                    "ns/hop/msg",
                    q[mode],
                    f"asyncio.Queue, {labels[mode]}",
                    ratio,
                    "< 3x" if mode != "batch" else "",
                    ratio < 3.0 if mode != "batch" else None,
                )
            )
    sec.notes.append(
        f"hop method: {HOPS} hand-offs per message on real LayerTasks; 'post' relays a message "
        "through 3 trivial Layers with Ndis.post (deliver → inbox → task drain) and wakes the "
        "driver with a future; 'io' runs a real NdisOffloadTcpSend → MiniportTcpOffloadSend → "
        "NdisTcpOffloadSendComplete → ProtocolTcpOffloadSendComplete round trip between two "
        "minimal Layers (driver → protocol → miniport → protocol → driver). The queue baseline "
        f"is {HOPS - 1} relay tasks on asyncio.Queue + the driver's get. Batch = one message "
        f"carrying {BURST} (a list / an NBL chain). Best of 3 each."
    )

    # -- bulk and the IM curve ------------------------------------------------------------------
    total = bulk_total(quick)
    repeat = 1 if quick else 3
    raw_runs: list[float] = []
    curve: dict[int, list[dict[str, float]]] = {n: [] for n in IM_CURVE}
    with child("-m", "bench.peers", "sink") as sink:
        port = ports_of(sink.expect("ready "))[0]
        sec.raw["trace_hops_per_send"] = await trace_hops(port)
        # interleave raw and emulated runs so a drift of the machine hits both alike
        for _ in range(repeat):
            raw_runs.append(mbps(total, await raw_send(port, total)))
            for n_im in IM_CURVE:
                curve[n_im].append(await engine_bulk(n_im, total, port))
    raw_best = max(raw_runs)
    best = {n: max(runs, key=lambda r: r["mbps"]) for n, runs in curve.items()}
    sec.raw["bulk"] = {
        "raw_mbps_runs": raw_runs,
        "window": WINDOW,
        "bytes_per_run": total,
        "curve": {str(n): runs for n, runs in curve.items()},
    }
    one = best[1]
    sec.figures.append(
        Figure(
            "engine",
            f"bulk offloaded send, 1 IM, 64 KiB sends, {WINDOW} in flight",
            one["mbps"],
            "MB/s",
            raw_best,
            "raw uvloop loopback, same sink",
            one["mbps"] / raw_best,
            ">= 0.5",
            one["mbps"] / raw_best >= 0.5,
            f"p50 {one['p50_ms']:.2f} ms, p99 {one['p99_ms']:.2f} ms; "
            f"{one['messages_per_send']:.2f} layer-task messages per send",
        )
    )
    zero = best[0]
    for n_im in IM_CURVE:
        r = best[n_im]
        sec.figures.append(
            Figure(
                "engine",
                f"IM curve: {n_im} IM layer{'s' if n_im != 1 else ''}",
                r["mbps"],
                "MB/s",
                zero["mbps"],
                "0 IM layers",
                r["mbps"] / zero["mbps"],
                note=f"p99 send {r['p99_ms']:.2f} ms ({r['p99_ms'] / zero['p99_ms']:.2f}x of 0 IM); "
                f"vs raw {r['mbps'] / raw_best:.2f}",
            )
        )
    sec.notes.append(
        f"bulk method: {total // (1024 * 1024)} MiB per run in 64 KiB Engine.send calls, "
        f"{WINDOW} in flight (each completes when the peer ACKed); the clock stops when the sink "
        f"(own process) confirms every byte; raw = a uvloop Protocol doing the same to the same "
        f"sink; runs interleaved, best of {repeat}. A lone send's NBL records "
        f"{sec.raw['trace_hops_per_send']} trace hops (4 broker deliveries); under load the "
        "host chains the sends of one inbox drain into one NBL chain, hence fewer layer-task "
        "messages per send than hops."
    )

    # -- memory -----------------------------------------------------------------------------------
    from bench import memory

    counts = [1000] if quick else [1000, 5000, 10000]
    mem = await asyncio.to_thread(memory.compare, counts)
    sec.raw["memory"] = mem
    for n, m in mem.items():
        if "skipped" in m:
            sec.notes.append(f"memory at {n}: skipped: {m['skipped']}")
            continue
        per = m["engine_per_conn"]
        bare = m["bare_server_per_conn"]
        sec.figures.append(
            Figure(
                "engine",
                f"RSS per idle offloaded connection, {n} conns",
                per,
                "B/conn",
                bare,
                "bare uvloop server, same count",
                per / bare if bare > 0 else None,
                "< 6x",
                per / bare < 6.0 if bare > 0 else None,
                f"bare uvloop client side {m['bare_client_per_conn']:.0f} B/conn "
                f"(ratio {per / m['bare_client_per_conn']:.2f}); {m['offloaded']}/{n} offloaded",
            )
        )
    return sec
