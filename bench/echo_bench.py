"""Aggregate verified echo throughput with many active connections, daemon vs direct, same run.

Emulated: the daemon (default topology tcpip → im0 → nic0, started as users run it) opens N
offloaded connections (`tcp.connect` with `{"offload": true}`) to an echo peer process
(bench.peers echo); they are multiplexed over a few RPC clients (chimney_client.aio.AsyncClient,
at least 4, each running at most ROUNDS_PER_CLIENT rounds at once to stay under the daemon's
256-requests-in-flight limit, and enough of them that every connection's round runs at once,
as on the direct side: 9 at N = 1,000). For a fixed window every
connection repeats one round: `tcp.send` a 16 KiB chunk of its own seeded stream
(chimney_client.stream.PatternStream) while `tcp.recv` reads the echo back until all of it came,
every byte checked in order (Verifier). Direct: the same N, payload, streams and verification
against the same echo peer, over loopback from this process with uvloop Protocols (no Streams).
Both sides' connections are opened and warmed (one verified round each) first, then timed windows
alternate between them (direct, daemon, daemon, direct, …) on the same connections.
Figure: aggregate verified MB/s, emulated / direct, at N = 100 and N = 1,000, with ops/s and the
p99 round trip of both.
Floor: the same client, calls and checks against bench.floor_proxy, a do-nothing msgpack-RPC
proxy with the daemon's RPC and send-completion semantics and no emulation, in the same
alternation (direct, daemon, floor, floor, daemon, direct, …). A second figure per N, reported
(no target): emulated / floor, the share of the floor's rate the emulation keeps; its note
gives floor / direct, the most any RPC-driven daemon could score on the first figure here, and
the CPU per verified round of both servers (from /proc/PID/stat over each window) and of this
process, the client, on each side (time.process_time()).
Any integrity error, RPC error, stuck round, connection that is not offloaded (not "proxied",
for the floor), or gauge left after closing fails the figures and the run; a tcp.recv timeout
is asked again (it loses no data) until the round is 30 s old, then it is an error.

What the floor showed, three full `make bench` runs, source build, 2 cores: floor / direct
0.20-0.28x at 100 connections and 0.18-0.22x at 1,000; daemon / floor 0.46-0.49x and
0.49-0.56x. Server CPU per verified round (from /proc, medians of the windows; runs 2 and 3,
the first ran before it was measured): the daemon 174-233 us, the floor proxy 59-69 us. The
floor does not use a core (at 1,000 connections ~7,700 rounds/s x ~60 us = ~0.46 core): the
client takes most of the rest. A later echo run read this process's CPU too: per verified
round the RPC client costs 64-117 us (floor and daemon sides alike), the direct side 21-25 us;
at 1,000 connections the floor's client used ~0.87 core, its proxy ~0.48. So the 0.2x target
sits close to the floor itself (0.18-0.35x over the runs of that day): a daemon whose
emulation cost nothing would score about 0.2-0.35x on 2 cores; this one reaches ~0.5x of the
floor and spends ~3x its CPU per round.

To see where the daemon's time goes under this load, `python -m bench --profile daemon` runs
this section at 1,000 connections with the daemon under cProfile (see bench/__main__.py).

Where the daemon's time goes at N = 1,000 (one-off: py-spy --nonblocking 250 Hz, 2,290 samples in
the window; gc.callbacks timed in a wrapper running the daemon module; CPU from /proc):
- the daemon is the bottleneck: 0.92-0.95 core, vs 0.4-0.5 for this client and 0.06 for the peer;
- NDIS layer tasks (host, IM, NIC, broker, HopTrace.record 3.8% self) 45% of samples; RPC front
  end ~33% (Session.data_received 15%, tcp_recv/tcp_send coroutines 15%, inside them the
  call_later withdraw timer armed per tcp.recv 5.7%); uvloop C loop + syscalls 12.5%;
- cyclic GC: 2.0-2.1 s of each ~8.1 s window (~25%), over half in 13-19 gen-2 collections of
  65-90 ms; gc threshold0 at 50,000 cut it to ~0.5 s: 35.5 -> 48.0 and 39.6 -> 44.9 MB/s paired.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from bench.common import (
    KIB,
    Section,
    SectionSkip,
    child,
    cpu_of,
    mbps,
    median_us,
    percentile,
    ports_of,
    raise_nofile,
)
from bench.context import Ctx
from bench.judge import interleaved
from bench.peers import CONNS_PER_PORT
from bench.targets import count_key
from chimney_client.aio import AsyncClient
from chimney_client.errors import ChimneyError, RpcTimeout
from chimney_client.soak import gauges_left
from chimney_client.stream import PatternStream, Verifier

ECHO_PAYLOAD = 16 * KIB  # bytes sent per round, echoed back whole before the next round
MIN_RPC_CLIENTS = 4
# Rounds active at once per RPC client: a round has at most 2 calls in flight (send + recv), so
# 120 rounds stay under the daemon's default max_in_flight of 256 with room for tcp.info & co.
ROUNDS_PER_CLIENT = 120
RECV_TIMEOUT_MS = 5000  # server-side wait of one tcp.recv; a timeout loses no data: ask again
ROUND_LIMIT_S = 30.0  # a round still incomplete after this is stuck: an error, the conn stops
CALL_TIMEOUT_S = 60.0  # client-side bound on any one call
CONNECT_WAVE = 200  # connections opened concurrently (both sides)
EXAMPLES_KEPT = 5


@dataclass
class EchoResult:
    """One side's window: rounds, verified bytes, latencies, every error counted."""

    n: int
    seconds: float = 0.0
    ops: int = 0
    bytes_verified: int = 0
    integrity_errors: int = 0
    errors: int = 0
    recv_calls: int = 0
    recv_timeouts: int = 0
    conns_active: int = 0  # connections that ran the window (opened, no error before it)
    offloaded: int | None = None  # emulated side: connections `tcp.info` says are offloaded
    latencies: list[float] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    drained: dict[str, Any] | None = None  # emulated: gauges left after closing (empty: none)
    server_cpu_s: float | None = None  # CPU the daemon (or floor proxy) used in the window
    client_cpu_s: float = 0.0  # CPU this process (the client side) used in the window

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(what)

    def integrity(self, what: str) -> None:
        self.integrity_errors += 1
        if len(self.examples) < EXAMPLES_KEPT:
            self.examples.append(what)

    @property
    def failed(self) -> bool:
        return self.integrity_errors > 0 or self.errors > 0 or self.conns_active < self.n

    @property
    def mbps(self) -> float:
        return mbps(self.bytes_verified, self.seconds)

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_us_per_round(self) -> float | None:
        """The server's CPU per verified round, in µs: what one round costs it, whatever share
        of the machine's cores the client and the peer took meanwhile."""
        if self.server_cpu_s is None or not self.ops:
            return None
        return self.server_cpu_s / self.ops * 1e6

    @property
    def client_us_per_round(self) -> float | None:
        """This process's CPU per verified round, in µs (RPC client and verification, or the
        direct side's Protocols and verification)."""
        return self.client_cpu_s / self.ops * 1e6 if self.ops else None

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1e3

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 99) * 1e3

    def as_map(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "seconds": self.seconds,
            "ops": self.ops,
            "ops_per_s": self.ops_per_s,
            "bytes_verified": self.bytes_verified,
            "mbps": self.mbps,
            "integrity_errors": self.integrity_errors,
            "errors": self.errors,
            "recv_calls": self.recv_calls,
            "recv_timeouts": self.recv_timeouts,
            "conns_active": self.conns_active,
            "offloaded": self.offloaded,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "samples": len(self.latencies),
            "examples": self.examples,
            "drained": self.drained,
            "server_cpu_s": self.server_cpu_s,
            "server_us_per_round": self.server_us_per_round,
            "client_cpu_s": self.client_cpu_s,
            "client_us_per_round": self.client_us_per_round,
        }


