"""`tcp.info`'s `offload_refused` on a running engine with real loopback sockets: a
`tcp.connect` whose offload is refused still answers the connection's id (rpc-contract), and
`tcp.info` says why — the `NDIS_STATUS`, the layer that refused it (the host itself, or the
lowest layer whose initiate completion failed it), and the refused request's answer — until
an offload succeeds, when the `offloaded` event comes and it is nil again (docs/rpc.md
`tcp.info`). On deploy/teaming.toml (host → filter IM → MUX → three NICs) and on host → IM →
NIC. Before, `tcp.info` said only `state: "host"` (KeyError: 'offload_refused')."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from chimneyd.api import EngineError
from chimneyd.config import LayerConfig, load_config
from chimneyd.engine import Engine
from tests.integration.support import EngineFactory, fail_next, topology
from tests.integration.test_lost_below import _accept_the_broken_contract, _DropsTheBlock

TEAMING = Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml"


def _teaming(**nic0: Any) -> tuple[LayerConfig, ...]:
    """deploy/teaming.toml's layers, nic0's changed by `nic0` (e.g. `max_connections`)."""
    return tuple(
        dataclasses.replace(la, **nic0) if la.name == "nic0" else la
        for la in load_config(TEAMING).layers
    )


def _events(engine: Engine, conn: int) -> list[tuple[str, dict[str, Any]]]:
    heard: list[tuple[str, dict[str, Any]]] = []
    engine.subscribe(conn, lambda c, event, info: heard.append((event, dict(info))))
    return heard


async def _refused_then_offloaded(engine: Engine, conn: int) -> dict[str, Any]:
    """The connection's `offload_refused`, then a `tcp.offload` of it that goes: nil again,
    when the `offloaded` event says so."""
    info = engine.conn_info(conn)
    assert info["state"] == "host", info
    refused: dict[str, Any] = info["offload_refused"]
    assert refused is not None, info
    heard = _events(engine, conn)
    assert (await engine.offload(conn))["state"] == "offloaded"
    assert [e for e, _ in heard] == ["offloaded"], heard
    assert engine.conn_info(conn)["offload_refused"] is None
    return refused


async def test_an_offload_the_target_fails_names_the_nic_below_the_im(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(topology(1))
    fail_next(engine, "nic0", "MiniportInitiateOffload")
    conn = await engine.connect("127.0.0.1", echo_port)
    assert await _refused_then_offloaded(engine, conn) == {
        "status": "NDIS_STATUS_FAILURE",
        "layer": "nic0",
        "reason": "NDIS_STATUS: NDIS_STATUS_FAILURE (0xC0000001)",
    }


async def test_an_offload_refused_nowhere_is_nil(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(topology(0))
    conn = await engine.connect("127.0.0.1", echo_port, offload=False)
    assert engine.conn_info(conn)["offload_refused"] is None  # never asked
    conn = await engine.connect("127.0.0.1", echo_port)
    info = engine.conn_info(conn)
    assert info["state"] == "offloaded" and info["offload_refused"] is None, info


async def test_a_team_nic_failing_the_offload_is_named_under_the_team(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(_teaming())
    fail_next(engine, "nic0", "MiniportInitiateOffload")
    conn = await engine.connect("127.0.0.1", echo_port, target="nic0")
    refused = await _refused_then_offloaded(engine, conn)
    assert refused["status"] == "NDIS_STATUS_FAILURE" and refused["layer"] == "nic0", refused


async def test_a_full_pinned_nic_is_the_teams_refusal(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(_teaming(max_connections=1))
    first = await engine.connect("127.0.0.1", echo_port, target="nic0")
    assert engine.conn_info(first)["path"][-1] == "nic0"
    conn = await engine.connect("127.0.0.1", echo_port, target="nic0")
    info = engine.conn_info(conn)
    assert info["state"] == "host", info
    refused = info["offload_refused"]
    assert refused["status"] == "NDIS_STATUS_OFFLOAD_TCP_ENTRIES", refused
    assert refused["layer"] == "team0", refused  # the team, which had no room on nic0 for it
    await engine.close(first)
    assert (await _refused_then_offloaded(engine, conn)) == refused


async def test_a_pinned_nic_out_of_service_is_the_teams_refusal(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(_teaming())
    fault = engine.fault_inject({"kind": "nic_down", "layer": "nic0"})
    conn = await engine.connect("127.0.0.1", echo_port, target="nic0")
    refused = engine.conn_info(conn)["offload_refused"]
    assert refused is not None and refused["layer"] == "team0", refused
    assert refused["status"] == "NDIS_STATUS_FAILURE", refused
    engine.fault_clear(fault)
    assert await _refused_then_offloaded(engine, conn) == refused


async def test_a_host_event_on_the_pinned_nic_is_the_hosts_own_reason(
    make_engine: EngineFactory, echo_port: int
) -> None:
    """No `NDIS_STATUS`: the host withholds the NIC itself (spec §6.2) and the offload answers
    `INVALID_STATE` naming the event, as the `uploaded` event of a connection it took up
    names it (`reason`)."""
    engine = await make_engine(_teaming())
    up = await engine.connect("127.0.0.1", echo_port, target="nic0")
    heard = _events(engine, up)
    fault = engine.fault_inject({"kind": "host_event", "layer": "nic0", "event": "power_down"})
    conn = await engine.connect("127.0.0.1", echo_port, target="nic0")
    refused = engine.conn_info(conn)["offload_refused"]
    assert refused == {
        "status": None,
        "layer": "tcpip",
        "reason": "INVALID_STATE: the host withholds offloads to nic0: power_down (spec §6.2)",
    }, refused
    assert ("uploaded", {"reason": "power_down"}) in heard, heard
    engine.fault_clear(fault)
    assert await _refused_then_offloaded(engine, conn) == refused


async def test_a_connection_lost_below_in_its_initiate_says_so_as_its_abort_event_does(
    make_engine: EngineFactory, echo_port: int
) -> None:
    """A layer below left the refused connection out of the completion (spec §6.3 [EMU]): no
    status came back for it; the offload answered `INTERNAL` naming "lost below", and the
    `TcpIndicateAbort` event says `path: "lost"`. The NIC whose completion failed it is in
    its hop trace all the same."""
    engine = await make_engine(topology(1))
    conn = await engine.connect("127.0.0.1", echo_port, offload=False)
    heard = _events(engine, conn)
    fail_next(engine, "nic0", "MiniportInitiateOffload")
    dropper = _DropsTheBlock(engine, "NdisMInitiateOffloadComplete", conn)
    engine.ndis.observer = dropper
    try:
        with pytest.raises(EngineError, match="lost below") as answer:
            await asyncio.wait_for(engine.offload(conn), 5.0)
    finally:
        engine.ndis.observer = dropper.checker
    refused = engine.conn_info(conn)["offload_refused"]
    assert refused == {"status": None, "layer": "nic0", "reason": str(answer.value)}, refused
    assert ("TcpIndicateAbort", {"path": "lost"}) in heard, heard
    await asyncio.wait_for(engine.close(conn), 5.0)
    _accept_the_broken_contract(engine)
