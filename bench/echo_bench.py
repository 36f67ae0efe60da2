"""Aggregate verified echo throughput with many active connections, daemon vs direct, same run.

Emulated: the daemon (default topology tcpip → im0 → nic0, started as rpc_bench does) opens N
offloaded connections (`tcp.connect` with `{"offload": true}`) to an echo peer process
(bench.peers echo); they are multiplexed over a few RPC clients (chimney_client.aio.AsyncClient,
4..8 of them, each under the daemon's 256-requests-in-flight limit). For a fixed window every
connection repeats one round: `tcp.send` a 16 KiB chunk of its own seeded stream
(chimney_client.stream.PatternStream) while `tcp.recv` reads the echo back until all of it came,
every byte checked in order (Verifier). Direct: the same N, payload, streams and verification
against the same echo peer, over loopback from this process with uvloop Protocols (no Streams).
Figure: aggregate verified MB/s, emulated / direct, at N = 100 and N = 1,000, with ops/s and the
p99 round trip of both. Any integrity error, RPC error, stuck round or connection that is not
offloaded fails the figure (red ✗, the counts in its note and the section's notes); a tcp.recv
timeout is asked again (it loses no data) until the round is 30 s old, then it is an error.

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
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from bench.common import KIB, Figure, Section, child, mbps, percentile, ports_of, raise_nofile
from bench.peers import CONNS_PER_PORT
from bench.rpc_bench import daemon_port
from chimney_client.aio import AsyncClient
from chimney_client.errors import ChimneyError, RpcTimeout
from chimney_client.soak import gauges_left
from chimney_client.stream import PatternStream, Verifier

ECHO_PAYLOAD = 16 * KIB  # bytes sent per round, echoed back whole before the next round
COUNTS = (100, 1000)  # connections per measurement; BENCH_ECHO_COUNTS="10,20" overrides
COUNTS_ENV = "BENCH_ECHO_COUNTS"
MIN_RPC_CLIENTS = 4
MAX_RPC_CLIENTS = 8
# Rounds active at once per RPC client: a round has at most 2 calls in flight (send + recv), so
# 120 rounds stay under the daemon's default max_in_flight of 256 with room for tcp.info & co.
ROUNDS_PER_CLIENT = 120
RECV_TIMEOUT_MS = 5000  # server-side wait of one tcp.recv; a timeout loses no data: ask again
ROUND_LIMIT_S = 30.0  # a round still incomplete after this is stuck: an error, the conn stops
CALL_TIMEOUT_S = 60.0  # client-side bound on any one call
CONNECT_WAVE = 200  # connections opened concurrently (both sides)
EXAMPLES_KEPT = 5


def counts_from_env() -> tuple[int, ...]:
    text = os.environ.get(COUNTS_ENV, "").strip()
    if not text:
        return COUNTS
    counts = tuple(int(p) for p in text.split(",") if p.strip())
    if not counts or min(counts) < 1:
        raise ValueError(f"{COUNTS_ENV}={text!r}: expected positive ints, e.g. 10,20")
    return counts


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
        }


def _seed(i: int) -> int:
    return 0xEC0 + i  # the same streams on both sides


# ================================================================================================
# emulated: N offloaded connections through the daemon
# ================================================================================================
class _RpcSlot:
    """One RPC client, the bound on rounds it runs at once, its connections' streams."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.sem = asyncio.Semaphore(ROUNDS_PER_CLIENT)
        self.streams: dict[int, tuple[PatternStream, Verifier]] = {}


async def _emulated_conn(
    slot: _RpcSlot, cid: int, res: EchoResult, end: float, measure: bool
) -> bool:
    """Rounds on one connection until `end` (one round if `end` is 0); False once it failed."""
    stream, verifier = slot.streams[cid]
    client = slot.client
    size = ECHO_PAYLOAD

    async def read_back(t0: float) -> bool:
        got = 0
        while got < size:
            try:
                chunk = await client.tcp_recv(cid, size - got, RECV_TIMEOUT_MS)
            except RpcTimeout:
                res.recv_timeouts += 1
                if time.perf_counter() - t0 > ROUND_LIMIT_S:
                    res.error(f"conn {cid}: stuck, {got} of {size} bytes back")
                    return False
                continue
            if not chunk:
                res.error(f"conn {cid}: unexpected end of stream at {verifier.offset}")
                return False
            at = verifier.offset
            res.recv_calls += 1
            if verifier.check(chunk) is not None:
                res.integrity(
                    f"conn {cid}: wrong byte at {verifier.first_error} (chunk {at}+{len(chunk)})"
                )
                return False
            if measure:
                res.bytes_verified += len(chunk)
            got += len(chunk)
        return True

    while True:
        data = stream.read(size)
        t0 = time.perf_counter()  # before the client's bound: a wait for it is latency too
        async with slot.sem:
            reader = asyncio.create_task(read_back(t0))
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
                # never cancel a read: the daemon would still hand it the next bytes
                await asyncio.wait([reader])
            try:
                ok = reader.result() and ok
            except ChimneyError as exc:
                res.error(f"conn {cid}: tcp.recv: {exc}")
                ok = False
        if not ok:
            return False
        now = time.perf_counter()
        if measure:
            res.ops += 1
            res.latencies.append(now - t0)
        if now >= end:
            return True


