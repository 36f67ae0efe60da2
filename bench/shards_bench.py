"""The daemon with 2 shards against the same daemon with 1, side by side in one run.

Both daemons run at once (`chimneyd --shards 1` and `--shards 2`, as users start them); the
repeats alternate between them (judge.interleaved), so the machine's drift weighs on both alike.

The load scales with the shards: every shard of each daemon gets a load process of its own
(bench.shard_load) with the same clients on that shard — CLIENTS_PER_SHARD ping clients, IN_FLIGHT
requests out on each, and the scale's `shard_echo_conns` verified echo connections — so the
2-shard daemon gets twice the clients of the 1-shard one, and twice the client processes. With
a fixed 8 clients in the bench's own process, as before, the clients' one process bounded the
2-shard figure whatever the shards could do.

* ping: `ping` round trips per second, the sum over the load processes of a daemon.
* echo: verified echo (16 KiB rounds, every byte checked in order, bench.echo_bench's workload),
  verified MB/s summed over the load processes.

Figure: aggregate req/s and verified MB/s, 2 shards / 1 shard. On a 2-core machine the load
processes and the shards share the two cores: what the second shard adds is bounded by the CPU
left to it, and the figures say how much of it turns into throughput. What the shards add
beyond the cores is capacity: each holds its own ≈19.9k sockets (chimney-soak --shards shows
that).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

from bench.baselines import RpcResult
from bench.common import Child, Section, child, ports_of, raise_nofile
from bench.context import Ctx
from bench.echo_bench import EchoResult
from bench.judge import interleaved
from bench.peers import CONNS_PER_PORT
from bench.shard_load import CLIENTS_PER_SHARD, IN_FLIGHT

WARMUP_S = 0.2
SHARDS = (1, 2)
#: how long a load process may take over a command beyond its window: opening and warming up
#: hundreds of connections on a loaded machine
COMMAND_SLACK_S = 120.0


class LoadSide:
    """The load processes of one daemon, one per shard."""

    def __init__(self, procs: list[Child], n: int) -> None:
        self.procs = procs
        self.n = n  # echo connections per shard
        self.opened: list[dict[str, Any]] = []
        self.closed: list[dict[str, Any]] = []
        self.drained: dict[str, Any] = {}

    def ask(self, command: str, timeout: float = COMMAND_SLACK_S) -> list[dict[str, Any]]:
        """`command` to every load process at once, then each one's answer."""
        for p in self.procs:
            p.send(command)
        word = command.split()[0]
        return [json.loads(p.expect(f"{word} ", timeout)) for p in self.procs]

    def open(self) -> None:
        self.opened = self.ask("open")

    async def ping(self, seconds: float) -> RpcResult:
        got = self.ask(f"ping {seconds}", seconds + COMMAND_SLACK_S)
        errors = sum(g["errors"] for g in got)
        if errors:
            first = next(g["first_error"] for g in got if g["errors"])
            raise RuntimeError(f"{errors} pings failed, first: {first}")
        return RpcResult(
            sum(g["requests"] for g in got),
            max(g["seconds"] for g in got),
            statistics.median(g["p50_us"] for g in got),
            max(g["p99_us"] for g in got),
            0,
        )

    async def echo(self, seconds: float) -> EchoResult:
        got = self.ask(f"echo {seconds}", seconds + COMMAND_SLACK_S)
        res = EchoResult(self.n * len(self.procs))
        res.seconds = max(g["seconds"] for g in got)
        for g in got:
            res.ops += g["ops"]
            res.bytes_verified += g["bytes_verified"]
            res.integrity_errors += g["integrity_errors"]
            res.errors += g["errors"]
            res.conns_active += g["conns_active"]
            res.latencies += g["latencies"]
            res.examples += g["examples"]
        return res

    def close(self) -> None:
        """Every load process closes its connections first; then one reads the daemon's gauges
        (which count every shard's)."""
        self.closed = self.ask("close")
        self.drained = json.loads(self.procs[0].ask("drained", "drained ", COMMAND_SLACK_S))
        for p in self.procs[1:]:
            p.ask("drained", "drained ", COMMAND_SLACK_S)

    def problems(self, windows: list[EchoResult]) -> list[str]:
        out: list[str] = []
        # one tally per process (its EmulatedSide.setup): what `close` answered holds what
        # `open` did too, so it stands for both once the process closed
        setups = self.closed or [o["setup"] for o in self.opened]
        ints = sum(s["integrity_errors"] for s in setups) + sum(r.integrity_errors for r in windows)
        errs = sum(s["errors"] for s in setups) + sum(r.errors for r in windows)
        want = self.n * len(self.procs)
        ran = min((r.conns_active for r in windows), default=0)
        if ints or errs or ran < want:
            examples = [e for s in setups for e in s["examples"]]
            examples += [e for r in windows for e in r.examples]
            out.append(
                f"{ints} integrity errors, {errs} errors, {ran}/{want} conns ran: {examples[:5]}"
            )
        # every client of a load process on its shard (`on_shard` dialled until so): one
        # elsewhere loads a shard twice and another not at all, and the figure would not say
        for o in self.opened:
            on = [*o["ping_clients_on"], *o["echo_clients_on"]]
            off = sorted({k for k in on if k != o["shard"]})
            if off or not on:
                out.append(
                    f"the load process for shard {o['shard']} has clients on shard "
                    f"{', '.join(map(str, off)) or 'none'}: ping {o['ping_clients_on']}, "
                    f"echo {o['echo_clients_on']}"
                )
        offloaded = sum(o["setup"]["offloaded"] or 0 for o in self.opened)
        if offloaded != want:
            out.append(f"{offloaded}/{want} connections offloaded")
        if self.drained.get("drained"):
            out.append(f"gauges not back to 0 after close: {self.drained['drained']}")
        return out


