"""Layer faults of a daemon of several shards last until cleared in every shard (README: a fault
on a layer reaches that layer in every shard), as in a daemon of one process: a shard that is
restarted, or that was down when the fault was made, takes the daemon's active layer faults
from the other shards."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from chimney_client import AsyncClient
from tests.e2e.support import wait_until
from tests.e2e.test_shards import on_shards, sharded


async def _pid(c: AsyncClient, shard: int) -> int:
    info = await c.stack_info()
    return int(next(s["pid"] for s in info["shards"] if s["shard"] == shard))


async def _nic0_states(c: AsyncClient) -> dict[int, Any]:
    info = await c.stack_info()
    return {
        s["shard"]: next((la["state"] for la in s.get("layers", []) if la["name"] == "nic0"), None)
        for s in info["shards"]
    }


async def _restarted(c: AsyncClient, victim: int) -> bool:
    shards = {s["shard"]: s for s in (await c.stack_info())["shards"]}
    return shards[1]["state"] == "running" and shards[1]["pid"] != victim


async def test_a_layer_fault_still_acts_in_a_restarted_shard(tmp_path: Path) -> None:
    """A target_failure on nic0 made before shard 1 is killed fails nic0 in the restarted
    shard 1 too, and fault.list, which lists it, says so (`shards` [0, 1])."""
    with sharded(tmp_path) as d:
        c = await on_shards(d)
        try:
            fid = await c[0].fault_inject("target_failure", layer="nic0")
            victim = await _pid(c[0], 1)
            await c[1].close()
            os.kill(victim, signal.SIGKILL)
            await wait_until(lambda: _restarted(c[0], victim), 30)
            listed = await c[0].fault_list()
            states = await _nic0_states(c[0])
            assert await c[0].fault_clear(fid) is True
            assert [(f["id"], f["shards"]) for f in listed] == [(fid, [0, 1])], listed
            assert states == {0: "failed", 1: "failed"}, (states, listed)
            assert await c[0].fault_list() == []
        finally:
            await c[0].close()


async def test_a_layer_fault_made_while_a_shard_is_down_reaches_it_once_running(
    tmp_path: Path,
) -> None:
    """A fault made while shard 1 is being restarted (`down`) is put into it once it runs."""
    with sharded(tmp_path) as d:
        c = await on_shards(d)
        try:
            victim = await _pid(c[0], 1)
            await c[1].close()
            os.kill(victim, signal.SIGKILL)

            async def down() -> bool:
                shards = {s["shard"]: s for s in (await c[0].stack_info())["shards"]}
                return shards[1]["state"] == "down"

            await wait_until(down, 30)
            fid = await c[0].fault_inject("target_failure", layer="nic0")
            await wait_until(lambda: _restarted(c[0], victim), 30)

            async def both_failed() -> bool:
                return await _nic0_states(c[0]) == {0: "failed", 1: "failed"}

            await wait_until(both_failed, 10)
            listed = await c[0].fault_list()
            assert await c[0].fault_clear(fid) is True
            assert [(f["id"], f["shards"]) for f in listed] == [(fid, [0, 1])], listed
        finally:
            await c[0].close()
