"""The daemon over msgpack-RPC (rpc-contract.md v1) against its baselines, side by side:

* `ping` round trips per second, 1 and 64 in flight, against the minimal uvloop msgpack-RPC
  echo server (bench.peers rpc-echo, own process); both servers run at once and the repeats
  alternate between them;
* `tcp.send` of 64 KiB through the daemon to an echo peer, then `tcp.recv` of the echo, against
  a plain loopback socket doing the same rounds to the same peer; both warmed alike, alternating.
  Each side sends its own seeded stream (chimney_client.stream.PatternStream) and checks every
  echoed byte in order (Verifier), so a lost, doubled, reordered or made-up byte fails it.

The client is plain `msgpack` on an asyncio Protocol (baselines.RpcClient): it depends on the
contract only. Any error answer, lost connection, wrong result or damaged echo fails the
section.

Placement (bench.common.placed, as the bulk section does): from the first warm-up to the last
window the client (this thread) runs on one CPU and every server it measures (the daemon, the
minimal echo server, the echo peer; every thread of each) on another, so the two sides of each
ratio run where the other did, whatever the scheduler would have done from one window to the
next. Not one core for all, as the judged bulk figure: a ping is a round trip between two
processes, which on one core measures the scheduler's switches more than either server. The
servers share their core, but only the one measured works at a time (the echo peer only for
tcp.send, on both sides). A machine with one CPU runs everything on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

from bench.baselines import RpcClient, RpcResult, rpc_connect, rpc_load
from bench.common import (
    PAYLOAD,
    Section,
    child,
    cpus,
    mbps,
    percentile,
    placed,
    ports_of,
    threads_of,
)
from bench.context import Ctx
from bench.judge import interleaved
from chimney_client.stream import PatternStream, Verifier

WINDOWS = (1, 64)
WARMUP_S = 0.2
WARMUP_ROUNDS = 50
CALL_TIMEOUT_S = 10.0
DAEMON_SEED = 0x7C5E  # the streams each side sends: any two seeds, one per connection
PLAIN_SEED = 0x7C5F


def check_rpc(side: str, r: RpcResult) -> RpcResult:
    if r.errors:
        raise RuntimeError(
            f"{side}: {r.errors} of {r.requests} requests failed, first: {r.first_error}"
        )
    return r


async def pong(client: RpcClient, side: str) -> None:
    got = await asyncio.wait_for(client.call("ping"), CALL_TIMEOUT_S)
    if got != "pong":
        raise RuntimeError(f"{side}: ping answered {got!r}, not 'pong'")


# ================================================================================================
# tcp.send end to end
# ================================================================================================
class EchoPattern:
    """What one connection sends, and the check of what comes back: the same seeded stream on
    both ends, kept for the connection's life (a round's echo continues the last one's), so a
    lost, doubled, reordered or made-up byte lands on the wrong offset."""

    def __init__(self, seed: int) -> None:
        self.stream = PatternStream(seed)
        self.verifier = Verifier(seed)

    def next_round(self) -> bytes:
        return self.stream.read(PAYLOAD)

    def check(self, side: str, data: bytes) -> None:
        """Raise unless `data` is the next bytes of the echo (the same check on both sides, so
        it weighs on both alike)."""
        at = self.verifier.offset
        bad = self.verifier.check(data)
        if bad is not None:
            raise RuntimeError(
                f"{side}: the echo came back damaged: wrong byte at {bad} (chunk {at}+{len(data)})"
            )


async def rpc_echo_rounds(
    client: RpcClient,
    conn: int,
    seconds: float,
    max_ops: int,
    pattern: EchoPattern | None = None,
) -> RpcResult:
    """`tcp.send` 64 KiB of `pattern`'s stream, then `tcp.recv` until the 64 KiB came back, each
    byte checked; repeat. Pass the same `pattern` to every call on one connection."""
    pattern = pattern or EchoPattern(DAEMON_SEED)
    latencies: list[float] = []
    recv_calls = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while len(latencies) < max_ops and time.perf_counter() < end:
        payload = pattern.next_round()
        t = time.perf_counter()
        sent = await asyncio.wait_for(client.call("tcp.send", conn, payload), CALL_TIMEOUT_S)
        if sent != len(payload):
            raise RuntimeError(f"tcp.send acknowledged {sent!r} of {len(payload)} bytes")
        got = 0
        while got < len(payload):
            data = await asyncio.wait_for(
                client.call("tcp.recv", conn, len(payload) - got, 5000), CALL_TIMEOUT_S
            )
            if not data:
                raise RuntimeError("the echo peer closed the connection")
            if len(data) > len(payload) - got:
                raise RuntimeError(f"daemon: tcp.recv returned {len(data)} bytes, asked for fewer")
            pattern.check("daemon", data)
            got += len(data)
            recv_calls += 1
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    result = RpcResult(
        len(latencies),
        elapsed,
        percentile(latencies, 50) * 1e6,
        percentile(latencies, 99) * 1e6,
        0,
    )
    result.recv_calls = recv_calls
    return result


class PlainEcho(asyncio.Protocol):
    """The plain-socket side, one connection kept for every window: write 64 KiB of its stream,
    wait until 64 KiB came back, every byte checked, repeat."""

    def __init__(self) -> None:
        self.pattern = EchoPattern(PLAIN_SEED)
        self.loop = asyncio.get_running_loop()
        self.got = 0
        self.latencies: list[float] = []
        self.done: asyncio.Future[float] | None = None
        self.lost: BaseException | None = None
        self.damaged: RuntimeError | None = None  # the first bad echo, in a round or not

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    async def rounds(self, seconds: float, max_ops: int) -> RpcResult:
        if self.damaged is not None:
            raise self.damaged
        if self.lost is not None:
            raise ConnectionError(f"echo peer went away: {self.lost!r}")
        self.latencies = []
        self.max_ops = max_ops
        self.done = self.loop.create_future()
        self.t0 = time.perf_counter()
        self.end = self.t0 + seconds
        self._round()
        elapsed = await asyncio.wait_for(self.done, seconds + 30.0)
        lat = self.latencies
        return RpcResult(len(lat), elapsed, percentile(lat, 50) * 1e6, percentile(lat, 99) * 1e6, 0)

    def _round(self) -> None:
        self.t = time.perf_counter()
        self.got = 0
        self.transport.write(self.pattern.next_round())

    def data_received(self, data: bytes) -> None:
        # every byte is checked, in a round or not: the verifier's offset follows the stream
        if self.damaged is None:
            try:
                self.pattern.check("plain socket", data)
                if self.done is None or self.done.done() or self.got + len(data) > PAYLOAD:
                    raise RuntimeError(f"plain socket: {len(data)} bytes echoed outside a round")
            except RuntimeError as exc:
                self.damaged = exc
        if self.damaged is not None:
            if self.done is not None and not self.done.done():
                self.done.set_exception(self.damaged)
            return
        assert self.done is not None
        self.got += len(data)
        if self.got < PAYLOAD:
            return
        now = time.perf_counter()
        self.latencies.append(now - self.t)
        if len(self.latencies) < self.max_ops and now < self.end:
            self._round()
        else:
            self.done.set_result(now - self.t0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("closed")
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"echo peer went away: {exc}"))


# ================================================================================================
# the section
# ================================================================================================
def placement(server_pids: list[int]) -> tuple[int, int, dict[int, int]]:
    """The client's CPU, the servers' CPU, and the `placed` map: this thread on the first CPU
    this process may use, every thread of every server on the second (the first, on a machine
    with one)."""
    mine = cpus()
    client = mine[0] if mine else 0
    server = mine[1] if len(mine) > 1 else client
    where = {0: client}
    for pid in server_pids:
        where.update(dict.fromkeys(threads_of(pid), server))
    return client, server, where


async def run(ctx: Ctx, sec: Section) -> None:
    sc = ctx.scale
    seconds = sc.rpc_window_s
    max_ops = 200_000  # a bound on memory only: the window ends a measurement
    ctx.progress.begin("rpc", (len(WINDOWS) + 1) * sc.repeats, "starting the daemon and peers")
    transports: list[asyncio.BaseTransport] = []
    with ExitStack() as stack:
        daemon = ctx.start_daemon(stack)
        ctx.progress.step(f"daemon pid {daemon.pid} on {daemon.address}")
        echo_srv = stack.enter_context(child("-m", "bench.peers", "rpc-echo"))
        echo_port = ports_of(echo_srv.expect("ready "))[0]
        peer = stack.enter_context(child("-m", "bench.peers", "echo"))
        peer_port = ports_of(peer.expect("ready "))[0]
        client_cpu, server_cpu, where = placement([daemon.pid, echo_srv.proc.pid, peer.proc.pid])
        took = stack.enter_context(placed(where))
        sec.raw["placement"] = {"client_cpu": client_cpu, "server_cpu": server_cpu, "placed": took}
        try:
            dt, dc = await rpc_connect(daemon.port)
            transports.append(dt)
            et, ec = await rpc_connect(echo_port)
            transports.append(et)
            await pong(dc, "daemon")
            await pong(ec, "minimal echo")
            ctx.progress.step("warming up both servers")
            check_rpc("daemon", await rpc_load(dc, 8, WARMUP_S))
            check_rpc("minimal echo", await rpc_load(ec, 8, WARMUP_S))
            pings: dict[int, dict[str, list[RpcResult]]] = {}

            def load(client: RpcClient, w: int) -> Callable[[], Awaitable[RpcResult]]:
                return lambda: rpc_load(client, w, seconds)

            for w in WINDOWS:
                ctx.progress.step(f"ping, {w} in flight: minimal echo and daemon, alternating")
                pings[w] = await interleaved(
                    {"echo": load(ec, w), "daemon": load(dc, w)},
                    sc.repeats,
                    lambda _i: ctx.progress.advance(),
                )
                for side, results in pings[w].items():
                    for r in results:
                        check_rpc(side, r)

            # -- tcp.send: the daemon's offloaded connection and a plain one, same echo peer
            ctx.progress.step("tcp.send 64 KiB: connecting and warming up both sides")
            conn = await asyncio.wait_for(
                dc.call("tcp.connect", "127.0.0.1", peer_port, {"offload": True}), CALL_TIMEOUT_S
            )
            info = await asyncio.wait_for(dc.call("tcp.info", conn), CALL_TIMEOUT_S)
            state = info.get("state") if isinstance(info, dict) else None
            loop = asyncio.get_running_loop()
            pt, plain = await loop.create_connection(PlainEcho, "127.0.0.1", peer_port)
            transports.append(pt)
            daemon_pattern = EchoPattern(DAEMON_SEED)
            await rpc_echo_rounds(dc, conn, WARMUP_S, WARMUP_ROUNDS, daemon_pattern)
            await plain.rounds(WARMUP_S, WARMUP_ROUNDS)
            ctx.progress.step("tcp.send 64 KiB + recv echo: plain socket and daemon, alternating")
            echo = await interleaved(
                {
                    "plain": lambda: plain.rounds(seconds, max_ops),
                    "daemon": lambda: rpc_echo_rounds(dc, conn, seconds, max_ops, daemon_pattern),
                },
                sc.repeats,
                lambda _i: ctx.progress.advance(),
            )
            await asyncio.wait_for(dc.call("tcp.close", conn), CALL_TIMEOUT_S)
        finally:
            for t in transports:
                t.close()

    sec.raw["ping"] = {
        str(w): {side: [r.as_map() for r in rs] for side, rs in by.items()}
        for w, by in pings.items()
    }
    for w, by in pings.items():
        d, e = by["daemon"], by["echo"]
        sec.add(
            f"rpc.ping.{w}",
            f"daemon ping, {w} in flight",
            "req/s",
            [r.rate for r in d],
            [r.rate for r in e],
            "minimal uvloop msgpack-RPC echo server",
            f"p50 {_med(d, 'p50_us'):.0f} / p99 {_med(d, 'p99_us'):.0f} µs vs "
            f"{_med(e, 'p50_us'):.0f} / {_med(e, 'p99_us'):.0f} µs (medians of repeats)",
        )
    via, plain_r = echo["daemon"], echo["plain"]
    sec.raw["tcp_send_echo"] = {
        "daemon": [r.as_map() for r in via],
        "plain": [r.as_map() for r in plain_r],
        "state": state,
        "path": info.get("path") if isinstance(info, dict) else None,
    }
    recv_per_round = sum(r.recv_calls for r in via) / max(1, sum(r.requests for r in via))
    sec.add(
        "rpc.tcp_send",
        "tcp.send 64 KiB + recv echo, via daemon",
        "MB/s",
        [mbps(r.requests * PAYLOAD, r.seconds) for r in via],
        [mbps(r.requests * PAYLOAD, r.seconds) for r in plain_r],
        "plain loopback socket, same echo peer",
        f"round p50 {_med(via, 'p50_us') / 1e3:.2f} / p99 {_med(via, 'p99_us') / 1e3:.2f} ms vs "
        f"{_med(plain_r, 'p50_us') / 1e3:.2f} / {_med(plain_r, 'p99_us') / 1e3:.2f} ms; "
        f"{recv_per_round:.1f} tcp.recv per round",
        failed=None if state == "offloaded" else f"the connection was {state!r}, not offloaded",
    )

    sec.notes.append(
        f"client on CPU {client_cpu}; the daemon, the minimal echo server and the echo peer on "
        f"CPU {server_cpu}, from the first warm-up to the last window"
        if took
        else "placement not supported here: every process ran where the scheduler put it"
    )


def _med(results: list[RpcResult], key: str) -> float:
    return percentile([float(getattr(r, key)) for r in results], 50)
