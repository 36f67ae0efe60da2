"""The daemon with 2 shards against the same daemon with 1, side by side in one run.

Both daemons run at once (`chimneyd --shards 1` and `--shards 2`, as users start them); the
repeats alternate between them (judge.interleaved), so the machine's drift weighs on both alike.

* ping: `ping` round trips per second from 8 RPC clients with 32 requests in flight each. Against
  the 2-shard daemon the clients are spread 4 and 4 (a client lands where the kernel's
  SO_REUSEPORT hash puts it, `stack.info` says which shard; one that lands on a shard holding
  its 4 is dialled again).
* echo: verified echo (16 KiB rounds, every byte checked in order, bench.echo_bench's workload)
  over N offloaded connections multiplexed on 8 RPC clients, spread alike.

Figure: aggregate req/s and verified MB/s, 2 shards / 1 shard. The bench's own client runs in
this one process: on a 2-core machine it takes a core itself, so what the second shard can add
is bounded by the CPU left to it — the figures say how much of it turns into throughput. What
the shards add beyond one core is capacity: each holds its own ≈19.9k sockets (chimney-soak
--shards shows that).
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections.abc import Awaitable, Callable
from contextlib import ExitStack

from bench.baselines import RpcClient, RpcResult, rpc_connect, rpc_load
from bench.common import Section, child, ports_of, raise_nofile
from bench.context import Ctx
from bench.echo_bench import CALL_TIMEOUT_S, EchoResult, EmulatedSide
from bench.judge import interleaved
from bench.peers import CONNS_PER_PORT
from chimney_client.aio import AsyncClient

RPC_CLIENTS = 8
IN_FLIGHT = 32  # per client, well under the daemon's 256
MAX_DIALS = 64  # dials to even out the clients over the shards
WARMUP_S = 0.2


async def balanced(shards: int, dial: Callable[[], Awaitable[tuple[object, int]]]) -> list[object]:
    """RPC_CLIENTS clients, RPC_CLIENTS / shards on each shard (`dial` returns a client and
    the shard it landed on; extra ones are closed)."""
    quota = RPC_CLIENTS // shards
    per: dict[int, int] = {}
    out: list[object] = []
    for _ in range(MAX_DIALS):
        client, shard = await dial()
        if per.get(shard, 0) < quota:
            per[shard] = per.get(shard, 0) + 1
            out.append(client)
            if len(out) == RPC_CLIENTS:
                return out
        else:
            await _close(client)
    raise RuntimeError(f"{MAX_DIALS} dials put the clients on shards {per}, not {quota} each")


async def _close(client: object) -> None:
    if isinstance(client, AsyncClient):
        await client.close()
    else:
        transport = getattr(client, "transport", None)
        if transport is not None:
            transport.close()


class PingSide:
    """RPC_CLIENTS raw msgpack-RPC clients on one daemon, each keeping IN_FLIGHT pings out."""

    def __init__(self, port: int, shards: int) -> None:
        self.port = port
        self.shards = shards
        self.clients: list[RpcClient] = []
        self.transports: list[asyncio.BaseTransport] = []

    async def open(self) -> None:
        async def dial() -> tuple[object, int]:
            _, client = await rpc_connect(self.port)
            info = await asyncio.wait_for(client.call("stack.info"), CALL_TIMEOUT_S)
            return client, int(info.get("shard", 0)) if isinstance(info, dict) else 0

        got = await balanced(self.shards, dial)
        self.clients = [c for c in got if isinstance(c, RpcClient)]
        self.transports = [c.transport for c in self.clients]

    async def window(self, seconds: float) -> RpcResult:
        results = await asyncio.gather(*(rpc_load(c, IN_FLIGHT, seconds) for c in self.clients))
        for r in results:
            if r.errors:
                raise RuntimeError(f"{r.errors} pings failed, first: {r.first_error}")
        requests = sum(r.requests for r in results)
        elapsed = max(r.seconds for r in results)
        p50 = statistics.median(r.p50_us for r in results)
        p99 = max(r.p99_us for r in results)
        return RpcResult(requests, elapsed, p50, p99, 0)

    def close(self) -> None:
        for t in self.transports:
            t.close()


class ShardedEcho(EmulatedSide):
    """bench.echo_bench's emulated side, its RPC clients spread evenly over the shards."""

    def __init__(self, rpc_port: int, echo_ports: list[int], n: int, shards: int) -> None:
        super().__init__(rpc_port, echo_ports, n)
        self.shards = shards

    async def clients(self, k: int) -> list[AsyncClient]:
        async def dial() -> tuple[object, int]:
            c = await AsyncClient.connect(f"127.0.0.1:{self.rpc_port}", call_timeout=CALL_TIMEOUT_S)
            return c, int((await c.stack_info()).get("shard", 0))

        return [c for c in await balanced(self.shards, dial) if isinstance(c, AsyncClient)]


