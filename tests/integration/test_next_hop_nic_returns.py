"""A next-hop change (spec §3.4 (b)) through a teaming MUX while a NIC comes back: put back
after being taken out, or RESUMEd after failing (spec §5.5), with the move's step 1 or 2
held below on another NIC. The move is answered, connections offloaded meanwhile and after
it go under the new neighbor's copies wherever the MUX places them (the NIC back too),
bytes flow, and nothing is left behind (the make_engine fixture's drain check)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.support import EchoPeer, eventually
from tests.integration.test_mux import nic_of, teaming
from tests.integration.test_next_hop import (
    DEFAULT_HOP,
    HOP,
    OK,
    OTHER,
    exchange,
    host_neighbors,
    move,
    neighbor_mac,
)


@pytest.mark.parametrize("fault", ["nic_down", "target_failure"])
@pytest.mark.parametrize("call", ["MiniportInitiateOffload", "MiniportUpdateOffload"])
@pytest.mark.parametrize("back", ["before_answer", "after_answer"])
async def test_a_nic_coming_back_during_the_move(
    make_engine: Any, echo_port: int, fault: str, call: str, back: str
) -> None:
    engine = await make_engine(teaming("round-robin", nics=3))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    out = engine.fault_inject({"kind": fault, "layer": "nic1"})
    await eventually(
        lambda: all(
            engine.conn_info(c)["state"] in ("offloaded", "host")
            and (engine.conn_info(c)["state"] == "host" or nic_of(engine, c) != "nic1")
            for c in conns
        ),
        "nic1's connections off it",
    )
    delay = engine.fault_inject({"kind": "delay", "layer": "nic0", "call": call, "ms": 60})
    anchor = next(c for c in conns if engine.conn_info(c)["state"] == "offloaded")
    moving = asyncio.ensure_future(engine.update(anchor, move(HOP)))
    await eventually(lambda: engine.host.objects_moving(), "the move below")
    late: list[asyncio.Future[int]] = []
    if back == "before_answer":
        engine.fault_clear(out)  # nic1 back (put back, or RESUME) while the move is below
        late = [asyncio.ensure_future(engine.connect("127.0.0.1", echo_port)) for _ in range(3)]
    assert await asyncio.wait_for(moving, 5.0) == OK
    if back == "after_answer":
        engine.fault_clear(out)
    late += [asyncio.ensure_future(engine.connect("127.0.0.1", echo_port)) for _ in range(3)]
    news = await asyncio.wait_for(asyncio.gather(*late), 5.0)
    engine.fault_clear(delay)
    every = [*conns, *news]
    for c in every:
        if engine.conn_info(c)["state"] != "offloaded":
            await engine.offload(c)
    await eventually(
        lambda: all(engine.conn_info(c)["state"] == "offloaded" for c in every), "offloaded"
    )
    for c in every:
        assert neighbor_mac(engine, c, nic_of(engine, c)) == HOP, (c, nic_of(engine, c))
        assert neighbor_mac(engine, c, "team0") == HOP, c
        await exchange(engine, c, 1)


async def test_paths_crossing_between_neighbors_at_once(make_engine: Any) -> None:
    """Two paths under one neighbor move at once to two others, then cross (each to the
    other's), then both back, with a NIC slow with its updates and connections made and
    closed on both paths meanwhile: every move is answered, each path ends under its last
    next hop on every layer, and the neighbors nothing hangs under go."""
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(EchoPeer, f"127.0.0.{i}", 0) for i in (1, 2)]
    try:
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        engine = await make_engine(teaming("round-robin", nics=3))
        hosts = ["127.0.0.1", "127.0.0.2"]
        conns = [await engine.connect(hosts[i % 2], ports[i % 2]) for i in range(6)]
        delay = engine.fault_inject(
            {"kind": "delay", "layer": "nic2", "call": "MiniportUpdateOffload", "ms": 20}
        )
        plan = [(0, HOP), (1, OTHER), (0, OTHER), (1, HOP), (0, DEFAULT_HOP), (1, DEFAULT_HOP)]
        plan += [(0, HOP), (1, HOP)]
        moving = [asyncio.ensure_future(engine.update(conns[p], move(h))) for p, h in plan]
        closes = [asyncio.ensure_future(engine.close(c)) for c in conns[2:4]]
        late = [asyncio.ensure_future(engine.connect(hosts[i % 2], ports[i % 2])) for i in range(4)]
        assert await asyncio.wait_for(asyncio.gather(*moving), 10.0) == [OK] * len(plan)
        await asyncio.wait_for(asyncio.gather(*closes), 5.0)
        news = await asyncio.wait_for(asyncio.gather(*late), 5.0)
        engine.fault_clear(delay)
        every = [*conns[:2], *conns[4:], *news]
        for c in every:
            for name in ("tcpip", "team0", nic_of(engine, c)):
                assert neighbor_mac(engine, c, name) == HOP, (c, name)
            await exchange(engine, c, 1)
        await eventually(lambda: host_neighbors(engine) == [bytes.fromhex("02000000002b")])
    finally:
        for s in servers:
            s.close()
