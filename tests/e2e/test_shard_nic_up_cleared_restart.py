"""A NIC a `nic_up` put back in service stays in service in a shard restarted after it, also
once that `nic_up` is cleared (fault.clear of a used-up fault takes its entry away, and
`fault.clear "*"` clears a client's used-up ones): clearing a `nic_up` undoes nothing
(docs/faults.md `nic_up`: it acts at once), so the other shards keep the NIC in service, and
a restarted shard that takes the still listed `nic_down` alone would have it out."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from chimney_client import AsyncClient
from tests.e2e.support import wait_until
from tests.e2e.test_shard_faults import _pid, _restarted
from tests.e2e.test_shard_nic_up_restart import TEAMING, _nic1_in_service
from tests.e2e.test_shards import on_shards, sharded


async def test_a_nic_up_cleared_still_holds_in_a_restarted_shard(tmp_path: Path) -> None:
    with sharded(tmp_path, TEAMING) as d:
        c: list[AsyncClient] = await on_shards(d)
        try:
            down = await c[0].fault_inject("nic_down", layer="nic1")

            async def out_in_both() -> bool:
                return await _nic1_in_service(c[0]) == {0: False, 1: False}

            await wait_until(out_in_both, 10)
            up = await c[0].fault_inject("nic_up", layer="nic1")

            async def back_in_both() -> bool:
                return await _nic1_in_service(c[0]) == {0: True, 1: True}

            await wait_until(back_in_both, 10)
            # clearing the used-up nic_up changes nothing in the running shards
            assert await c[0].fault_clear(up) is True
            assert await _nic1_in_service(c[0]) == {0: True, 1: True}
            victim = await _pid(c[0], 1)
            await c[1].close()
            os.kill(victim, signal.SIGKILL)
            await wait_until(lambda: _restarted(c[0], victim), 30)
            try:
                await wait_until(back_in_both, 10)
            except AssertionError:
                states = await _nic1_in_service(c[0])
                raise AssertionError(f"nic1 in service after shard 1 restarted: {states}") from None
            listed = {f["id"]: f for f in await c[0].fault_list()}
            assert listed[down]["shards"] == [0, 1], listed
            assert up not in listed, listed
        finally:
            await c[0].close()


async def test_a_nic_taken_out_again_after_its_nic_up_stays_out_in_a_restarted_shard(
    tmp_path: Path,
) -> None:
    """`nic_down`, `nic_up`, `nic_down` again: the NIC is out of service in every shard, and a
    shard restarted then takes the two `nic_down`s without the `nic_up` between them (the
    order the other shards took them in), not the `nic_up` after both."""
    with sharded(tmp_path, TEAMING) as d:
        c: list[AsyncClient] = await on_shards(d)
        try:

            async def out_in_both() -> bool:
                return await _nic1_in_service(c[0]) == {0: False, 1: False}

            async def back_in_both() -> bool:
                return await _nic1_in_service(c[0]) == {0: True, 1: True}

            first = await c[0].fault_inject("nic_down", layer="nic1")
            await wait_until(out_in_both, 10)
            await c[0].fault_inject("nic_up", layer="nic1")
            await wait_until(back_in_both, 10)
            second = await c[0].fault_inject("nic_down", layer="nic1")
            await wait_until(out_in_both, 10)
            victim = await _pid(c[0], 1)
            await c[1].close()
            os.kill(victim, signal.SIGKILL)
            await wait_until(lambda: _restarted(c[0], victim), 30)
            # what the restarted shard took is in place once its faults are listed there
            listed = {f["id"]: f for f in await c[0].fault_list()}
            for fid in (first, second):
                assert listed[fid]["shards"] == [0, 1], listed
            states = await _nic1_in_service(c[0])
            assert states == {0: False, 1: False}, f"nic1 in service after the restart: {states}"
            # cleared, both: the NIC is back in every shard
            assert await c[0].fault_clear(first) is True
            assert await c[0].fault_clear(second) is True
            await wait_until(back_in_both, 10)
        finally:
            await c[0].close()
