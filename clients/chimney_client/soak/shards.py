"""The soak against a daemon of several shards (`chimneyd --shards N`).

A daemon of shards is one RPC address; the kernel's SO_REUSEPORT hash hands each RPC client to
one shard, and every connection the client opens lives there. So the soak spreads its load by
opening enough RPC clients (`conns_per_rpc` is lowered so that every shard gets at least
`MIN_CLIENTS_PER_SHARD`), and — since each shard is one process with its own open-file limit —
a worker evens its own clients out: a client that lands on a shard already holding its share is
dialled again (at most `MAX_REDIALS` times). `--no-balance-shards` leaves the spread to the hash
alone. The report shows the spread as the daemon counts it (connections per shard at the end of
the ramp), the clients per shard and the redials.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from ..aio import AsyncClient

#: Every shard gets at least this many RPC clients, so the connections spread finely.
MIN_CLIENTS_PER_SHARD = 32
#: Dials one RPC client may take to land on a shard that still has room.
MAX_REDIALS = 40


def shard_count(info: dict[str, Any]) -> int:
    """Shards of the daemon, from its stack.info (1: a daemon of one process)."""
    return len(info.get("shards") or []) or 1


def shard_pids(info: dict[str, Any]) -> dict[int, int]:
    """Shard → pid of its process, from stack.info (empty for a daemon of one process)."""
    return {
        int(s["shard"]): int(s["pid"])
        for s in info.get("shards") or []
        if s.get("state") == "running" and s.get("pid")
    }


def connections_per_shard(stats: dict[str, Any] | None) -> dict[int, int]:
    """Open connections per shard, as the daemon counts them (stack.stats)."""
    return {
        int(s["shard"]): int(s.get("connections") or 0)
        for s in (stats or {}).get("shards") or []
        if s.get("state") == "running"
    }


def conns_per_rpc(connections: int, shards: int, asked: int | None, default: int) -> int:
    """Connections per RPC client: as asked, else the default, lowered so that every shard
    gets `MIN_CLIENTS_PER_SHARD` clients."""
    if asked is not None:
        return asked
    if shards <= 1:
        return default
    return max(1, min(default, math.ceil(connections / (MIN_CLIENTS_PER_SHARD * shards))))


async def dial_balanced(
    n: int,
    shards: int,
    dial: Callable[[], Awaitable[AsyncClient]],
    balance: bool = True,
) -> tuple[list[AsyncClient], dict[int, int], int, list[int]]:
    """`n` RPC clients spread over `shards` shards (at most ceil(n / shards) on one when
    `balance`); returns them, how many landed on each shard, the redials it took, and the
    shard of each client (a fault put into one shard explains only its connections)."""
    clients: list[AsyncClient] = []
    where: list[int] = []
    per: dict[int, int] = {}
    quota = math.ceil(n / shards)
    redials = 0
    for _ in range(n):
        for attempt in range(MAX_REDIALS + 1):
            client = await dial()
            shard = int((await client.stack_info()).get("shard", 0))
            if not balance or shards <= 1 or per.get(shard, 0) < quota or attempt == MAX_REDIALS:
                break
            redials += 1
            await client.close()
        per[shard] = per.get(shard, 0) + 1
        clients.append(client)
        where.append(shard)
    return clients, per, redials, where


__all__ = [
    "MAX_REDIALS",
    "MIN_CLIENTS_PER_SHARD",
    "connections_per_shard",
    "conns_per_rpc",
    "dial_balanced",
    "shard_count",
    "shard_pids",
]
