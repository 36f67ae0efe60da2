"""The in-flight limits of a daemon of several shards are those of a daemon of one process:
the daemon-wide methods (`stack.*`, `fault.*`, `events.subscribe`) answer at once in one process
and are not counted against `rpc.max_in_flight` (docs/rpc.md); sharded they wait for the other
shards, so they have a small bound of their own instead (`DAEMON_WIDE_IN_FLIGHT`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chimney_client import PeerServer
from chimney_client.errors import LimitError
from tests.e2e.support import Daemon, start_daemon
from tests.e2e.test_shards import closing, on_shards, sharded


@contextlib.contextmanager
def daemon_of(tmp_path: Path, shards: int, config: str | None = None) -> Iterator[Daemon]:
    """A daemon of `shards` shards (1: one process), stopped clean at the end."""
    if shards > 1:
        with sharded(tmp_path, config, shards=shards) as d:
            yield d
        return
    d = start_daemon(tmp_path, config, args=("--shards", "1"))
    try:
        yield d
        d.assert_clean_stop()
    finally:
        d.kill()


@pytest.mark.parametrize("shards", [1, 2])
async def test_daemon_wide_methods_answer_when_the_in_flight_slots_are_full(
    tmp_path: Path, echo_peer: PeerServer, shards: int
) -> None:
    """A client whose `max_in_flight` slots are all taken by waiting requests still gets
    `stack.stats`, `stack.info`, `stack.metrics`, `fault.list`, `fault.inject` and
    `fault.clear` answered, sharded or not."""
    with daemon_of(tmp_path, shards, "[rpc]\nmax_in_flight = 2\n") as d:
        c = await d.aclient()
        try:
            conn = await c.tcp_connect("127.0.0.1", echo_peer.port)
            waits = [asyncio.ensure_future(c.tcp_recv(conn, 10, 3_000)) for _ in range(2)]
            await asyncio.sleep(0.3)
            calls: list[tuple[str, Any]] = [
                ("stack.stats", c.stack_stats),
                ("stack.info", c.stack_info),
                ("stack.metrics", lambda: c.call("stack.metrics")),
                ("fault.inject", lambda: c.fault_inject("target_failure", layer="nic0")),
                ("fault.list", c.fault_list),
                ("fault.clear", lambda: c.fault_clear("*")),
            ]
            problems = []
            for name, call in calls:
                try:
                    await call()
                except LimitError as exc:
                    problems.append(f"{name}: {exc}")
            # they end with TIMEOUT: nothing was sent
            ended = await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 15)
            assert all(isinstance(e, Exception) for e in ended), ended
            await c.tcp_close(conn)
            assert problems == []
        finally:
            await c.close()


@pytest.mark.parametrize("shards", [1, 2])
async def test_stack_stats_does_not_count_itself_in_flight(tmp_path: Path, shards: int) -> None:
    """An idle daemon has nothing in flight: `stack.stats` (answered at once in one process)
    does not count its own request in `rpc.in_flight`, nor in any shard's."""
    with daemon_of(tmp_path, shards) as d:
        async with await d.aclient() as c:
            stats = await c.stack_stats()
            assert stats["rpc"]["in_flight"] == 0, stats["rpc"]
            for part in stats.get("shards", []):
                assert part["rpc"]["in_flight"] == 0, part


async def test_daemon_wide_requests_waiting_at_once_are_bounded(tmp_path: Path) -> None:
    """While a shard does not answer, one client may have `DAEMON_WIDE_IN_FLIGHT` daemon-wide
    requests waiting; the next one is `LIMIT` at once (it asks no shard), and once they have
    ended (TIMEOUT) the client is answered again."""
    from chimneyd.rpc.sharded import DAEMON_WIDE_IN_FLIGHT

    with sharded(tmp_path, "[daemon]\ncontrol_timeout_s = 1.0\n") as d:
        async with closing(await on_shards(d)) as c:
            info = await c[0].stack_info()
            pid = next(s["pid"] for s in info["shards"] if s["shard"] == 1)
            os.kill(pid, signal.SIGSTOP)
            try:
                waiting = [
                    asyncio.ensure_future(c[0].stack_stats()) for _ in range(DAEMON_WIDE_IN_FLIGHT)
                ]
                await asyncio.sleep(0.2)
                with pytest.raises(LimitError, match="daemon-wide"):
                    await asyncio.wait_for(c[0].stack_stats(), 1.0)
                ended = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 15)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert all(isinstance(e, Exception) for e in ended), ended
            assert (await c[0].stack_stats())["rpc"]["in_flight"] == 0
