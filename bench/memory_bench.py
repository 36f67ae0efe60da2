"""Memory per idle offloaded connection: the real daemon against a bare uvloop server.

Both sides run as separate processes and are read the same way, from outside: VmRSS of
/proc/PID/status, before and after N more idle connections, over N.

    daemon side: `chimneyd` (started as users run it: C allocator, RPC server, owner maps)
                 opens N offloaded connections (`tcp.connect`, through RPC) to a `hold` peer
    bare side:   a `hold` peer (uvloop server that keeps each accepted transport) accepts N
                 connections opened by `python -m bench.memory_bench open` (client side too)

Each side first opens WARM connections and keeps them: the base is read with the process warm
and not idle (an idle daemon gives memory back on a timer, which would move the base). One ramp
then opens connections up to each count of the scale (1k, 5k, 10k) and reads RSS once it has
settled. Ramps alternate between the sides, a fresh process pair each time.

    python -m bench.memory_bench open PORTS   # stdin `open K` → opens K more, prints `opened N`
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
from contextlib import ExitStack
from typing import Any

from bench.common import (
    Child,
    Section,
    SectionSkip,
    child,
    install_uvloop,
    ports_of,
    raise_nofile,
    rss_of,
)
from bench.context import Ctx
from bench.daemon import Daemon
from bench.judge import interleaved
from bench.peers import CONNS_PER_PORT
from bench.targets import count_key
from chimney_client.aio import AsyncClient

WARM = 64  # connections opened first and kept open on both sides
WAVE = 256  # connections opened at once
CONNS_PER_CLIENT = 4000  # under the daemon's max_connections_per_client (10,000)
SETTLE_S = 5.0  # longest wait for RSS to stop moving
STEP_TIMEOUT_S = 180.0


def settled_rss(pid: int) -> int:
    """RSS of `pid` once two readings 0.2 s apart agree within 0.5% (or after SETTLE_S)."""
    end = time.monotonic() + SETTLE_S
    last = rss_of(pid)
    while time.monotonic() < end:
        time.sleep(0.2)
        now = rss_of(pid)
        if abs(now - last) <= last * 0.005:
            return now
        last = now
    return last


def _held(hold: Child, want: int, timeout: float = 30.0) -> int:
    """Wait until the hold peer holds `want` connections; return how many it holds."""
    end = time.monotonic() + timeout
    while True:
        count = int(hold.ask("count", "held "))
        if count >= want or time.monotonic() > end:
            return count
        time.sleep(0.05)


def _ports(n: int) -> int:
    return max(1, math.ceil(n / CONNS_PER_PORT))


# ================================================================================================
# the bare side: a hold server and an opener, both read from outside
# ================================================================================================
def bare_ramp(counts: tuple[int, ...]) -> dict[str, Any]:
    with ExitStack() as stack:
        hold = stack.enter_context(
            child("-m", "bench.peers", "hold", "--ports", str(_ports(WARM + max(counts))))
        )
        ports = ",".join(map(str, ports_of(hold.expect("ready "))))
        opener = stack.enter_context(child("-m", "bench.memory_bench", "open", ports))
        opener.expect("ready ")
        opener.ask(f"open {WARM}", "opened ", STEP_TIMEOUT_S)
        _held(hold, WARM)
        server_base = settled_rss(hold.proc.pid)
        client_base = settled_rss(opener.proc.pid)
        out: dict[str, Any] = {"server_base": server_base, "client_base": client_base, "at": {}}
        opened = 0
        for n in counts:
            total = int(opener.ask(f"open {n - opened}", "opened ", STEP_TIMEOUT_S))
            opened = n
            held = _held(hold, WARM + n) - WARM
            if total != WARM + n or held != n:
                raise RuntimeError(f"bare server: {total - WARM} opened, {held} held of {n}")
            server = settled_rss(hold.proc.pid)
            client = settled_rss(opener.proc.pid)
            out["at"][n] = {
                "server_per_conn": (server - server_base) / n,
                "client_per_conn": (client - client_base) / n,
            }
        return out


async def open_role(ports: list[int]) -> None:
    """Opens connections on command and holds them (the bare server's client side)."""
    loop = asyncio.get_running_loop()
    held: list[Any] = []
    print(f"ready {len(ports)}", flush=True)
    i = 0
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        if not line.startswith("open "):
            continue
        k = int(line.split()[1])
        for start in range(0, k, WAVE):
            wave = range(start, min(k, start + WAVE))
            held += await asyncio.gather(
                *(
                    loop.create_connection(
                        asyncio.Protocol, "127.0.0.1", ports[(i + j) % len(ports)]
                    )
                    for j in wave
                )
            )
        i += k
        print(f"opened {len(held)}", flush=True)


# ================================================================================================
# the daemon side
# ================================================================================================
async def _offloaded(client: AsyncClient, targets: list[str]) -> int:
    layers = (await client.stack_stats()).get("layers") or {}
    return sum(int((layers.get(name) or {}).get("offloads_active", 0)) for name in targets)


async def daemon_ramp(ctx: Ctx, counts: tuple[int, ...]) -> dict[str, Any]:
    with ExitStack() as stack:
        hold = stack.enter_context(
            child("-m", "bench.peers", "hold", "--ports", str(_ports(WARM + max(counts))))
        )
        ports = ports_of(hold.expect("ready "))
        daemon: Daemon = ctx.start_daemon(stack)
        ctx.progress.step(f"daemon pid {daemon.pid}: opening {WARM} warm-up connections")
        clients: list[AsyncClient] = []
        try:
            for _ in range(math.ceil((WARM + max(counts)) / CONNS_PER_CLIENT)):
                clients.append(
                    await AsyncClient.connect(daemon.address, call_timeout=STEP_TIMEOUT_S)
                )
            info = await clients[0].stack_info()
            targets = [x["name"] for x in info.get("layers", []) if x.get("kind") == "target"]
            if not targets:
                raise RuntimeError(f"stack.info names no target layer: {info.get('layers')}")
            opened = 0

            async def open_more(k: int) -> None:
                nonlocal opened
                for start in range(0, k, WAVE):
                    wave = range(opened + start, opened + min(k, start + WAVE))
                    await asyncio.gather(
                        *(
                            clients[i % len(clients)].tcp_connect(
                                "127.0.0.1", ports[i % len(ports)], offload=True
                            )
                            for i in wave
                        )
                    )
                opened += k

            await open_more(WARM)
            # offloads_active also counts the neighbor and path objects the connections share:
            # the new connections are the increase over the warm base
            offloaded_base = await _offloaded(clients[0], targets)
            base = await asyncio.to_thread(settled_rss, daemon.pid)
            out: dict[str, Any] = {"base": base, "at": {}, "pid": daemon.pid}
            for n in counts:
                ctx.progress.step(f"daemon pid {daemon.pid}: {n:,} idle offloaded connections")
                await open_more(WARM + n - opened)
                offloaded = await _offloaded(clients[0], targets) - offloaded_base
                rss = await asyncio.to_thread(settled_rss, daemon.pid)
                out["at"][n] = {"per_conn": (rss - base) / n, "offloaded": offloaded}
            return out
        finally:
            # the section is done with it: a graceful stop of thousands of connections would
            # only cost time, so the daemon is killed, then the clients let go
            with contextlib.suppress(ProcessLookupError):
                daemon.proc.proc.kill()
            for c in clients:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.close(), 2.0)


