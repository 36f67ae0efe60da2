"""A NIC a `nic_up` put back in service stays in service in a shard restarted after it
(docs/faults.md: a `nic_down` is listed until cleared, a `nic_up` acts at once and is never
listed; a restarted shard takes the active layer faults from the others, `restore_faults`):
the `nic_down` it takes must not take the NIC out again there while the daemon's other shards
have it in service."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from chimney_client import AsyncClient
from tests.e2e.support import wait_until
from tests.e2e.test_shard_faults import _pid, _restarted
from tests.e2e.test_shards import on_shards, sharded

TEAMING = (Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml").read_text()


async def _nic1_in_service(c: AsyncClient) -> dict[int, bool | None]:
    """Whether each shard's team0 has nic1 in service (stack.info `lowers`)."""
    out: dict[int, bool | None] = {}
    for s in (await c.stack_info())["shards"]:
        team = next((la for la in s.get("layers", []) if la["name"] == "team0"), {})
        lowers = team.get("lowers") or {}
        out[s["shard"]] = (lowers.get("nic1") or {}).get("in_service")
    return out


async def test_a_nic_brought_back_by_nic_up_stays_up_in_a_restarted_shard(tmp_path: Path) -> None:
    with sharded(tmp_path, TEAMING) as d:
        c = await on_shards(d)
        try:
            down = await c[0].fault_inject("nic_down", layer="nic1")

            async def out_in_both() -> bool:
                return await _nic1_in_service(c[0]) == {0: False, 1: False}

            await wait_until(out_in_both, 10)
            await c[0].fault_inject("nic_up", layer="nic1")

            async def back_in_both() -> bool:
                return await _nic1_in_service(c[0]) == {0: True, 1: True}

            await wait_until(back_in_both, 10)
            victim = await _pid(c[0], 1)
            await c[1].close()
            os.kill(victim, signal.SIGKILL)
            await wait_until(lambda: _restarted(c[0], victim), 30)
            # the restarted shard takes the nic_down (still listed) and the nic_up after it:
            # nic1 is in service in both shards, as it was before the restart
            try:
                await wait_until(back_in_both, 10)
            except AssertionError:
                states = await _nic1_in_service(c[0])
                raise AssertionError(f"nic1 in service after shard 1 restarted: {states}") from None
            # and the nic_down is still listed, in both shards: clearing it changes nothing
            listed = {f["id"]: f for f in await c[0].fault_list()}
            assert listed[down]["shards"] == [0, 1], listed
            assert await c[0].fault_clear(down) is True
            assert await _nic1_in_service(c[0]) == {0: True, 1: True}
        finally:
            await c[0].close()
