"""Teaming: bulk offloaded sends through a MUX over 1, 2 and 4 NICs against the single-NIC
pass-through path, interleaved in one run.

An in-process engine opens CONNS connections to the sink (its own process) and sends 64 KiB
`Engine.send`s on all of them, WINDOW in flight per connection, each completing when the peer
ACKed; the clock stops when the sink has confirmed every byte of every connection. The
baseline is the same load through `tcpip → im0 → nic0` (one pass-through IM, the default
topology); the variants put a round-robin MUX in the IM's place, over n NICs, so the CONNS
connections spread evenly. One process carries every NIC, so more NICs cannot add CPU: the
figures show what placement, per-NIC object copies and per-NIC routing cost, and whether
spreading over NICs costs throughput or tail latency.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.bulk_bench import bulk_through
from bench.common import MIB, Section, child, percentile, ports_of
from bench.context import Ctx
from bench.judge import interleaved
from chimneyd.config import LayerConfig

CONNS = 8  # connections per run: two per NIC at 4 NICs
WINDOW = 8  # sends in flight per connection
NICS = (1, 2, 4)
WARMUP_BYTES = 8 * MIB


def passthrough() -> tuple[LayerConfig, ...]:
    """The single-NIC path: tcpip → im0 → nic0."""
    return (
        LayerConfig("tcpip", "host", ("im0",)),
        LayerConfig("im0", "passthrough", ("nic0",)),
        LayerConfig("nic0", "target"),
    )


def teamed(nics: int) -> tuple[LayerConfig, ...]:
    """tcpip → team0 (round-robin MUX) → nic0 … nic{n-1}."""
    names = tuple(f"nic{i}" for i in range(nics))
    return (
        LayerConfig("tcpip", "host", ("team0",)),
        LayerConfig("team0", "mux", names, policy="round-robin"),
        *(LayerConfig(n, "target") for n in names),
    )


async def engine_bulk(
    layers: tuple[LayerConfig, ...], total: int, sink_port: int
) -> dict[str, float]:
    """About `total` bytes over CONNS connections through `layers`, WINDOW in flight each."""
    return await bulk_through(layers, total, sink_port, CONNS, WINDOW)


async def run(ctx: Ctx, sec: Section) -> None:
    sc = ctx.scale
    total = sc.bulk_bytes
    ctx.progress.begin("mux", sc.repeats, "starting the sink")
    with child("-m", "bench.peers", "sink") as sink:
        port = ports_of(sink.expect("ready "))[0]
        variants: dict[str, tuple[LayerConfig, ...]] = {"im": passthrough()}
        variants.update({str(n): teamed(n) for n in NICS})
        ctx.progress.step("warming up every variant")
        for layers in variants.values():
            await engine_bulk(layers, WARMUP_BYTES, port)

        def make(layers: tuple[LayerConfig, ...]) -> Callable[[], Awaitable[dict[str, float]]]:
            return lambda: engine_bulk(layers, total, port)

        runs = {name: make(layers) for name, layers in variants.items()}
        ctx.progress.step(
            f"{total // MIB} MiB per run over {CONNS} connections: 1 IM, then a MUX over 1, 2, 4 NICs"
        )
        got = await interleaved(runs, sc.repeats, lambda _i: ctx.progress.advance())
    sec.raw["mux"] = {"conns": CONNS, "window": WINDOW, "bytes_per_run": total, "runs": got}
    for n in NICS:
        used = {r["nics_used"] for r in got[str(n)]}
        if used != {n} or any(r["max_per_nic"] != CONNS // n for r in got[str(n)]):
            raise RuntimeError(f"MUX over {n} NICs did not spread {CONNS} connections evenly")

    def col(name: str, key: str) -> list[float]:
        return [r[key] for r in got[name]]

    def med(name: str, key: str) -> float:
        return percentile(col(name, key), 50)

    for n in NICS:
        sec.add(
            f"mux.mbps.{n}",
            f"MUX over {n} NIC{'s' if n != 1 else ''}: bulk send, {CONNS} conns",
            "MB/s",
            col(str(n), "mbps"),
            col("im", "mbps"),
            "1 pass-through IM over one NIC",
            f"send p50 {med(str(n), 'p50_ms'):.2f} ms vs {med('im', 'p50_ms'):.2f} ms",
        )
        sec.add(
            f"mux.p99.{n}",
            f"MUX over {n} NIC{'s' if n != 1 else ''}: send p99 latency",
            "ms",
            col(str(n), "p99_ms"),
            col("im", "p99_ms"),
            "1 pass-through IM over one NIC",
            "lower is better",
        )
    sec.notes.append(
        f"{total // MIB} MiB per run over {CONNS} connections, 64 KiB Engine.send calls, {WINDOW} "
        "in flight per connection (each completes when the peer ACKed); the clock stops when "
        "the sink (own process) confirmed every byte of every connection, each checked "
        "against the sent pattern. The MUX places round-robin, so n NICs carry CONNS/n "
        "connections each (checked). Every NIC runs in this one process: more NICs add no CPU, "
        "so a ratio near 1 means teaming costs nothing."
    )
