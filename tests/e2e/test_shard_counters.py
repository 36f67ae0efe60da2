"""The summed counters of a daemon of two shards across a shard's restart (docs/metrics.md
"Shards"): the supervisor keeps what each shard's earlier processes counted, so a
`chimney_*_total` and a latency histogram's counts never go down while the daemon runs,
whichever shard restarts and whichever shard answers; what a shard counted and nobody read
survives its clean stop exactly, and its kill up to the last report it sent the supervisor."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chimney_client import PeerServer
from tests.e2e.support import Daemon, wait_until
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


async def test_a_clean_stop_of_a_shard_keeps_its_unread_counts_once(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    """docs/metrics.md "Shards": a summed counter counts what every shard's processes have
    done since the daemon started. A shard stopped cleanly (SIGTERM) reports its counters on
    its way out: what it counted after the last read is kept, and counted once."""
    with sharded(tmp_path) as d:
        async with closing(await on_shards(d)) as c:
            conns = {k: await c[k].tcp_connect("127.0.0.1", echo_peer.port) for k in (0, 1)}
            for k in (0, 1):
                await echo(c[k], conns[k], b"read once")
            before = nic(await c[0].stack_stats())
            await echo(c[1], conns[1], DATA)
            victim = shard_pid(await c[0].stack_info(), 1)
            os.kill(victim, signal.SIGTERM)
            await restarted(c[0], 1, victim)
            after = nic(await c[0].stack_stats())
            await c[0].tcp_close(conns[0])
        assert after == (before[0] + len(DATA), before[1] + len(DATA)), (before, after)


def reported_since(d: Daemon, shard: int, since: float) -> bool:
    """Whether the supervisor has had a report of `shard`'s counters taken after `since`
    (the shard's clock is `time.monotonic()`, CLOCK_MONOTONIC: one clock for the machine)."""
    return any(
        e.get("shard") == shard and float(e.get("taken", 0.0)) > since
        for e in d.events_named("shard_counts")
    )


async def test_counts_made_since_the_last_read_survive_a_shard_kill(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    """docs/metrics.md "Shards": a shard reports its counters to the supervisor every
    second, and what a shard killed outright counted up to its last report is kept. Bytes a
    shard echoed after the last read, reported, and then the shard killed, stay in the totals."""
    with sharded(tmp_path, args=("--log-level", "debug")) as d:
        async with closing(await on_shards(d)) as c:
            conns = {k: await c[k].tcp_connect("127.0.0.1", echo_peer.port) for k in (0, 1)}
            for k in (0, 1):
                await echo(c[k], conns[k], b"read once")
            # shard 0 reads both shards' counters here, then shard 1 echoes more, reports it
            # (no read passes the supervisor meanwhile) and is killed
            before = nic(await c[0].stack_stats())
            await echo(c[1], conns[1], DATA)
            echoed = time.monotonic()

            async def reported() -> bool:
                return reported_since(d, 1, echoed)

            await wait_until(reported, RESTART_WAIT_S)
            victim = shard_pid(await c[0].stack_info(), 1)
            os.kill(victim, signal.SIGKILL)
            await restarted(c[0], 1, victim)
            after = nic(await c[0].stack_stats())
            await c[0].tcp_close(conns[0])
        assert after[0] >= before[0] + len(DATA), (before, after)
        assert after[1] >= before[1] + len(DATA), (before, after)
