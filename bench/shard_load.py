"""One shard's load for the shards section, in a process of its own:

    python -m bench.shard_load RPC_PORT SHARD ECHO_PORTS CONNS

It dials the daemon on RPC_PORT until its clients are on shard SHARD (the kernel's SO_REUSEPORT
hash puts each where it will; `stack.info` says which: one that lands elsewhere is closed),
prints `ready`, then answers one command a line on stdin with one line on stdout, `<command>
<json>`:

* `open`: CLIENTS_PER_SHARD raw msgpack-RPC clients for ping, and CONNS verified echo
  connections (bench.echo_bench's emulated side: 16 KiB rounds to the peers on ECHO_PORTS,
  every byte checked) on RPC clients of this shard, opened and warmed up. Says where every
  client landed.
* `ping SECONDS`: IN_FLIGHT pings kept out on each ping client for a window.
* `echo SECONDS`: a verified echo window over every connection.
* `close`: every echo connection closed; `drained`: the daemon's gauges once they are 0 (after
  every load process closed its connections: the gauges are the daemon's, all shards'), and
  every client closed.

The process ends when its stdin closes. The section starts one per shard of each daemon, so
the clients' CPU grows with the shards they load instead of all sharing the bench's one
process (bench/shards_bench.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bench.baselines import RpcClient, rpc_connect, rpc_load
from bench.common import install_uvloop, ports_of, raise_nofile
from bench.echo_bench import CALL_TIMEOUT_S, EmulatedSide, _drained
from chimney_client.aio import AsyncClient

#: ping clients per shard, each keeping IN_FLIGHT requests out: 128 in flight on a shard, far
#: more than one shard needs to be kept busy
CLIENTS_PER_SHARD = 4
IN_FLIGHT = 32  # per client, well under the daemon's 256
MAX_DIALS = 64  # dials to get the clients onto this shard


async def on_shard(
    shard: int, k: int, dial: Callable[[], Awaitable[tuple[Any, int]]], close: Any
) -> list[Any]:
    """`k` clients on `shard` (`dial` gives a client and the shard it landed on; one that
    landed elsewhere is closed with `close`)."""
    out: list[Any] = []
    landed: dict[int, int] = {}
    for _ in range(MAX_DIALS * k):
        client, where = await dial()
        landed[where] = landed.get(where, 0) + 1
        if where == shard:
            out.append(client)
            if len(out) == k:
                return out
        else:
            await close(client)
    raise RuntimeError(f"{MAX_DIALS * k} dials landed on shards {landed}, {len(out)} on {shard}")


class ShardEcho(EmulatedSide):
    """bench.echo_bench's emulated side with every RPC client on one shard."""

    def __init__(self, rpc_port: int, echo_ports: list[int], n: int, shard: int) -> None:
        super().__init__(rpc_port, echo_ports, n)
        self.shard = shard

    async def clients(self, k: int) -> list[AsyncClient]:
        async def dial() -> tuple[AsyncClient, int]:
            c = await AsyncClient.connect(f"127.0.0.1:{self.rpc_port}", call_timeout=CALL_TIMEOUT_S)
            return c, int((await c.stack_info()).get("shard", 0))

        async def close(c: AsyncClient) -> None:
            await c.close()

        return await on_shard(self.shard, k, dial, close)


class Load:
    def __init__(self, port: int, shard: int, echo_ports: list[int], conns: int) -> None:
        self.port = port
        self.shard = shard
        self.echo = ShardEcho(port, echo_ports, conns, shard)
        self.pings: list[RpcClient] = []

    async def open(self) -> dict[str, Any]:
        async def dial() -> tuple[RpcClient, int]:
            _, client = await rpc_connect(self.port)
            info = await asyncio.wait_for(client.call("stack.info"), CALL_TIMEOUT_S)
            return client, int(info.get("shard", 0)) if isinstance(info, dict) else 0

        async def close(c: RpcClient) -> None:
            c.transport.close()

        self.pings = await on_shard(self.shard, CLIENTS_PER_SHARD, dial, close)
        await self.echo.open()
        ping_on = [await self._shard_of(c) for c in self.pings]
        echo_on = [int((await s.client.stack_info()).get("shard", 0)) for s in self.echo.slots]
        return {
            "pid": os.getpid(),
            "shard": self.shard,
            "ping_clients_on": ping_on,
            "echo_clients_on": echo_on,
            "echo_conns": self.echo.n,
            "setup": self.echo.setup.as_map(),
        }

    @staticmethod
    async def _shard_of(client: RpcClient) -> int:
        """The shard `stack.info` names (a daemon of one shard names none: 0); -1 for no map."""
        info = await asyncio.wait_for(client.call("stack.info"), CALL_TIMEOUT_S)
        return int(info.get("shard", 0)) if isinstance(info, dict) else -1

    async def ping(self, seconds: float) -> dict[str, Any]:
        results = await asyncio.gather(*(rpc_load(c, IN_FLIGHT, seconds) for c in self.pings))
        first = next((r.first_error for r in results if r.errors), "")
        return {
            "requests": sum(r.requests for r in results),
            "seconds": max(r.seconds for r in results),
            "p50_us": statistics.median(r.p50_us for r in results),
            "p99_us": max(r.p99_us for r in results),
            "errors": sum(r.errors for r in results),
            "first_error": first,
        }

    async def window(self, seconds: float) -> dict[str, Any]:
        res = await self.echo.window(seconds)
        return {**res.as_map(), "latencies": res.latencies}

    async def close(self) -> dict[str, Any]:
        slots = self.echo.slots
        self.echo.slots = []  # keep the clients: `drained` reads the daemon's gauges on one
        try:
            await self.echo.close()
        finally:
            self.echo.slots = slots
        return self.echo.setup.as_map()

    async def drained(self) -> dict[str, Any]:
        left = await _drained(self.echo.slots[0].client) if self.echo.slots else {}
        for slot in self.echo.slots:
            await asyncio.wait_for(slot.client.close(), 5.0)
        for c in self.pings:
            c.transport.close()
        return {"drained": left}


async def serve(load: Load) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while line := (await reader.readline()).decode().split():
        cmd, args = line[0], line[1:]
        if cmd == "open":
            out = await load.open()
        elif cmd == "ping":
            out = await load.ping(float(args[0]))
        elif cmd == "echo":
            out = await load.window(float(args[0]))
        elif cmd == "close":
            out = await load.close()
        elif cmd == "drained":
            out = await load.drained()
        else:
            raise ValueError(f"no command {cmd!r}")
        print(f"{cmd} {json.dumps(out)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    port, shard, echo_ports, conns = int(args[0]), int(args[1]), ports_of(args[2]), int(args[3])
    raise_nofile()
    install_uvloop()
    asyncio.run(serve(Load(port, shard, echo_ports, conns)))


if __name__ == "__main__":
    main()