def _seed(i: int) -> int:
    return 0xEC0 + i  # the same streams on both sides


def rpc_clients(n: int) -> int:
    """RPC clients for `n` connections: enough that none carries more than ROUNDS_PER_CLIENT of
    them (connection i goes to client i mod k), so every connection's round runs at once, as
    all `n` do on the direct side; a fixed cap (8 x 120 = 960) held 40 of 1,000 back."""
    return max(MIN_RPC_CLIENTS, math.ceil(n / ROUNDS_PER_CLIENT))


def client_of(i: int, k: int) -> int:
    """The RPC client (of `k`) that connection `i` is opened on."""
    return i % k


# ================================================================================================
# emulated: N offloaded connections through the daemon
# ================================================================================================
class _RpcSlot:
    """One RPC client, the bound on rounds it runs at once, its connections' streams."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.sem = asyncio.Semaphore(ROUNDS_PER_CLIENT)
        self.streams: dict[int, tuple[PatternStream, Verifier]] = {}


#: What a connection's reader is told at the start of a round: (the round's start, the future
#: its verdict goes to, the future the next round's start comes on); None: no more rounds.
_Go = tuple[float, "asyncio.Future[bool]", "asyncio.Future[_Go | None]"]


async def _reads(
    client: AsyncClient,
    cid: int,
    verifier: Verifier,
    res: EchoResult,
    measure: bool,
    go: asyncio.Future[_Go | None],
) -> None:
    """One connection's reads, round after round, on one task for all its rounds (a task and
    an `asyncio.wait` per round were ~17 µs of client CPU a round, which the direct side does
    not spend: issue 15): each round's whole echo read back and checked in order, its verdict
    (False: it failed) set on the round's future. Never cancelled mid-read."""
    size = ECHO_PAYLOAD
    while (step := await go) is not None:
        t0, verdict, go = step
        ok = False
        try:
            got = 0
            while got < size:
                try:
                    chunk = await client.tcp_recv(cid, size - got, RECV_TIMEOUT_MS)
                except RpcTimeout:
                    res.recv_timeouts += 1
                    if time.perf_counter() - t0 > ROUND_LIMIT_S:
                        res.error(f"conn {cid}: stuck, {got} of {size} bytes back")
                        break
                    continue
                if not chunk:
                    res.error(f"conn {cid}: unexpected end of stream at {verifier.offset}")
                    break
                at = verifier.offset
                res.recv_calls += 1
                if verifier.check(chunk) is not None:
                    res.integrity(
                        f"conn {cid}: wrong byte at {verifier.first_error} "
                        f"(chunk {at}+{len(chunk)})"
                    )
                    break
                if measure:
                    res.bytes_verified += len(chunk)
                got += len(chunk)
            else:
                ok = True
        except ChimneyError as exc:
            res.error(f"conn {cid}: tcp.recv: {exc}")
        except BaseException as exc:
            if verdict.done():
                raise  # the round's waiter was cancelled: this task is where it shows
            verdict.set_exception(exc)  # a bug: raised where the round is awaited
            if not isinstance(exc, Exception):
                raise  # cancelled: this task ends so too
            # not raised here too: nobody awaits this task, asyncio would log it again
            return
        if not verdict.done():  # done: the round's waiter was cancelled
            verdict.set_result(ok)
        if not ok:
            return


