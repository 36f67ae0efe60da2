"""The summed counters of a daemon of two shards across a shard's restart (docs/metrics.md
"Shards"): the supervisor keeps what each shard's earlier processes counted, so a
`chimney_*_total` and a latency histogram's counts never go down while the daemon runs,
whichever shard restarts and whichever shard answers."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chimney_client import PeerServer
from tests.e2e.support import wait_until
from tests.e2e.test_shard_signals import RESTART_WAIT_S, restarted, shard_pid
from tests.e2e.test_shards import closing, echo, on_shards, sharded

Sample = tuple[str, tuple[tuple[str, str], ...]]
#: What a shard echoes between a read and its restart.
DATA = b"x" * 4096


def counters(text: str) -> dict[Sample, float]:
    """Every sample of every counter family (the `_total` series) and of every latency
    histogram (`_bucket`, `_count`, `_sum`: counters too) in a Prometheus text."""
    out: dict[Sample, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith("chimney_shard_") or fam.type not in ("counter", "histogram"):
            continue
        for s in fam.samples:
            if s.name.endswith(("_total", "_bucket", "_count", "_sum")):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def dips(before: dict[Any, float], after: dict[Any, float]) -> list[tuple[Any, Any]]:
    """The samples that went down (or went away) from `before` to `after`."""
    down = {k: (v, after.get(k, 0.0)) for k, v in before.items() if after.get(k, 0.0) < v}
    return sorted(down.items())[:8]


def nic(stats: dict[str, Any]) -> tuple[int, int]:
    layer = stats["layers"]["nic0"]
    return int(layer["bytes_sent"]), int(layer["bytes_received"])


async def test_metrics_totals_do_not_dip_when_shard_0_restarts(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    """docs/metrics.md "Shards": a `chimney_*_total`, and a histogram's bucket, `_count` and
    `_sum`, never go down while the daemon runs — shard 0, which serves `/metrics`, restarted
    included."""
    with sharded(tmp_path, args=("--metrics", "127.0.0.1:0")) as d:
        line = await asyncio.to_thread(d.stdout.wait_for, "chimneyd metrics on ", 30)
        url = line.split()[-1]
        async with closing(await on_shards(d)) as c:
            conns = {k: await c[k].tcp_connect("127.0.0.1", echo_peer.port) for k in (0, 1)}
            for k in (0, 1):
                await echo(c[k], conns[k], b"counted once, counted for good" * 50)
            before = counters(await asyncio.to_thread(scrape, url))
            assert any(n.startswith("chimney_rpc_request_seconds") for n, _ in before), before
            victim = shard_pid(await c[1].stack_info(), 0)
            os.kill(victim, signal.SIGKILL)
            await restarted(c[1], 0, victim)
            after: dict[Sample, float] = {}

            async def scraped() -> bool:
                nonlocal after
                try:
                    after = counters(await asyncio.to_thread(scrape, url))
                except OSError:
                    return False
                return True

            await wait_until(scraped, RESTART_WAIT_S)
            rpc = counters(await c[1].call("stack.metrics"))
            await c[1].tcp_close(conns[1])
        assert not dips(before, after), dips(before, after)
        # stack.metrics, from shard 1, sums the same way
        assert not dips(before, rpc), dips(before, rpc)


async def test_stack_stats_from_a_restarted_shard_does_not_dip(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    """docs/metrics.md "Shards": the totals are the daemon's, whichever shard answers: read
    from shard 0 before and after shard 0's own restart, they do not go down."""
    with sharded(tmp_path) as d:
        async with closing(await on_shards(d)) as c:
            conns = {k: await c[k].tcp_connect("127.0.0.1", echo_peer.port) for k in (0, 1)}
            for k in (0, 1):
                await echo(c[k], conns[k], DATA)
            before = nic(await c[0].stack_stats())
            victim = shard_pid(await c[1].stack_info(), 0)
            os.kill(victim, signal.SIGKILL)
            await restarted(c[1], 0, victim)
            await c[1].tcp_close(conns[1])
        async with closing(await on_shards(d)) as c:
            after = nic(await c[0].stack_stats())
        assert before[0] >= 2 * len(DATA), before
        assert after[0] >= before[0] and after[1] >= before[1], (before, after)
