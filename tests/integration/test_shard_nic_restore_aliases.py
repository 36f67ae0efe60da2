"""A NIC under a team through an IM (team0 -> imA -> nic0) has two names a `nic_down` or
`nic_up` may give, `nic0` and `imA`, which are one and the same (docs/faults.md `nic_down`).
A shard restarted under it ends its restores with that NIC in or out of service as a shard
that took every fault in order has it (docs/faults.md `nic_up`, `rpc.sharded.restore_faults`),
whichever of its names each fault gave.

Two engines and a third as the shard restarted, each with the shard part the daemon gives it
(`ShardParts`), as in test_shard_nic_restore_orders.py; each fault goes where the sharded
`fault.inject` / `fault.clear` put it, called on the parts directly."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.config import EngineConfig
from chimneyd.engine import Engine, start_engine
from chimneyd.rpc.sharded import restore_faults
from tests.integration.support import eventually
from tests.integration.test_mux_nic_under_im import THROUGH_IM
from tests.integration.test_shard_nic_restore_orders import OneOther, _parts

#: (kind, layer) in order, each meant for every shard; ("clear", i): the i-th fault's clear
ORDERS = [
    [("nic_down", "nic0"), ("nic_up", "imA")],
    [("nic_down", "imA"), ("nic_up", "nic0")],
    [("nic_down", "nic0"), ("nic_up", "imA"), ("nic_down", "imA")],
    [("nic_down", "imA"), ("nic_down", "nic0"), ("clear", 0)],
    [("nic_down", "nic0"), ("nic_down", "imA"), ("clear", 1), ("clear", 0)],
]


async def _taken_out(engine: Engine) -> bool:
    mux, binding = engine.mux_above("nic0")
    for _ in range(3):  # a layer's handling may give another layer more
        await eventually(lambda: not any(t.inbox for t in engine.tasks), "the layers idle")
        await asyncio.sleep(0)
    return bool(mux.lowers[binding.id].taken_out)


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: "-".join(f"{k}:{a}" for k, a in o))
async def test_a_restarted_shards_nic_under_an_im_is_as_its_faults_left_it(
    order: list[tuple[str, Any]],
) -> None:
    engines = [await start_engine(EngineConfig(), THROUGH_IM) for _ in range(3)]
    try:
        other, restarted, ideal = (_parts(k, e) for k, e in zip((0, 1, 1), engines, strict=True))
        ids: list[int] = []
        for kind, layer in order:
            if kind == "clear":
                for p in (other, ideal):
                    p("fault_clear", ids[layer])
                continue
            ids.append(len(ids) + 1)
            mirror = {"id": ids[-1], "spec": {"kind": kind, "layer": layer}, "home": 0}
            for p in (other, ideal):
                p("fault_mirror", {**mirror, "everywhere": True})
        await restore_faults(OneOther(restarted, other))
        got, want = await _taken_out(engines[1]), await _taken_out(engines[2])
        assert got == want, f"restarted shard 1: taken out {got}; in order: {want}"
    finally:
        for engine in engines:
            await engine.shutdown(1.0)