async def _emulated_conn(
    slot: _RpcSlot, cid: int, res: EchoResult, end: float, measure: bool
) -> bool:
    """Rounds on one connection until `end` (one round if `end` is 0); False once it failed."""
    stream, verifier = slot.streams[cid]
    client = slot.client
    size = ECHO_PAYLOAD
    loop = asyncio.get_running_loop()
    go: asyncio.Future[_Go | None] = loop.create_future()
    reader = asyncio.create_task(_reads(client, cid, verifier, res, measure, go))
    # The bound can hold a round back only when the client carries more connections than it
    # (each runs one round at a time); `rpc_clients` sees that it never does in a window.
    sem = slot.sem if len(slot.streams) > ROUNDS_PER_CLIENT else None
    try:
        while True:
            data = stream.read(size)
            t0 = time.perf_counter()  # before the client's bound: a wait for it is latency too
            if sem is not None:
                await sem.acquire()
            try:
                # the read of the round starts with its send, as a task per round did
                verdict: asyncio.Future[bool] = loop.create_future()
                step, go = go, loop.create_future()
                step.set_result((t0, verdict, go))
                ok = True
                try:
                    acked = await client.tcp_send(cid, data)
                    if acked != size:
                        res.error(f"conn {cid}: tcp.send acknowledged {acked} of {size}")
                        ok = False
                except ChimneyError as exc:
                    res.error(f"conn {cid}: tcp.send: {exc}")
                    ok = False
                finally:
                    # never cancel a read: the daemon would still hand it the next bytes (a
                    # cancel here cancels the verdict's future, not the reader)
                    ok = await verdict and ok
            finally:
                if sem is not None:
                    sem.release()
            if not ok:
                return False
            now = time.perf_counter()
            if measure:
                res.ops += 1
                res.latencies.append(now - t0)
            if now >= end:
                return True
    finally:
        if not go.done():
            go.set_result(None)  # the reader ends after its round, if one runs
        del reader


