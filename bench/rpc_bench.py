"""The daemon over msgpack-RPC (rpc-contract.md v1) against its baselines, in the same run:

* `ping` round trips per second, 1 and 64 in flight, against the minimal uvloop msgpack-RPC
  echo server of bench/baselines.py;
* end-to-end `tcp.send` of 64 KiB payloads through the daemon to an echo peer (send, then
  `tcp.recv` the echo back), against a plain loopback socket doing the same work.

The client is plain `msgpack` on an asyncio Protocol (baselines.RpcClient): it depends on the
contract only, not on the clients package. If `python -m chimneyd` cannot start, the section is
skipped with the reason.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import socket
import time
from contextlib import ExitStack
from typing import Any

from bench.baselines import RpcClient, RpcResult, rpc_connect, rpc_load
from bench.common import PAYLOAD, Child, Figure, Section, child, mbps, percentile, ports_of

READY = "chimneyd listening on"
_ADDR = re.compile(r"127\.0\.0\.1:(\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(stack: ExitStack, command: list[str] | None = None) -> tuple[Child, int]:
    """Start `python -m chimneyd --listen 127.0.0.1:0` (port 0 if the ready line names the real
    port, else a free port picked here); the daemon is ended when `stack` closes. `command`
    replaces `-m chimneyd` (the interpreter's arguments for another build of the daemon)."""
    if command is None:
        if importlib.util.find_spec("chimneyd.__main__") is None:
            raise RuntimeError(
                "chimneyd has no __main__ module yet (`python -m chimneyd` not runnable)"
            )
        command = ["-m", "chimneyd"]
    last = ""
    for port in (0, _free_port()):
        daemon = stack.enter_context(
            child(*command, "--listen", f"127.0.0.1:{port}", merge_stderr=True)
        )
        seen: list[str] = []
        try:
            end = time.monotonic() + 20.0
            while True:
                text = daemon.line(max(0.01, end - time.monotonic()))
                seen.append(text)
                if READY in text:
                    break
        except (TimeoutError, RuntimeError) as exc:
            daemon.close()
            last = f"{exc}; output: {' | '.join(seen[-5:])[-600:]}"
            continue
        m = _ADDR.search(text.split(READY, 1)[1])
        real = int(m.group(1)) if m else port
        if real == 0:
            daemon.close()
            last = f"ready line names no port: {text!r}"
            continue
        daemon.drain_in_background()
        return daemon, real
    raise RuntimeError(f"the daemon did not start: {last}")


def daemon_port(stack: ExitStack, sec: Section, command: list[str] | None) -> int | None:
    """The port of a daemon started in `stack`, or None with `sec.skipped` saying why not."""
    try:
        return start_daemon(stack, command)[1]
    except (RuntimeError, TimeoutError, OSError) as exc:
        sec.skipped = str(exc)
        return None


# ================================================================================================
# tcp.send end to end
# ================================================================================================
async def rpc_echo_rounds(client: RpcClient, conn: int, seconds: float, max_ops: int) -> RpcResult:
    """`tcp.send` 64 KiB, then `tcp.recv` until the 64 KiB came back; repeat."""
    payload = bytes(PAYLOAD)
    latencies: list[float] = []
    errors = 0
    recv_calls = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    while len(latencies) < max_ops and time.perf_counter() < end:
        t = time.perf_counter()
        sent = await asyncio.wait_for(client.call("tcp.send", conn, payload), 10.0)
        if sent != len(payload):
            errors += 1
        got = 0
        while got < len(payload):
            data = await asyncio.wait_for(
                client.call("tcp.recv", conn, len(payload) - got, 5000), 10.0
            )
            if not data:
                raise RuntimeError("echo peer closed the connection")
            got += len(data)
            recv_calls += 1
        latencies.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    result = RpcResult(
        len(latencies),
        elapsed,
        percentile(latencies, 50) * 1e6,
        percentile(latencies, 99) * 1e6,
        errors,
    )
    result.recv_calls = recv_calls
    return result


class _EchoRounds(asyncio.Protocol):
    """The plain-socket side: write 64 KiB, wait until 64 KiB came back, repeat."""

    def __init__(self, seconds: float, max_ops: int) -> None:
        self.payload = bytes(PAYLOAD)
        self.seconds = seconds
        self.max_ops = max_ops
        self.got = 0
        self.latencies: list[float] = []
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.t0 = time.perf_counter()
        self.end = self.t0 + self.seconds
        self._round()

    def _round(self) -> None:
        self.t = time.perf_counter()
        self.got = 0
        self.transport.write(self.payload)

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got < len(self.payload):
            return
        now = time.perf_counter()
        self.latencies.append(now - self.t)
        if len(self.latencies) < self.max_ops and now < self.end:
            self._round()
        elif not self.done.done():
            self.done.set_result(now - self.t0)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"echo peer went away: {exc}"))


