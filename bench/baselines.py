"""The baselines the sections divide by, each run beside its emulated counterpart:

* raw uvloop loopback throughput: a Protocol sender, 64 KiB writes, to a BufferedProtocol sink
  in its own process (bulk_bench);
* a bare `asyncio.Queue` hop: a chain of tasks handing messages on (one in flight, a burst of 64,
  and items that are batches of 64) (hops_bench);
* a pipelined msgpack-RPC load client, used against the minimal uvloop msgpack-RPC echo server
  (bench.peers rpc-echo) and against the daemon alike (rpc_bench).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import msgpack

from bench.common import percentile
from bench.peers import SINK_END, SINK_HEADER, check_sink_end, check_sink_reply, sink_payloads

HOPS = 4  # hand-offs per message in every hop benchmark (a send through 1 IM makes 4 broker hops)
BURST = 64


# ================================================================================================
# raw loopback
# ================================================================================================
class _Sender(asyncio.Protocol):
    """Writes `total` bytes (8-byte sink header first) in 64 KiB writes, `payloads` in turn (the
    sink's pattern), obeying flow control."""

    def __init__(self, total: int, payloads: tuple[bytes, ...]) -> None:
        self.total = total
        self.payloads = payloads
        self.writes = 0
        self.sent = 0
        self.paused = False
        self.reply = b""
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.ended: asyncio.Future[None] | None = None  # the sink's answer to SINK_END (`end`)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.transport.write(SINK_HEADER.pack(self.total))
        self.sent = SINK_HEADER.size
        self._pump()

    def _pump(self) -> None:
        write = self.transport.write
        payloads = self.payloads
        while not self.paused and self.sent < self.total:
            payload = payloads[self.writes % len(payloads)]
            chunk = (
                payload
                if self.total - self.sent >= len(payload)
                else payload[: self.total - self.sent]
            )
            write(chunk)
            self.writes += 1
            self.sent += len(chunk)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def end(self) -> asyncio.Future[None]:
        """Write SINK_END (after the sink confirmed the stream); done when the sink answered it
        (the second answer, after `reply`'s first)."""
        self.ended = asyncio.get_running_loop().create_future()
        self.transport.write(SINK_END)
        self._answered()
        return self.ended

    def data_received(self, data: bytes) -> None:
        self.reply += data
        self._answered()

    def _answered(self) -> None:
        if len(self.reply) >= 1 + SINK_HEADER.size and not self.done.done():
            self.done.set_result(time.perf_counter() - self.t0)
        ended = self.ended
        answers = len(self.reply) // (1 + SINK_HEADER.size)
        if ended is not None and answers >= 2 and not ended.done():
            ended.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        gone = ConnectionError(f"sink went away: {exc}")
        for fut in (self.done, self.ended):
            if fut is not None and not fut.done():
                fut.set_exception(gone)


async def raw_send(port: int, total: int) -> float:
    """Seconds to move `total` bytes to the sink on `port` until the sink confirms them, every
    byte right and none after them (RuntimeError otherwise: the stream ends with SINK_END, after
    the clock stopped)."""
    loop = asyncio.get_running_loop()
    payloads = sink_payloads()
    transport, proto = await loop.create_connection(
        lambda: _Sender(total, payloads), "127.0.0.1", port
    )
    try:
        proto.start()
        seconds = await asyncio.wait_for(proto.done, 60.0)
        check_sink_reply(proto.reply, total)  # a wrong byte: the sink answers nothing more
        await asyncio.wait_for(proto.end(), 10.0)
    finally:
        transport.close()
    check_sink_end(proto.reply[1 + SINK_HEADER.size :], total)
    return seconds


# ================================================================================================
# bare asyncio.Queue hop
# ================================================================================================
async def queue_hops(n_messages: int, mode: str) -> float:
    """ns per hop per message through HOPS asyncio.Queue hand-offs (HOPS-1 relay tasks, the last
    hop back to the driver). mode: "single" (one message in flight), "burst" (64 messages put
    at once), "batch" (each item is a list of 64 messages)."""
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue() for _ in range(HOPS)]

    async def relay(src: asyncio.Queue[Any], dst: asyncio.Queue[Any]) -> None:
        get, put = src.get, dst.put_nowait
        while True:
            put(await get())

    tasks = [asyncio.create_task(relay(queues[i], queues[i + 1])) for i in range(HOPS - 1)]
    first, last = queues[0], queues[-1]
    try:
        await asyncio.sleep(0)
        t0 = time.perf_counter()
        if mode == "single":
            for i in range(n_messages):
                first.put_nowait(i)
                await last.get()
        elif mode == "burst":
            for _ in range(n_messages // BURST):
                for i in range(BURST):
                    first.put_nowait(i)
                for _ in range(BURST):
                    await last.get()
        else:
            batch = list(range(BURST))
            for _ in range(n_messages // BURST):
                first.put_nowait(batch)
                await last.get()
        elapsed = time.perf_counter() - t0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    n = n_messages if mode == "single" else (n_messages // BURST) * BURST
    return elapsed / (n * HOPS) * 1e9


# ================================================================================================
# msgpack-RPC load
# ================================================================================================
@dataclass
class RpcResult:
    requests: int
    seconds: float
    p50_us: float
    p99_us: float
    errors: int
    recv_calls: int = 0  # tcp.recv calls the rounds took (rpc_bench)
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def as_map(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": self.seconds,
            "req_per_s": self.rate,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "errors": self.errors,
            "recv_calls": self.recv_calls,
            "first_error": self.first_error,
        }


class RpcClient(asyncio.Protocol):
    """A pipelined msgpack-RPC client on a Protocol: `call()` returns a future per request;
    requests queued in one loop turn go out in one write."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 * 1024 * 1024)
        self.packer = msgpack.Packer(use_bin_type=True)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.out: list[bytes] = []
        self.next_id = 1
        self.closed: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def call(self, method: str, *params: Any) -> asyncio.Future[Any]:
        msgid = self.next_id
        self.next_id = (msgid + 1) & 0x7FFFFFFF or 1
        fut = self.loop.create_future()
        self.pending[msgid] = fut
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out.append(self.packer.pack([0, msgid, method, list(params)]))
        return fut

    def _flush(self) -> None:
        if self.out and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out = []

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        for msg in self.unpacker:
            if not isinstance(msg, list) or len(msg) != 4 or msg[0] != 1:
                continue  # notifications and junk: not what a load client waits on
            fut = self.pending.pop(msg[1], None)
            if fut is None or fut.done():
                continue
            if msg[2] is not None:
                fut.set_exception(RuntimeError(f"rpc error {msg[2]!r}"))
            else:
                fut.set_result(msg[3])

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"rpc connection lost: {exc}"))
        self.pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)


async def rpc_connect(port: int) -> tuple[asyncio.Transport, RpcClient]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(RpcClient, "127.0.0.1", port)
    return transport, proto


@dataclass(frozen=True, slots=True)
class Request:
    """One kind of load request and the one answer that is right for it."""

    method: str
    params: tuple[Any, ...] = ()
    answer: Any = None


#: `ping` answers "pong" (rpc-contract.md, and bench.peers rpc-echo alike)
PING = Request("ping", (), "pong")


async def rpc_load(
    client: RpcClient,
    in_flight: int,
    seconds: float,
    request: Request = PING,
    max_requests: int = 2_000_000,
) -> RpcResult:
    """Keep `in_flight` requests outstanding for `seconds` (or `max_requests`); latency of each.
    An error answer, a lost connection and an answer other than `request.answer` are errors: a
    server that answers fast and wrong is not fast."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0
    first_error = ""
    done = loop.create_future()
    issued = 0
    end = time.perf_counter() + seconds
    outstanding = 0

    def issue() -> None:
        nonlocal issued, outstanding
        issued += 1
        outstanding += 1
        t = time.perf_counter()
        fut = client.call(request.method, *request.params)
        fut.add_done_callback(lambda f, t=t: finished(f, t))  # type: ignore[misc]

    def finished(fut: asyncio.Future[Any], t: float) -> None:
        nonlocal errors, outstanding, first_error
        now = time.perf_counter()
        outstanding -= 1
        exc = fut.exception()
        if exc is not None:
            errors += 1
            first_error = first_error or repr(exc)
        elif fut.result() != request.answer:
            errors += 1
            first_error = first_error or (
                f"{request.method} answered {fut.result()!r}, not {request.answer!r}"
            )
        latencies.append(now - t)
        if now < end and issued < max_requests and not client.closed.done():
            issue()
        elif outstanding == 0 and not done.done():
            done.set_result(now)

    t0 = time.perf_counter()
    for _ in range(in_flight):
        issue()
    t1 = await asyncio.wait_for(done, seconds + 30.0)
    return RpcResult(
        len(latencies),
        t1 - t0,
        percentile(latencies, 50) * 1e6,
        percentile(latencies, 99) * 1e6,
        errors,
        first_error=first_error,
    )