async def _open_emulated(
    slots: list[_RpcSlot], ports: list[int], n: int, res: EchoResult
) -> list[tuple[_RpcSlot, int]]:
    async def one(i: int) -> tuple[_RpcSlot, int] | None:
        slot = slots[client_of(i, len(slots))]
        try:
            cid = await slot.client.tcp_connect("127.0.0.1", ports[i % len(ports)], offload=True)
        except ChimneyError as exc:
            res.error(f"tcp.connect #{i}: {exc}")
            return None
        seed = _seed(i)
        slot.streams[cid] = (PatternStream(seed), Verifier(seed))
        return slot, cid

    out: list[tuple[_RpcSlot, int]] = []
    for start in range(0, n, CONNECT_WAVE):
        got = await asyncio.gather(*(one(i) for i in range(start, min(n, start + CONNECT_WAVE))))
        out += [g for g in got if g is not None]
    return out


async def _count_in_state(conns: list[tuple[_RpcSlot, int]], want: str) -> int:
    async def state(slot: _RpcSlot, cid: int) -> str:
        async with slot.sem:
            info = await slot.client.tcp_info(cid)
        return str(info.get("state"))

    states: list[str] = []
    for start in range(0, len(conns), CONNECT_WAVE):
        wave = conns[start : start + CONNECT_WAVE]
        states += await asyncio.gather(*(state(s, c) for s, c in wave))
    return sum(1 for s in states if s == want)