# ================================================================================================
# the section
# ================================================================================================
async def run(ctx: Ctx, sec: Section) -> None:
    sc = ctx.scale
    counts = sc.memory_counts
    if not os.path.exists(f"/proc/{os.getpid()}/status"):
        raise SectionSkip("no-proc", "/proc/PID/status is missing")
    limit = raise_nofile()
    need = WARM + max(counts) + 256
    if need > limit:
        raise SectionSkip("nofile", f"open-file limit {limit}, a process here needs {need}")
    ctx.progress.begin(
        "memory", 2 * sc.memory_repeats, f"ramps to {', '.join(f'{n:,}' for n in counts)}"
    )

    async def bare() -> dict[str, Any]:
        ctx.progress.step(f"bare uvloop server: ramp to {max(counts):,} connections")
        return await asyncio.to_thread(bare_ramp, counts)

    async def emulated() -> dict[str, Any]:
        return await daemon_ramp(ctx, counts)

    def advance(_i: int) -> None:
        ctx.progress.advance(2)

    got = await interleaved({"bare": bare, "daemon": emulated}, sc.memory_repeats, advance)
    sec.raw["ramps"] = got
    sec.raw["warm_connections"] = WARM
    for n in counts:
        d = [r["at"][n] for r in got["daemon"]]
        b = [r["at"][n] for r in got["bare"]]
        offloaded = min(x["offloaded"] for x in d)
        client = sorted(x["client_per_conn"] for x in b)[len(b) // 2]
        sec.add(
            count_key("memory", n),
            f"RSS per idle offloaded connection, {n:,} conns (daemon process)",
            "B/conn",
            [x["per_conn"] for x in d],
            [x["server_per_conn"] for x in b],
            "bare uvloop server process, same count",
            f"bare uvloop client side {client:,.0f} B/conn; {offloaded:,}/{n:,} offloaded",
            failed=None if offloaded == n else f"only {offloaded} of {n} connections offloaded",
        )
    malloc = os.environ.get("PYTHONMALLOC") or "malloc (chimneyd's default)"
    sec.notes.append(
        f"RSS (VmRSS) read from outside both processes, after {WARM} warm-up connections kept "
        f"open; per connection = (RSS at N - RSS at warm-up) / N; daemon allocator {malloc}, "
        "bare server on Python's default (pymalloc). Lower is better."
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "open":
        sys.exit("usage: python -m bench.memory_bench open PORT[,PORT...]")
    raise_nofile()
    install_uvloop()
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(open_role(ports_of(args[1])))


if __name__ == "__main__":
    main()
