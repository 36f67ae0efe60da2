"""A whole NIC's connections go up and come back in one tree each way (spec §5.5: PAUSE,
UPLOAD_ALL, the terminates, RESUME, the re-offload): the trees are built, and a MUX finds
each connection's path in them, without walking a block list once per connection. Walking it
each time cost n²/2 steps, seconds of a busy daemon's loop at 10,000 connections (measured);
counted here in blocks walked, not timed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import chimneyd.ndis.blocks as blocks_module
from chimneyd.ndis.blocks import OffloadBlock
from tests.integration.support import eventually
from tests.integration.test_mux import nic_of, teaming

N = 300


def _counting_walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every list `chain_append` walks to its end, by length; and every dependent list read
    through `OffloadBlock.dependents` (how a layer looks a block's parent up), by the blocks
    it yields."""
    walked: list[int] = []
    real = blocks_module.chain_append
    real_dependents = OffloadBlock.dependents

    def dependents(block: OffloadBlock) -> Iterator[OffloadBlock]:
        n = 0
        try:
            for dep in real_dependents(block):
                n += 1
                yield dep
        finally:  # a reader that found what it looked for stops early
            walked.append(n)

    def counted(head: OffloadBlock | None, block: OffloadBlock) -> OffloadBlock:
        n, b = 0, head
        while b is not None:
            n, b = n + 1, b.next_block
        walked.append(n)
        return real(head, block)

    monkeypatch.setattr(blocks_module, "chain_append", counted)
    monkeypatch.setattr(OffloadBlock, "dependents", dependents)
    return walked


def _states(engine: Any, conns: list[int]) -> set[str]:
    return {engine.conn_info(c)["state"] for c in conns}


@pytest.mark.parametrize("topology", ["default", "mux"])
async def test_a_failover_of_many_connections_walks_no_list_per_connection(
    make_engine: Any, echo_port: int, monkeypatch: pytest.MonkeyPatch, topology: str
) -> None:
    """The NIC fails and comes back: the host terminates and offloads again all N in one
    tree each way; through a MUX over that one NIC (nowhere to move them), the MUX splits the
    re-offload tree too."""
    layers = () if topology == "default" else (teaming("active-standby", 1),)
    engine = await make_engine(*layers)
    conns = await _connect(engine, echo_port)
    walked = _counting_walks(monkeypatch)
    fault = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    await eventually(lambda: _states(engine, conns) == {"host"}, "every connection uploaded")
    engine.fault_clear(fault)
    await eventually(lambda: _states(engine, conns) == {"offloaded"}, "every one offloaded again")
    # one tree up and one down, each with N connections: a few walks of each, none per connection
    assert sum(walked) <= 20 * N, (len(walked), sum(walked))
    await _close(engine, conns)


async def test_a_teaming_failover_of_many_connections_walks_no_list_per_connection(
    make_engine: Any, echo_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MUX's tree for the NIC its connections move to is built the same way."""
    engine = await make_engine(teaming("active-standby", 2))
    conns = await _connect(engine, echo_port)
    assert {nic_of(engine, c) for c in conns} == {"nic0"}
    walked = _counting_walks(monkeypatch)
    fault = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    await eventually(
        lambda: (
            _states(engine, conns) == {"offloaded"}
            and {nic_of(engine, c) for c in conns} == {"nic1"}
        ),
        "every connection moved to nic1",
    )
    assert sum(walked) <= 20 * N, (len(walked), sum(walked))
    engine.fault_clear(fault)
    await _close(engine, conns)


async def _connect(engine: Any, port: int) -> list[int]:
    conns = list(await asyncio.gather(*[engine.connect("127.0.0.1", port) for _ in range(N)]))
    await eventually(lambda: _states(engine, conns) == {"offloaded"})
    return conns


async def _close(engine: Any, conns: list[int]) -> None:
    for conn in conns:
        await asyncio.wait_for(engine.close(conn), 5.0)