async def _open_emulated(
    slots: list[_RpcSlot], ports: list[int], n: int, res: EchoResult
) -> list[tuple[_RpcSlot, int]]:
    async def one(i: int) -> tuple[_RpcSlot, int] | None:
        slot = slots[i % len(slots)]
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


async def _offloaded_count(conns: list[tuple[_RpcSlot, int]]) -> int:
    async def state(slot: _RpcSlot, cid: int) -> str:
        async with slot.sem:
            info = await slot.client.tcp_info(cid)
        return str(info.get("state"))

    states: list[str] = []
    for start in range(0, len(conns), CONNECT_WAVE):
        wave = conns[start : start + CONNECT_WAVE]
        states += await asyncio.gather(*(state(s, c) for s, c in wave))
    return sum(1 for s in states if s == "offloaded")


async def _drained(client: AsyncClient, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's gauges after every connection closed: {} once all are 0 (waits a little)."""
    end = time.monotonic() + timeout
    while True:
        left = gauges_left(await client.stack_stats())
        if not left or time.monotonic() > end:
            return left
        await asyncio.sleep(0.05)


async def emulated(rpc_port: int, echo_ports: list[int], n: int, seconds: float) -> EchoResult:
    res = EchoResult(n)
    k = max(MIN_RPC_CLIENTS, min(MAX_RPC_CLIENTS, math.ceil(n / ROUNDS_PER_CLIENT)))
    slots: list[_RpcSlot] = []
    try:
        for _ in range(k):
            client = await AsyncClient.connect(f"127.0.0.1:{rpc_port}", call_timeout=CALL_TIMEOUT_S)
            slots.append(_RpcSlot(client))
        conns = await _open_emulated(slots, echo_ports, n, res)
        res.offloaded = await _offloaded_count(conns)
        # warm-up: one verified round per connection, not timed
        warm = await asyncio.gather(*(_emulated_conn(s, cid, res, 0.0, False) for s, cid in conns))
        live = [c for c, ok in zip(conns, warm, strict=True) if ok]
        res.conns_active = len(live)
        t0 = time.perf_counter()
        end = t0 + seconds
        await asyncio.gather(*(_emulated_conn(s, cid, res, end, True) for s, cid in live))
        res.seconds = time.perf_counter() - t0

        async def close(slot: _RpcSlot, cid: int) -> None:
            async with slot.sem:
                try:
                    await slot.client.tcp_close(cid)
                except ChimneyError as exc:
                    res.error(f"tcp.close {cid}: {exc}")

        for start in range(0, len(conns), CONNECT_WAVE):
            await asyncio.gather(*(close(s, c) for s, c in conns[start : start + CONNECT_WAVE]))
        res.drained = await _drained(slots[0].client)
    finally:
        for slot in slots:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slot.client.close(), 5.0)
    return res


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
        self.res = run.res
        self.got = 0
        self.t0 = 0.0
        self.end = 0.0
        self.measure = False
        self.active = False
        self.failed = False
        self.transport: Any = None

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


