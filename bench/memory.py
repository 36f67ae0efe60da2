"""Memory per idle offloaded connection vs a bare uvloop server, each side in its own process so
its RSS is clean:

    engine side: `hold` peer process  <-  N offloaded connections from an engine process
    bare side:   `hold` server process <-  N plain uvloop connections from an `open` process

RSS delta / N after a warm-up, with gc run before each reading. Connections are spread over
several listening ports (perf-notes: past ~14k per port the kernel's port search slows).

    python -m bench.memory engine N PORTS   # prints `base <rss>` then `result <json>`
    python -m bench.memory open N PORTS     # prints `base <rss>`, `opened <n> <rss>`, holds
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from typing import Any

from bench.common import child, install_uvloop, ports_of, raise_nofile, rss_bytes
from bench.peers import CONNS_PER_PORT

WARMUP = 64
CONCURRENCY = 256


def _ports_for(n: int) -> int:
    return max(1, -(-n // CONNS_PER_PORT))


async def _settle() -> int:
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.05)
    return rss_bytes()


async def _in_waves(n: int, ports: list[int], make: Any) -> list[Any]:
    out: list[Any] = []
    for start in range(0, n, CONCURRENCY):
        wave = range(start, min(n, start + CONCURRENCY))
        out += await asyncio.gather(*(make(ports[i % len(ports)]) for i in wave))
    return out


async def engine_role(n: int, ports: list[int]) -> None:
    from bench.engine_bench import topology
    from chimneyd.engine import EngineSettings, start_engine

    engine = await start_engine(EngineSettings(), topology(1))
    warm = await _in_waves(WARMUP, ports, lambda p: engine.connect("127.0.0.1", p))
    for conn in warm:
        await engine.close(conn)
    await asyncio.sleep(0.1)
    base = await _settle()
    print(f"base {base}", flush=True)
    t0 = time.perf_counter()
    conns = await _in_waves(n, ports, lambda p: engine.connect("127.0.0.1", p, offload=True))
    opened_s = time.perf_counter() - t0
    rss = await _settle()
    offloaded = sum(1 for c in conns if engine.conn_info(c)["state"] == "offloaded")
    result = {"n": n, "base": base, "rss": rss, "offloaded": offloaded, "open_s": opened_s}
    print("result " + json.dumps(result), flush=True)
    os._exit(0)  # closing 10k connections one by one measures nothing; the peer is killed too


async def open_role(n: int, ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    warm = await _in_waves(
        WARMUP, ports, lambda p: loop.create_connection(asyncio.Protocol, "127.0.0.1", p)
    )
    for transport, _ in warm:
        transport.close()
    await asyncio.sleep(0.1)
    base = await _settle()
    print(f"base {base}", flush=True)
    held = await _in_waves(
        n, ports, lambda p: loop.create_connection(asyncio.Protocol, "127.0.0.1", p)
    )
    rss = await _settle()
    print(f"opened {len(held)} {rss}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # hold until the parent closes stdin


def _held(hold: Any) -> tuple[int, int]:
    rss, count = hold.ask("rss", "rss ").split()
    return int(rss), int(count)


def _wait_held(hold: Any, want: int, timeout: float) -> int:
    end = time.monotonic() + timeout
    while True:
        rss, count = _held(hold)
        if count >= want or time.monotonic() > end:
            return rss
        time.sleep(0.05)


def measure(n: int) -> dict[str, Any]:
    """One count: both sides, each with fresh processes."""
    nports = _ports_for(n)
    out: dict[str, Any] = {"n": n}
    # bare uvloop server holding n idle accepted sockets (and the client side that opened them)
    with child("-m", "bench.peers", "hold", "--ports", str(nports)) as hold:
        ports = ",".join(map(str, ports_of(hold.expect("ready "))))
        with child("-m", "bench.memory", "open", str(n), ports) as opener:
            client_base = int(opener.expect("base ", 30.0))
            server_base = _wait_held(hold, WARMUP, 10.0)
            # the warm-up connections are closed: the base is read with only listeners live
            opened, client_rss = opener.expect("opened ", 120.0).split()
            server_rss = _wait_held(hold, WARMUP + n, 30.0)
        out["bare_server_per_conn"] = (server_rss - server_base) / n
        out["bare_client_per_conn"] = (int(client_rss) - client_base) / n
        out["bare_opened"] = int(opened)
    # the engine holding n offloaded connections to a hold peer
    with child("-m", "bench.peers", "hold", "--ports", str(nports)) as hold:
        ports = ",".join(map(str, ports_of(hold.expect("ready "))))
        with child("-m", "bench.memory", "engine", str(n), ports) as eng:
            eng.expect("base ", 30.0)
            res = json.loads(eng.expect("result ", 180.0))
        out["engine_per_conn"] = (res["rss"] - res["base"]) / n
        out["offloaded"] = res["offloaded"]
        out["engine_open_s"] = res["open_s"]
    return out


def compare(counts: list[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    limit = raise_nofile()
    for n in counts:
        if n + 2 * WARMUP + 64 > limit:
            out[n] = {"skipped": f"open-file limit {limit} cannot hold {n} sockets per process"}
            continue
        try:
            out[n] = measure(n)
        except (TimeoutError, RuntimeError, ValueError) as exc:
            out[n] = {"skipped": f"{type(exc).__name__}: {exc}"}
    return out


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    role, n, ports = args[0], int(args[1]), ports_of(args[2])
    raise_nofile()
    install_uvloop()
    coro = engine_role(n, ports) if role == "engine" else open_role(n, ports)
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(coro)


if __name__ == "__main__":
    main()