async def run(ctx: Ctx, sec: Section) -> None:
    sc = ctx.scale
    seconds = sc.shard_window_s
    n = sc.shard_echo_conns
    raise_nofile()
    sec.raw.update(
        {"clients_per_shard": CLIENTS_PER_SHARD, "in_flight": IN_FLIGHT, "echo_conns_per_shard": n}
    )
    ctx.progress.begin("shards", 2 * sc.repeats, "starting the daemons (1 shard, 2 shards)")
    with ExitStack() as stack:
        daemons = {s: ctx.start_daemon(stack, ("--shards", str(s))) for s in SHARDS}
        nports = max(1, -(-sum(SHARDS) * n // CONNS_PER_PORT))
        echo = stack.enter_context(child("-m", "bench.peers", "echo", "--ports", str(nports)))
        echo_ports = ",".join(map(str, ports_of(echo.expect("ready "))))
        sides: dict[str, LoadSide] = {}
        for s, daemon in daemons.items():
            procs = [
                stack.enter_context(
                    child("-m", "bench.shard_load", str(daemon.port), str(k), echo_ports, str(n))
                )
                for k in range(s)
            ]
            for p in procs:
                p.expect("ready")
            sides[str(s)] = LoadSide(procs, n)
        ctx.progress.step(
            f"spreading the clients (one load process per shard) and opening {n:,} echo "
            "connections per shard"
        )
        for side in sides.values():
            side.open()
        sec.raw["load"] = {k: side.opened for k, side in sides.items()}
        for side in sides.values():
            await side.ping(WARMUP_S)
        ctx.progress.step(
            f"ping, {CLIENTS_PER_SHARD}x{IN_FLIGHT} in flight per shard: 1 and 2 shards alternating"
        )
        ping = await interleaved(
            {k: _ping(side, seconds) for k, side in sides.items()},
            sc.repeats,
            lambda _i: ctx.progress.advance(),
        )
        ctx.progress.step(f"verified echo, {n:,} conns per shard: 1 and 2 shards alternating")
        echo_w = await interleaved(
            {k: _echo(side, seconds) for k, side in sides.items()},
            sc.repeats,
            lambda _i: ctx.progress.advance(),
        )
        for side in sides.values():
            side.close()
    one_p, two_p = ping["1"], ping["2"]
    sec.add(
        "shards.ping",
        f"ping, {CLIENTS_PER_SHARD} clients x {IN_FLIGHT} in flight per shard, 2 shards",
        "req/s",
        [r.rate for r in two_p],
        [r.rate for r in one_p],
        "the daemon with 1 shard",
        f"p50 {_med(two_p, 'p50_us'):.0f} vs {_med(one_p, 'p50_us'):.0f} µs (medians)",
    )
    problems = [f"{k} shard(s): {p}" for k, side in sides.items() for p in side.problems(echo_w[k])]
    e1, e2 = echo_w["1"], echo_w["2"]
    sec.add(
        "shards.echo",
        f"verified echo, {n:,} conns per shard x 16 KiB rounds, 2 shards",
        "MB/s",
        [r.mbps for r in e2],
        [r.mbps for r in e1],
        "the daemon with 1 shard",
        f"ops/s {_emed(e2, 'ops_per_s'):,.0f} vs {_emed(e1, 'ops_per_s'):,.0f}; p99 round trip "
        f"{_emed(e2, 'p99_ms'):.1f} vs {_emed(e1, 'p99_ms'):.1f} ms",
        failed="; ".join(problems) or None,
    )
    sec.notes.append(
        f"one load process per shard, each with {CLIENTS_PER_SHARD} ping clients ({IN_FLIGHT} "
        f"in flight each) and {n:,} verified echo connections on its shard: the 2-shard daemon "
        "gets twice the load, from twice the client processes"
    )
    sec.raw["ping"] = {k: [r.as_map() for r in rs] for k, rs in ping.items()}
    sec.raw["echo"] = {k: [r.as_map() for r in rs] for k, rs in echo_w.items()}
    sec.raw["echo_setup"] = {
        k: {
            "offloaded": sum(o["setup"]["offloaded"] or 0 for o in side.opened),
            "drained": side.drained.get("drained"),
            "closed": side.closed,
        }
        for k, side in sides.items()
    }


def _ping(side: LoadSide, seconds: float) -> Callable[[], Awaitable[RpcResult]]:
    return lambda: side.ping(seconds)


def _echo(side: LoadSide, seconds: float) -> Callable[[], Awaitable[EchoResult]]:
    return lambda: side.echo(seconds)


def _med(results: list[RpcResult], key: str) -> float:
    return statistics.median(float(getattr(r, key)) for r in results)


def _emed(results: list[EchoResult], key: str) -> float:
    return statistics.median(float(getattr(r, key)) for r in results)
