"""The web view of a daemon of several shards, served by shard 0, answers for every shard
(docs/metrics.md): `/api/stats` sums them as `stack.stats` does, and `/api/conns` pages
through every shard's connections in id order."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

from chimney_client import PeerServer
from tests.e2e.test_shards import closing, on_shards, sharded


async def test_the_web_view_counts_every_shard(tmp_path: Path, echo_peer: PeerServer) -> None:
    with sharded(tmp_path, args=("--web", "127.0.0.1:0")) as d:
        line = await asyncio.to_thread(d.stdout.wait_for, "chimneyd web view on ", 30)
        base = line.split()[-1].rstrip("/")

        def get(path: str) -> Any:
            with urllib.request.urlopen(base + path, timeout=10) as resp:
                return json.loads(resp.read().decode())

        async with closing(await on_shards(d)) as c:
            conns = {k: await c[k].tcp_connect("127.0.0.1", echo_peer.port) for k in (0, 1)}
            stats = await asyncio.to_thread(get, "/api/stats")
            page = await asyncio.to_thread(get, "/api/conns")
            pages = [await asyncio.to_thread(get, f"/api/conns?size=1&page={p}") for p in (0, 1, 9)]
            rpc = await c[0].stack_stats()
            for k in (0, 1):
                await c[k].tcp_close(conns[k])
            assert rpc["connections"] == 2
            assert stats["connections"] == 2, stats
            assert (page["total"], page["pages"]) == (2, 1), page
            assert [r["id"] for r in page["rows"]] == sorted(conns.values()), page
            # one a page, in id order; a page past the end is the last one
            assert [(p["page"], p["pages"], [r["id"] for r in p["rows"]]) for p in pages] == [
                (0, 2, [conns[0]]),
                (1, 2, [conns[1]]),
                (1, 2, [conns[1]]),
            ], pages
