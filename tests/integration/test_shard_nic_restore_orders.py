"""Property: a shard restarted under a teaming MUX ends its restores with each NIC in or out of
service as a shard that took every fault in order would have it (docs/faults.md `nic_up`,
`rpc.sharded.restore_faults`), whatever order of `nic_down`s, `nic_up`s, clears (one, or an
admin's `"*"`) and faults put into one shard only (`shard` key) came around the restart. A
`target_failure` among them, a state of its own at the MUX, is kept apart from those.

Three engines on the teaming topology, each with the shard part the daemon gives it
(`ShardParts`): shard 0, never restarted; shard 1 as restarted (a fresh engine); and shard 1 as
if it had never been restarted, which takes every fault meant for it in order (but none put
into shard 1 alone before the restart: those go with its process). The faults come in three
spells: before the restart; while shard 1 starts (after its first restore, before it runs: it
misses them); and once it listens (before its second restore hears from shard 0). Its first
restore hears from shard 0 or not (shard 0 slow). Each fault goes where the sharded
`fault.inject` / `fault.clear` put it (`rpc.sharded`), here called on the parts directly.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.api import EngineError, ErrorCode, ShardReply
from chimneyd.config import EngineConfig
from chimneyd.engine import Engine, start_engine
from chimneyd.rpc.ownership import Ownership
from chimneyd.rpc.sharded import ShardParts, restore_faults
from tests.integration.support import eventually, examples
from tests.integration.test_mux import teaming

NICS = ("nic0", "nic1")
#: where a fault goes: every shard, or shard 0 or 1 alone (`shard` key)
WHERE = st.sampled_from(["all", 0, 1])
OPS = st.one_of(
    st.tuples(st.just("nic_down"), st.sampled_from(NICS), WHERE),
    st.tuples(st.just("nic_up"), st.sampled_from(NICS), WHERE),
    # a NIC failed is a state of its own at the MUX, which nic_up does not end
    st.tuples(st.just("target_failure"), st.sampled_from(NICS), WHERE),
    st.tuples(st.just("clear"), st.integers(0, 7), st.none()),
    st.tuples(st.just("clear_all"), st.none(), st.none()),
)
SPELL = st.lists(OPS, max_size=6)


class OneOther:
    """The restarted shard 1's `ClusterAPI`: shard 0 answers, or does not (`heard`)."""

    index, count = 1, 2

    def __init__(self, mine: ShardParts, other: ShardParts) -> None:
        self.mine, self.other, self.heard = mine, other, True

    def local(self, what: str, arg: Any = None) -> Any:
        return self.mine(what, arg)

    async def ask(self, what: str, arg: Any, targets: list[int]) -> dict[int, ShardReply]:
        if not self.heard:
            late = EngineError(ErrorCode.TIMEOUT, "shard 0 did not answer")
            return dict.fromkeys(targets, ShardReply("failed", error=late))
        return {0: ShardReply("ok", self.other(what, arg))}


def _parts(index: int, engine: Engine) -> ShardParts:
    return ShardParts(index, engine, SimpleNamespace(ownership=Ownership()))


def _listed(parts: ShardParts) -> set[int]:
    return {int(e["id"]) for e in parts.engine.fault_entries()}


async def _service(engine: Engine) -> dict[str, tuple[bool, bool, bool]]:
    """Each NIC under team0: taken out, failed, paused, once every layer has taken what it
    was given."""
    mux, _ = engine.mux_above(NICS[0])
    for _ in range(3):  # a layer's handling may give another layer more
        await eventually(lambda: not any(t.inbox for t in engine.tasks), "the layers idle")
        await asyncio.sleep(0)
    lowers = {nic: mux.lowers[engine.mux_above(nic)[1].id] for nic in NICS}
    return {nic: (lo.taken_out, lo.failed, lo.paused) for nic, lo in lowers.items()}


async def _scenario(spells: list[list[tuple[Any, ...]]], heard_first: bool) -> None:
    layers = teaming("round-robin", len(NICS))
    engines = [await start_engine(EngineConfig(), layers) for _ in range(3)]
    try:
        other, restarted, ideal = (_parts(k, e) for k, e in zip((0, 1, 1), engines, strict=True))
        cluster = OneOther(restarted, other)
        ids = iter(range(1, 10_000))
        before, starting, running = spells

        def act(op: tuple[Any, ...], up: list[ShardParts]) -> None:
            """`op` as the daemon's shards `up` (shard 1 as it would be among them) take it."""
            kind, a, b = op
            if kind == "clear_all":
                for p in (*up, ideal):
                    p("fault_clear_all")
                return
            if kind == "clear":
                listed = sorted(set().union(*(_listed(p) for p in up)))
                if listed:
                    fid = listed[a % len(listed)]
                    for p in (*up, ideal):
                        if fid in _listed(p):
                            p("fault_clear", fid)
                return
            if b == 1 and restarted not in up:
                return  # shard 1 alone: refused while it starts, gone with it before
            targets = {"all": (*up, ideal), 0: (other,), 1: (restarted, ideal)}[b]
            mirror = {"id": next(ids), "spec": {"kind": kind, "layer": a}, "home": 0}
            for p in targets:
                if p in up or p is ideal:
                    p("fault_mirror", {**mirror, "everywhere": b == "all"})

        for op in before:
            act(op, [other])
        cluster.heard = heard_first
        await restore_faults(cluster)  # before it listens
        for op in starting:
            act(op, [other])
        for op in running:
            act(op, [other, restarted])
        cluster.heard = True
        await restore_faults(cluster)  # once it runs
        got, want = await _service(engines[1]), await _service(engines[2])
        assert got == want, f"restarted shard 1: {got}, in order: {want}"
    finally:
        for engine in engines:
            await engine.shutdown(1.0)


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.tuples(SPELL, SPELL, SPELL), st.booleans())
def test_a_restarted_shards_nics_are_as_faults_taken_in_order_leave_them(
    spells: tuple[list[tuple[Any, ...]], ...], heard_first: bool
) -> None:
    uvloop.run(asyncio.wait_for(_scenario(list(spells), heard_first), 20))