async def direct(echo_ports: list[int], n: int, seconds: float) -> EchoResult:
    loop = asyncio.get_running_loop()
    res = EchoResult(n)
    run = _DirectRun(res)
    transports: list[Any] = []
    try:

        async def one(i: int) -> _DirectEcho | None:
            try:
                transport, proto = await loop.create_connection(
                    lambda: _DirectEcho(_seed(i), run), "127.0.0.1", echo_ports[i % len(echo_ports)]
                )
            except OSError as exc:
                res.error(f"direct connect #{i}: {exc}")
                return None
            transports.append(transport)
            return proto

        for start in range(0, n, CONNECT_WAVE):
            got = await asyncio.gather(
                *(one(i) for i in range(start, min(n, start + CONNECT_WAVE)))
            )
            run.protos += [p for p in got if p is not None]
        limit = ROUND_LIMIT_S + seconds
        # warm-up: one verified round per connection, not timed
        await asyncio.wait_for(run.begin(0.0, False, run.protos), limit)
        live = [p for p in run.protos if not p.failed]
        res.conns_active = len(live)
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(run.begin(t0 + seconds, True, live), limit)
        except TimeoutError:
            res.error(f"direct: {run.running} connections stuck past {limit:.0f} s")
        res.seconds = time.perf_counter() - t0
    finally:
        for t in transports:
            t.close()
    return res


# ================================================================================================
# the section
# ================================================================================================
def _figure(n: int, emu: EchoResult, dir_: EchoResult) -> Figure:
    ratio = emu.mbps / dir_.mbps if dir_.mbps > 0 else None
    bad = [
        f"{side}: {r.integrity_errors} integrity errors, {r.errors} errors, "
        f"{r.conns_active}/{r.n} conns ran"
        for side, r in (("emulated", emu), ("direct", dir_))
        if r.failed
    ]
    offl = f"{emu.offloaded}/{n} offloaded; " if emu.offloaded != n else ""
    if emu.recv_timeouts:
        offl += f"{emu.recv_timeouts} tcp.recv timeouts (asked again); "
    note = (
        f"ops/s {emu.ops_per_s:,.0f} vs {dir_.ops_per_s:,.0f}; p99 round trip "
        f"{emu.p99_ms:.1f} vs {dir_.p99_ms:.1f} ms (p50 {emu.p50_ms:.1f} vs {dir_.p50_ms:.1f}); "
        f"{offl}0 integrity errors"
    )
    if bad:
        note = "FAILED: " + "; ".join(bad) + "; " + note.rsplit(";", 1)[0]
    return Figure(
        "echo",
        f"verified echo, {n:,} conns x 16 KiB rounds, via daemon",
        emu.mbps,
        "MB/s",
        dir_.mbps,
        f"{n:,} uvloop Protocol conns to the same echo peer",
        ratio,
        "info",
        False if bad or emu.offloaded != n else None,
        note,
    )


async def run(quick: bool, daemon: list[str] | None = None) -> Section:
    sec = Section("echo")
    seconds = 2.0 if quick else 5.0
    try:
        counts = counts_from_env()
    except ValueError as exc:
        sec.skipped = str(exc)
        return sec
    limit = raise_nofile()
    need = max(counts) + 256
    if need > limit:
        sec.skipped = f"open-file limit {limit} is below the {need} sockets a side needs"
        return sec
    sec.raw.update(
        {"payload": ECHO_PAYLOAD, "window_s": seconds, "counts": {}, "rounds_per_client": 0}
    )
    sec.raw["rounds_per_client"] = ROUNDS_PER_CLIENT
    with ExitStack() as stack:
        port = daemon_port(stack, sec, daemon)
        if port is None:
            return sec
        nports = max(1, -(-max(counts) // CONNS_PER_PORT))
        echo = stack.enter_context(child("-m", "bench.peers", "echo", "--ports", str(nports)))
        echo_ports = ports_of(echo.expect("ready "))
        for n in counts:
            try:
                dir_ = await direct(echo_ports, n, seconds)
                emu = await emulated(port, echo_ports, n, seconds)
            except (ChimneyError, ConnectionError, TimeoutError, OSError, RuntimeError) as exc:
                sec.notes.append(f"N={n}: the run broke off: {exc!r}")
                sec.raw["counts"][str(n)] = {"broke_off": repr(exc)}
                continue
            fig = _figure(n, emu, dir_)
            sec.figures.append(fig)
            sec.raw["counts"][str(n)] = {
                "emulated": emu.as_map(),
                "direct": dir_.as_map(),
                "ratio": fig.ratio,
            }
            for side, r in (("emulated", emu), ("direct", dir_)):
                if r.failed:
                    sec.notes.append(
                        f"N={n} {side} FAILED: {r.integrity_errors} integrity errors, "
                        f"{r.errors} errors; e.g. {' | '.join(r.examples) or '-'}"
                    )
            if emu.drained:
                sec.notes.append(f"N={n}: daemon gauges not back to 0 after close: {emu.drained}")
    return sec