def _problems(side: ShardedEcho, windows: list[EchoResult]) -> list[str]:
    out: list[str] = []
    rs = [side.setup, *windows]
    ints, errs = sum(r.integrity_errors for r in rs), sum(r.errors for r in rs)
    ran = min((r.conns_active for r in windows), default=0)
    if ints or errs or ran < side.n:
        examples = [e for r in rs for e in r.examples][:5]
        out.append(f"{ints} integrity errors, {errs} errors, {ran}/{side.n} conns ran: {examples}")
    if side.setup.offloaded != side.n:
        out.append(f"{side.setup.offloaded}/{side.n} connections offloaded")
    if side.setup.drained:
        out.append(f"gauges not back to 0 after close: {side.setup.drained}")
    return out


async def run(ctx: Ctx, sec: Section) -> None:
    sc = ctx.scale
    seconds = sc.shard_window_s
    n = sc.shard_echo_conns
    raise_nofile()
    sec.raw.update({"rpc_clients": RPC_CLIENTS, "in_flight": IN_FLIGHT, "echo_conns": n})
    ctx.progress.begin("shards", 2 * sc.repeats, "starting the daemons (1 shard, 2 shards)")
    with ExitStack() as stack:
        one = ctx.start_daemon(stack, ("--shards", "1"))
        two = ctx.start_daemon(stack, ("--shards", "2"))
        nports = max(1, -(-2 * n // CONNS_PER_PORT))
        echo = stack.enter_context(child("-m", "bench.peers", "echo", "--ports", str(nports)))
        echo_ports = ports_of(echo.expect("ready "))
        pings = {"1": PingSide(one.port, 1), "2": PingSide(two.port, 2)}
        echoes = {"1": ShardedEcho(one.port, echo_ports, n, 1)}
        echoes["2"] = ShardedEcho(two.port, echo_ports, n, 2)
        try:
            ctx.progress.step("ping: spreading the clients, warming up")
            for p in pings.values():
                await p.open()
                await p.window(WARMUP_S)
            ctx.progress.step(
                f"ping, {RPC_CLIENTS}x{IN_FLIGHT} in flight: 1 and 2 shards alternating"
            )
            ping = await interleaved(
                {k: _ping(p, seconds) for k, p in pings.items()},
                sc.repeats,
                lambda _i: ctx.progress.advance(),
            )
            ctx.progress.step(f"echo: opening and warming up {n:,} connections on each daemon")
            for e in echoes.values():
                await e.open()
            ctx.progress.step(f"verified echo, {n:,} conns: 1 and 2 shards alternating")
            echo_w = await interleaved(
                {k: _echo(e, seconds) for k, e in echoes.items()},
                sc.repeats,
                lambda _i: ctx.progress.advance(),
            )
        finally:
            for p in pings.values():
                p.close()
            for e in echoes.values():
                with contextlib.suppress(Exception):
                    await e.close()
    one_p, two_p = ping["1"], ping["2"]
    sec.add(
        "shards.ping",
        f"ping, {RPC_CLIENTS} clients x {IN_FLIGHT} in flight, 2 shards",
        "req/s",
        [r.rate for r in two_p],
        [r.rate for r in one_p],
        "the daemon with 1 shard",
        f"p50 {_med(two_p, 'p50_us'):.0f} vs {_med(one_p, 'p50_us'):.0f} µs (medians)",
    )
    problems = [f"{k} shard(s): {p}" for k, e in echoes.items() for p in _problems(e, echo_w[k])]
    e1, e2 = echo_w["1"], echo_w["2"]
    sec.add(
        "shards.echo",
        f"verified echo, {n:,} conns x 16 KiB rounds, 2 shards",
        "MB/s",
        [r.mbps for r in e2],
        [r.mbps for r in e1],
        "the daemon with 1 shard",
        f"ops/s {_emed(e2, 'ops_per_s'):,.0f} vs {_emed(e1, 'ops_per_s'):,.0f}; p99 round trip "
        f"{_emed(e2, 'p99_ms'):.1f} vs {_emed(e1, 'p99_ms'):.1f} ms",
        failed="; ".join(problems) or None,
    )
    sec.raw["ping"] = {k: [r.as_map() for r in rs] for k, rs in ping.items()}
    sec.raw["echo"] = {k: [r.as_map() for r in rs] for k, rs in echo_w.items()}
    sec.raw["echo_setup"] = {k: e.setup.as_map() for k, e in echoes.items()}


def _ping(side: PingSide, seconds: float) -> Callable[[], Awaitable[RpcResult]]:
    return lambda: side.window(seconds)


def _echo(side: ShardedEcho, seconds: float) -> Callable[[], Awaitable[EchoResult]]:
    return lambda: side.window(seconds)


def _med(results: list[RpcResult], key: str) -> float:
    return statistics.median(float(getattr(r, key)) for r in results)


def _emed(results: list[EchoResult], key: str) -> float:
    return statistics.median(float(getattr(r, key)) for r in results)
