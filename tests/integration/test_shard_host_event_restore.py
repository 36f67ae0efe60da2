"""A `host_event` on a NIC of a team, restored into a restarted shard (`rpc.sharded.restore_faults`),
reaches that shard's MUX as the fault's start does (`MuxIm.lower_withheld`, docs/faults.md
`host_event`): the restore re-injects the fault, and with it the MUX is told. One cleared while
the shard started (its clear missed the shard; the second restore clears it there) tells the
MUX its end too: a rebalance there may plan onto the NIC again.

Two engines on the teaming topology, each with the shard part the daemon gives it
(`ShardParts`): shard 0, never restarted; shard 1 as restarted (a fresh engine)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from chimneyd.config import EngineConfig
from chimneyd.drivers.mux.mux import MuxIm
from chimneyd.engine import Engine, start_engine
from chimneyd.rpc.sharded import restore_faults
from tests.integration.support import eventually
from tests.integration.test_mux import teaming
from tests.integration.test_shard_nic_restore_orders import OneOther, _parts

SPEC = {"kind": "host_event", "layer": "nic1", "event": "media_disconnect"}


async def _told(engine: Engine) -> frozenset[str]:
    """The NICs the MUX of `engine` holds withheld, once every layer took what it was given."""
    mux = engine.driver_layer("team0")
    assert isinstance(mux, MuxIm)
    for _ in range(3):
        await eventually(lambda: not any(t.inbox for t in engine.tasks), "the layers idle")
        await asyncio.sleep(0)
    return mux.host_avoid


async def _scenario() -> None:
    layers = teaming("round-robin", 2)
    engines = [await start_engine(EngineConfig(), layers) for _ in range(2)]
    try:
        other, restarted = _parts(0, engines[0]), _parts(1, engines[1])
        cluster: Any = OneOther(restarted, other)
        other("fault_mirror", {"id": 1, "spec": SPEC, "home": 0, "everywhere": True})
        await restore_faults(cluster)  # before it listens
        assert await _told(engines[1]) == {"nic1"}, "the restored host_event did not reach the MUX"
        other("fault_clear", 1)  # while shard 1 starts: the clear misses it
        await restore_faults(cluster)  # once it runs: cleared here too
        assert await _told(engines[1]) == frozenset(), "the clear the restore found missed"
        assert await _told(engines[0]) == frozenset()
    finally:
        for engine in engines:
            await engine.shutdown(1.0)


def test_a_restored_host_event_and_its_missed_clear_reach_the_restarted_shard_s_mux() -> None:
    uvloop.run(asyncio.wait_for(_scenario(), 20))