async def plain_echo_rounds(port: int, seconds: float, max_ops: int) -> RpcResult:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(
        lambda: _EchoRounds(seconds, max_ops), "127.0.0.1", port
    )
    try:
        elapsed = await asyncio.wait_for(proto.done, seconds + 30.0)
    finally:
        transport.close()
    lat = proto.latencies
    return RpcResult(len(lat), elapsed, percentile(lat, 50) * 1e6, percentile(lat, 99) * 1e6, 0)


# ================================================================================================
# the section
# ================================================================================================
async def run(quick: bool, base: dict[str, Any], daemon: list[str] | None = None) -> Section:
    sec = Section("rpc")
    seconds = 0.5 if quick else 2.0
    with ExitStack() as stack:
        port = daemon_port(stack, sec, daemon)
        if port is None:
            return sec
        transport, client = await rpc_connect(port)
        try:
            if await asyncio.wait_for(client.call("ping"), 5.0) != "pong":
                raise RuntimeError("ping did not answer pong")
            await rpc_load(client, 8, min(0.2, seconds))  # warm up
            pings = {w: await rpc_load(client, w, seconds) for w in (1, 64)}
            echo = stack.enter_context(child("-m", "bench.peers", "echo"))
            echo_port = ports_of(echo.expect("ready "))[0]
            conn = await asyncio.wait_for(
                client.call("tcp.connect", "127.0.0.1", echo_port, {"offload": True}), 10.0
            )
            info = await asyncio.wait_for(client.call("tcp.info", conn), 5.0)
            max_ops = 2_000 if quick else 50_000
            await rpc_echo_rounds(client, conn, 0.2, 50)  # warm up
            via = await rpc_echo_rounds(client, conn, seconds, max_ops)
            await asyncio.wait_for(client.call("tcp.close", conn), 10.0)
            plain = await plain_echo_rounds(echo_port, seconds, max_ops)
        except (RuntimeError, ConnectionError, TimeoutError, OSError) as exc:
            sec.skipped = f"the daemon did not serve the benchmark: {exc!r}"
            return sec
        finally:
            transport.close()

    echo_base: dict[int, RpcResult] = base["rpc_echo"]
    sec.raw["ping"] = {str(w): r.as_map() for w, r in pings.items()}
    for w, r in pings.items():
        b = echo_base[w]
        sec.figures.append(
            Figure(
                "rpc",
                f"daemon ping, {w} in flight",
                r.rate,
                "req/s",
                b.rate,
                "minimal msgpack-RPC echo server",
                r.rate / b.rate,
                ">= 0.5",
                r.rate / b.rate >= 0.5,
                f"p50 {r.p50_us:.0f} / p99 {r.p99_us:.0f} µs vs "
                f"{b.p50_us:.0f} / {b.p99_us:.0f} µs; errors {r.errors}",
            )
        )
    via_mbps = mbps(via.requests * PAYLOAD, via.seconds)
    plain_mbps = mbps(plain.requests * PAYLOAD, plain.seconds)
    sec.raw["tcp_send_echo"] = {
        "daemon": via.as_map(),
        "plain": plain.as_map(),
        "daemon_mbps": via_mbps,
        "plain_mbps": plain_mbps,
        "path": info.get("path") if isinstance(info, dict) else None,
        "state": info.get("state") if isinstance(info, dict) else None,
    }
    sec.figures.append(
        Figure(
            "rpc",
            "tcp.send 64 KiB + recv echo, via daemon",
            via_mbps,
            "MB/s",
            plain_mbps,
            "plain loopback socket, same echo peer",
            via_mbps / plain_mbps if plain_mbps else None,
            note=f"p50 {via.p50_us / 1e3:.2f} / p99 {via.p99_us / 1e3:.2f} ms per round vs "
            f"{plain.p50_us / 1e3:.2f} / {plain.p99_us / 1e3:.2f} ms; "
            f"{via.recv_calls / max(1, via.requests):.1f} tcp.recv per round; "
            f"state {sec.raw['tcp_send_echo']['state']}",
        )
    )
    return sec
