"""Layer faults of a daemon of several shards last until cleared in every shard (README: a fault
on a layer reaches that layer in every shard), as in a daemon of one process: a shard that is
restarted, or that was down when the fault was made, takes the daemon's active layer faults
from the other shards."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from chimney_client import AsyncClient, PeerServer
from tests.e2e.support import wait_until
from tests.e2e.test_shards import closing, on_shards, sharded


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


async def test_a_fail_next_count_is_each_shards_and_fault_list_shows_where_it_still_acts(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    """docs/faults.md: with shards, a fail_next's (and raise_next's) `count` is how many calls
    fail in each shard (each shard counts its own layers' calls, synchronously). fault.list
    shows where it still acts (`active_shards`): used up in shard 0 after one refused
    initiate there, still armed in shard 1, whose next initiate it refuses too; then it is no
    longer listed."""
    with sharded(tmp_path) as d:
        async with closing(await on_shards(d)) as c:
            fid = await c[0].fault_inject(
                "fail_next", layer="nic0", call="MiniportInitiateOffload", count=1
            )
            listed: dict[int, list[dict[str, Any]]] = {}
            states: dict[int, str] = {}
            conns: dict[int, int] = {}
            for k in (0, 1):
                conns[k] = await c[k].tcp_connect("127.0.0.1", echo_peer.port)

                async def settled(k: int = k) -> bool:
                    states[k] = (await c[k].tcp_info(conns[k]))["state"]
                    return states[k] in ("host", "offloaded")

                await wait_until(settled, 10)
                listed[k] = await c[0].fault_list()
            await c[0].fault_clear(fid)
            for k in (0, 1):
                await c[k].tcp_close(conns[k])
            assert states == {0: "host", 1: "host"}
            assert [(f["id"], f["shards"], f["active_shards"]) for f in listed[0]] == [
                (fid, [0, 1], [1])
            ], listed
            assert listed[1] == [], listed
