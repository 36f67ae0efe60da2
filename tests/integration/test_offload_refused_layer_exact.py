"""`tcp.info`'s `offload_refused` `layer` is the layer whose initiate completion failed the
connection, however short its hop trace (`engine.trace_depth`, 1 to 1000000: the trace is for
watching). An initiate through deploy/teaming.toml is 12 hops (host → filter IM → MUX → NIC
and back); a trace shorter than that no longer held the host's `NdisInitiateOffload` when
the layer was read back from it, and `layer` was nil: for a NIC under the team, for the team
itself (a pinned NIC out of service), and for the host's own offload again at a RESUME after
a failover, which answers no one (docs/rpc.md `tcp.info`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from chimneyd.config import load_config
from chimneyd.engine import Engine
from tests.integration.support import EngineFactory, eventually, fail_next, topology

TEAMING = load_config(Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml").layers
#: Fewer hops than one initiate through the team takes.
SHORT = 6
FAILURE = "NDIS_STATUS: NDIS_STATUS_FAILURE (0xC0000001)"


def _failed_at(layer: str) -> dict[str, Any]:
    return {"status": "NDIS_STATUS_FAILURE", "layer": layer, "reason": FAILURE}


def _refused(engine: Engine, conn: int) -> Any:
    info = engine.conn_info(conn)
    assert info["state"] == "host", info
    return info["offload_refused"]


@pytest.mark.parametrize("depth", [SHORT, 64])
async def test_a_nic_under_the_team_is_named_whatever_the_trace_depth(
    make_engine: EngineFactory, echo_port: int, depth: int
) -> None:
    engine = await make_engine(TEAMING, trace_depth=depth)
    fail_next(engine, "nic1", "MiniportInitiateOffload")
    conn = await engine.connect("127.0.0.1", echo_port, target="nic1")
    refused = _refused(engine, conn)
    assert refused == _failed_at("nic1"), refused


@pytest.mark.parametrize("depth", [SHORT, 64])
async def test_the_team_is_named_for_a_pinned_nic_out_of_service_whatever_the_depth(
    make_engine: EngineFactory, echo_port: int, depth: int
) -> None:
    engine = await make_engine(TEAMING, trace_depth=depth)
    engine.fault_inject({"kind": "nic_down", "layer": "nic0"})
    conn = await engine.connect("127.0.0.1", echo_port, target="nic0")
    refused = _refused(engine, conn)
    assert refused == _failed_at("team0"), refused


@pytest.mark.parametrize("depth", [SHORT, 64])
async def test_the_hosts_own_offload_again_after_a_failover_names_the_last_refusal(
    make_engine: EngineFactory, echo_port: int, depth: int
) -> None:
    """nic1 fails: the host takes its connection up and offers it again at the RESUME, to
    the pinned nic1 first (the team refuses: out of service), then where the team's policy
    puts it: nic0, nic2 being out of service, whose completion fails it. The last refusal
    is told: nic0's, not the team's before it."""
    engine = await make_engine(TEAMING, trace_depth=depth)
    conn = await engine.connect("127.0.0.1", echo_port, target="nic1")
    assert engine.conn_info(conn)["path"][-1] == "nic1"
    engine.fault_inject({"kind": "nic_down", "layer": "nic2"})
    fail_next(engine, "nic0", "MiniportInitiateOffload")
    engine.fault_inject({"kind": "target_failure", "layer": "nic1"})
    await eventually(
        lambda: (
            engine.conn_info(conn)["offload_refused"] is not None
            and not engine.host.tcbs[conn].offload_done
            and engine.conn_info(conn)["state"] == "host"
        ),
        "the offload again refused",
    )
    refused = _refused(engine, conn)
    assert refused == _failed_at("nic0"), refused


async def test_a_target_that_offloads_no_ipv4_is_the_hosts_refusal(
    make_engine: EngineFactory, echo_port: int
) -> None:
    """The host refuses it itself, by the capabilities advertised to it (the IM passes the
    NIC's on, spec §8): no initiate went down."""
    layers = tuple(
        dataclasses.replace(la, ipv4=False) if la.name == "nic0" else la for la in topology(1)
    )
    engine = await make_engine(layers)
    conn = await engine.connect("127.0.0.1", echo_port)
    refused = _refused(engine, conn)
    assert refused == {
        "status": "NDIS_STATUS_NOT_SUPPORTED",
        "layer": "tcpip",
        "reason": "NDIS_STATUS: NDIS_STATUS_NOT_SUPPORTED (0xC00000BB) im0 does not offload "
        "IPv4 (spec §8)",
    }, refused
