"""`/metrics` of a daemon of two shards across a shard's restart: the latency histograms'
`_count`, `_sum` and `_bucket` series are counters, and a shard's restart is not the daemon's
(docs/metrics.md, Shards)."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.support import wait_until
from tests.e2e.test_shards import closing, on_shards, sharded

FAMILY = "chimney_rpc_request_seconds"
PINGS = 200


def scrape(url: str) -> dict[str, float]:
    """The RPC histogram's `_count`, `_sum` and `+Inf` bucket, summed over its methods."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {"count": 0.0, "sum": 0.0, "inf": 0.0}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == FAMILY + "_count":
                out["count"] += s.value
            elif s.name == FAMILY + "_sum":
                out["sum"] += s.value
            elif s.name == FAMILY + "_bucket" and s.labels.get("le") == "+Inf":
                out["inf"] += s.value
    return out


async def test_sharded_histograms_never_go_down_when_a_shard_restarts(tmp_path: Path) -> None:
    with sharded(tmp_path, args=("--web", "127.0.0.1:0")) as d:
        line = await asyncio.to_thread(d.stdout.wait_for, "chimneyd web view on ", 30)
        url = line.split(" on ", 1)[1].strip().rstrip("/")
        async with closing(await on_shards(d)) as c:
            for _ in range(PINGS):
                await c[1].ping()
            before = await asyncio.to_thread(scrape, url)
            victim = next(s["pid"] for s in (await c[0].stack_info())["shards"] if s["shard"] == 1)
            os.kill(victim, signal.SIGKILL)

            async def restarted() -> bool:
                shards = {s["shard"]: s for s in (await c[0].stack_info())["shards"]}
                return shards[1]["state"] == "running" and shards[1]["pid"] != victim

            await wait_until(restarted, 30)
            after = await asyncio.to_thread(scrape, url)
        assert before["count"] >= PINGS, before
        # shard 1's pings stay counted: its new process's own requests add on top
        assert all(after[k] >= before[k] for k in before), (before, after)