async def _drained(client: AsyncClient, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's gauges after every connection closed: {} once all are 0 (waits a little)."""
    end = time.monotonic() + timeout
    while True:
        left = gauges_left(await client.stack_stats())
        if not left or time.monotonic() > end:
            return left
        await asyncio.sleep(0.05)


class EmulatedSide:
    """N offloaded connections through the daemon, kept open for every window."""

    state = "offloaded"  # what `tcp.info` must say of every connection

    def __init__(
        self, rpc_port: int, echo_ports: list[int], n: int, pid: int | None = None
    ) -> None:
        self.rpc_port = rpc_port
        self.pid = pid  # the server's process, for its CPU per window (None: not measured)
        self.echo_ports = echo_ports
        self.n = n
        self.setup = EchoResult(n)  # errors while opening, warming up and closing
        self.slots: list[_RpcSlot] = []
        self.conns: list[tuple[_RpcSlot, int]] = []
        self.live: list[tuple[_RpcSlot, int]] = []

    async def clients(self, k: int) -> list[AsyncClient]:
        """The `k` RPC clients the connections are spread over."""
        address = f"127.0.0.1:{self.rpc_port}"
        return [await AsyncClient.connect(address, call_timeout=CALL_TIMEOUT_S) for _ in range(k)]

    async def open(self) -> None:
        self.slots = [_RpcSlot(client) for client in await self.clients(rpc_clients(self.n))]
        self.conns = await _open_emulated(self.slots, self.echo_ports, self.n, self.setup)
        self.setup.offloaded = await _count_in_state(self.conns, self.state)
        # warm-up: one verified round per connection, not timed
        warm = await asyncio.gather(
            *(_emulated_conn(s, cid, self.setup, 0.0, False) for s, cid in self.conns)
        )
        self.live = [c for c, ok in zip(self.conns, warm, strict=True) if ok]

    async def window(self, seconds: float) -> EchoResult:
        res = EchoResult(self.n)
        res.conns_active = len(self.live)
        cpu0 = cpu_of(self.pid) if self.pid is not None else None
        own0 = time.process_time()
        t0 = time.perf_counter()
        end = t0 + seconds
        oks = await asyncio.gather(*(_emulated_conn(s, c, res, end, True) for s, c in self.live))
        res.seconds = time.perf_counter() - t0
        res.client_cpu_s = time.process_time() - own0
        cpu1 = cpu_of(self.pid) if self.pid is not None else None
        if cpu0 is not None and cpu1 is not None:
            res.server_cpu_s = cpu1 - cpu0
        self.live = [c for c, ok in zip(self.live, oks, strict=True) if ok]
        return res

    async def close(self) -> None:
        res = self.setup

        async def close(slot: _RpcSlot, cid: int) -> None:
            async with slot.sem:
                try:
                    await slot.client.tcp_close(cid)
                except ChimneyError as exc:
                    res.error(f"tcp.close {cid}: {exc}")

        try:
            conns = self.conns
            for start in range(0, len(conns), CONNECT_WAVE):
                await asyncio.gather(*(close(s, c) for s, c in conns[start : start + CONNECT_WAVE]))
            if self.slots:
                res.drained = await _drained(self.slots[0].client)
        finally:
            for slot in self.slots:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(slot.client.close(), 5.0)


class FloorSide(EmulatedSide):
    """The same RPC calls, client and checks against bench.floor_proxy: a proxy with the
    daemon's RPC and send-completion semantics and none of its emulation."""

    state = "proxied"


# ================================================================================================
# direct: the same workload over plain loopback, uvloop Protocols
# ================================================================================================
class _DirectEcho(asyncio.Protocol):
    """One connection: write a 16 KiB chunk of its stream, verify the echo in order as it comes,
    next round once all of it came back; stop after the round that ends past `end`."""

    def __init__(self, seed: int, run: _DirectRun) -> None:
        self.stream = PatternStream(seed)
        self.verifier = Verifier(seed)
        self.run = run
        self.got = 0
        self.t0 = 0.0
        self.end = 0.0
        self.measure = False
        self.active = False
        self.failed = False
        self.transport: Any = None

    @property
    def res(self) -> EchoResult:
        return self.run.res  # the window now running

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def start(self, end: float, measure: bool) -> None:
        self.end = end
        self.measure = measure
        self.active = True
        self._round()

    def _round(self) -> None:
        self.got = 0
        self.t0 = time.perf_counter()
        self.transport.write(self.stream.read(ECHO_PAYLOAD))

    def _stop(self, ok: bool) -> None:
        self.failed = self.failed or not ok
        if self.active:
            self.active = False
            self.run.finished(ok)

    def data_received(self, data: bytes) -> None:
        if not self.active:
            self.res.error(f"{len(data)} bytes echoed outside a round")
            return
        at = self.verifier.offset
        if self.verifier.check(data) is not None:
            self.res.integrity(
                f"direct conn {self.run.index(self)}: wrong byte at {self.verifier.first_error} "
                f"(chunk {at}+{len(data)})"
            )
            self._stop(False)
            return
        self.res.recv_calls += 1
        if self.measure:
            self.res.bytes_verified += len(data)
        self.got += len(data)
        if self.got < ECHO_PAYLOAD:
            return
        now = time.perf_counter()
        if self.measure:
            self.res.ops += 1
            self.res.latencies.append(now - self.t0)
        if now >= self.end:
            self._stop(True)
        else:
            self._round()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.active:
            self.res.error(f"direct conn lost mid-round: {exc}")
            self._stop(False)


class _DirectRun:
    """Counts the connections still in their window; `done` resolves when none is."""

    def __init__(self, res: EchoResult) -> None:
        self.res = res
        self.protos: list[_DirectEcho] = []
        self.running = 0
        self.ok = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def index(self, proto: _DirectEcho) -> int:
        return self.protos.index(proto)

    def begin(self, end: float, measure: bool, protos: list[_DirectEcho]) -> asyncio.Future[None]:
        self.done = asyncio.get_running_loop().create_future()
        self.running = len(protos)
        self.ok = 0
        if not protos:
            self.done.set_result(None)
        for p in protos:
            p.start(end, measure)
        return self.done

    def finished(self, ok: bool) -> None:
        self.running -= 1
        self.ok += ok
        if self.running <= 0 and not self.done.done():
            self.done.set_result(None)


def _give_up(protos: list[_DirectEcho]) -> None:
    """Connections still in a round past the limit are failed: no later window counts them."""
    for p in protos:
        if p.active:
            p.active = False
            p.failed = True


class DirectSide:
    """The same N connections, streams and checks, straight to the echo peer from this process."""

    def __init__(self, echo_ports: list[int], n: int) -> None:
        self.echo_ports = echo_ports
        self.n = n
        self.setup = EchoResult(n)
        self.run = _DirectRun(self.setup)
        self.transports: list[Any] = []
        self.live: list[_DirectEcho] = []

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        run, ports = self.run, self.echo_ports

        async def one(i: int) -> _DirectEcho | None:
            try:
                transport, proto = await loop.create_connection(
                    lambda: _DirectEcho(_seed(i), run), "127.0.0.1", ports[i % len(ports)]
                )
            except OSError as exc:
                self.setup.error(f"direct connect #{i}: {exc}")
                return None
            self.transports.append(transport)
            return proto

        for start in range(0, self.n, CONNECT_WAVE):
            got = await asyncio.gather(
                *(one(i) for i in range(start, min(self.n, start + CONNECT_WAVE)))
            )
            run.protos += [p for p in got if p is not None]
        # warm-up: one verified round per connection, not timed
        try:
            await asyncio.wait_for(run.begin(0.0, False, run.protos), ROUND_LIMIT_S)
        except TimeoutError:
            self.setup.error(f"direct warm-up: {run.running} connections stuck")
            _give_up(run.protos)
        self.live = [p for p in run.protos if not p.failed and not p.active]

    async def window(self, seconds: float) -> EchoResult:
        res = EchoResult(self.n)
        res.conns_active = len(self.live)
        self.run.res = res
        limit = ROUND_LIMIT_S + seconds
        own0 = time.process_time()
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(self.run.begin(t0 + seconds, True, self.live), limit)
        except TimeoutError:
            res.error(f"direct: {self.run.running} connections stuck past {limit:.0f} s")
            _give_up(self.live)
        res.seconds = time.perf_counter() - t0
        res.client_cpu_s = time.process_time() - own0
        self.live = [p for p in self.live if not p.failed and not p.active]
        return res

    async def close(self) -> None:
        for t in self.transports:
            t.close()


# ================================================================================================
# the section
# ================================================================================================
def side_problems(side: str, n: int, setup: EchoResult, windows: list[EchoResult]) -> list[str]:
    """Errors of one side's setup and windows, and windows that ran fewer than `n` connections."""
    rs = [setup, *windows]
    ints = sum(r.integrity_errors for r in rs)
    errs = sum(r.errors for r in rs)
    ran = min((r.conns_active for r in windows), default=0)
    if not (ints or errs or ran < n):
        return []
    examples = [e for r in rs for e in r.examples][:EXAMPLES_KEPT]
    return [
        f"{side}: {ints} integrity errors, {errs} errors, {ran}/{n} conns ran; "
        f"e.g. {' | '.join(examples) or '-'}"
    ]


def emulated_problems(side: str, emu: EmulatedSide, windows: list[EchoResult]) -> list[str]:
    """Everything that makes a daemon's windows meaningless: errors, connections that did not
    run or were not offloaded, daemon gauges left after closing."""
    n = emu.n
    out = side_problems(side, n, emu.setup, windows)
    if emu.setup.offloaded != n:
        out.append(f"{side}: {emu.setup.offloaded}/{n} connections {emu.state}")
    if emu.setup.drained:
        out.append(f"{side}: daemon gauges not back to 0 after close: {emu.setup.drained}")
    return out


def _problems(
    n: int,
    emu: EmulatedSide,
    floor: FloorSide,
    direct: DirectSide,
    windows: dict[str, list[EchoResult]],
) -> list[str]:
    """Everything that makes the figures meaningless, on any side."""
    return (
        emulated_problems("emulated", emu, windows["emulated"])
        + emulated_problems("floor", floor, windows["floor"])
        + side_problems("direct", n, direct.setup, windows["direct"])
    )


async def run(ctx: Ctx, sec: Section) -> None:
    sc = ctx.scale
    counts = sc.echo_counts
    seconds = sc.echo_window_s
    limit = raise_nofile()
    need = 2 * max(counts) + 256  # both sides' connections are open at once
    if need > limit:
        raise SectionSkip("nofile", f"open-file limit {limit}, the echo section needs {need}")
    sec.raw.update(
        {
            "payload": ECHO_PAYLOAD,
            "window_s": seconds,
            "rounds_per_client": ROUNDS_PER_CLIENT,
            "counts": {},
        }
    )
    ctx.progress.begin("echo", len(counts) * sc.echo_repeats, "starting the daemon and the peer")
    with ExitStack() as stack:
        daemon = ctx.start_daemon(stack)
        nports = max(1, -(-2 * max(counts) // CONNS_PER_PORT))
        echo = stack.enter_context(child("-m", "bench.peers", "echo", "--ports", str(nports)))
        echo_ports = ports_of(echo.expect("ready "))
        proxy = stack.enter_context(child("-m", "bench.peers", "rpc-proxy"))
        proxy_port = ports_of(proxy.expect("ready "))[0]
        for n in counts:
            ctx.progress.step(
                f"N={n:,}: opening and warming up both sides (daemon pid {daemon.pid})"
            )
            emu = EmulatedSide(daemon.port, echo_ports, n, daemon.pid)
            floor = FloorSide(proxy_port, echo_ports, n, proxy.proc.pid)
            direct = DirectSide(echo_ports, n)
            try:
                await direct.open()
                await emu.open()
                await floor.open()
                ctx.progress.step(
                    f"N={n:,}: {seconds:g} s windows, direct, daemon and floor proxy alternating"
                )
                windows = await interleaved(
                    {
                        "direct": _window(direct, seconds),
                        "emulated": _window(emu, seconds),
                        "floor": _window(floor, seconds),
                    },
                    sc.echo_repeats,
                    lambda _i: ctx.progress.advance(),
                )
            finally:
                await direct.close()
                await emu.close()
                await floor.close()
            problems = _problems(n, emu, floor, direct, windows)
            e, d, f = windows["emulated"], windows["direct"], windows["floor"]
            fig = sec.add(
                count_key("echo", n),
                f"verified echo, {n:,} conns x 16 KiB rounds, via daemon",
                "MB/s",
                [r.mbps for r in e],
                [r.mbps for r in d],
                f"{n:,} uvloop Protocol conns to the same echo peer",
                f"ops/s {_med(e, 'ops_per_s'):,.0f} vs {_med(d, 'ops_per_s'):,.0f}; p99 round "
                f"trip {_med(e, 'p99_ms'):.1f} vs {_med(d, 'p99_ms'):.1f} ms (p50 "
                f"{_med(e, 'p50_ms'):.1f} vs {_med(d, 'p50_ms'):.1f}); "
                f"{sum(r.bytes_verified for r in e + d) / 1e6:,.0f} MB verified"
                + ("" if problems else ", 0 errors"),
                failed="; ".join(problems) or None,
            )
            # the same daemon windows against the floor: what share of the do-nothing proxy's
            # rate the emulation keeps (the floor's own ratio to direct is in the note)
            floor_fig = sec.add(
                count_key("echo.floor", n),
                f"verified echo, {n:,} conns, via daemon vs floor proxy",
                "MB/s",
                [r.mbps for r in e],
                [r.mbps for r in f],
                "the same RPC calls to bench.floor_proxy: no NDIS",
                f"floor vs direct {_ratio(f, d):.2f}x; floor ops/s {_med(f, 'ops_per_s'):,.0f}, "
                f"p99 {_med(f, 'p99_ms'):.1f} ms; CPU per round, server "
                f"{cpu_per_round(e, 'server')} vs {cpu_per_round(f, 'server')}, client "
                f"{cpu_per_round(e, 'client')} vs {cpu_per_round(f, 'client')} (direct "
                f"{cpu_per_round(d, 'client')})",
                failed="; ".join(problems) or None,
            )
            sec.raw["counts"][str(n)] = {
                "emulated": [r.as_map() for r in e],
                "direct": [r.as_map() for r in d],
                "floor": [r.as_map() for r in f],
                "emulated_setup": emu.setup.as_map(),
                "direct_setup": direct.setup.as_map(),
                "floor_setup": floor.setup.as_map(),
                "rpc_clients": len(emu.slots),
                "ratios": fig.ratios,
                "floor_ratios": floor_fig.ratios,
            }


def _window(side: EmulatedSide | DirectSide, seconds: float) -> Callable[[], Awaitable[EchoResult]]:
    return lambda: side.window(seconds)


def _ratio(values: list[EchoResult], baselines: list[EchoResult]) -> float:
    """Median of the per-repeat MB/s ratios."""
    return statistics.median(
        v.mbps / b.mbps if b.mbps else 0.0 for v, b in zip(values, baselines, strict=True)
    )


def cpu_per_round(results: list[EchoResult], side: str) -> str:
    """Median `side` ("server" or "client") CPU per verified round, "?" where not measured."""
    return median_us(getattr(r, f"{side}_us_per_round") for r in results)


def _med(results: list[EchoResult], key: str) -> float:
    return statistics.median(float(getattr(r, key)) for r in results)
