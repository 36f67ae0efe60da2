"""Two failures of one NIC on a daemon of shards, one in every shard and one in shard 1 only
(`shard`): each shard's nic0 is failed while a fault listed there holds it, so clearing the
one in every shard brings nic0 back in shard 0 only, and fault.list lists the other, in shard
1 (docs/faults.md `target_failure`: several failures of one NIC fail it once, until the last is
cleared; each shard's layers are its own)."""

from __future__ import annotations

from pathlib import Path

from chimney_client import PeerServer
from tests.e2e.support import wait_until
from tests.e2e.test_shard_faults import _nic0_states
from tests.e2e.test_shards import closing, on_shards, sharded


async def test_failures_of_one_nic_in_all_shards_and_in_one_each_hold_it_where_they_act(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    with sharded(tmp_path) as d:
        async with closing(await on_shards(d)) as c:
            everywhere = await c[0].fault_inject("target_failure", layer="nic0")
            in_one = await c[0].fault_inject("target_failure", layer="nic0", shard=1)

            async def both_failed() -> bool:
                return await _nic0_states(c[0]) == {0: "failed", 1: "failed"}

            await wait_until(both_failed, 10)
            assert await c[0].fault_clear(everywhere) is True

            async def shard0_back() -> bool:
                return (await _nic0_states(c[0]))[0] == "running"

            await wait_until(shard0_back, 10)
            listed = await c[0].fault_list()
            assert [(f["id"], f["shards"]) for f in listed] == [(in_one, [1])], listed
            # shard 1's nic0 is still failed: an offload there is refused (OFFLOAD_PAUSE),
            # while shard 0's takes one again
            conns = {k: await c[k].tcp_connect("127.0.0.1", echo_peer.port) for k in (0, 1)}
            states = {k: (await c[k].tcp_info(conns[k]))["state"] for k in (0, 1)}
            assert states == {0: "offloaded", 1: "host"}, states
            assert (await _nic0_states(c[0]))[1] == "failed"
            assert await c[0].fault_clear(in_one) is True

            async def both_back() -> bool:
                return await _nic0_states(c[0]) == {0: "running", 1: "running"}

            await wait_until(both_back, 10)
            assert await c[0].fault_list() == []
            for k in (0, 1):
                await c[k].tcp_close(conns[k])
