"""The target as an adapter, seen from the host on real sockets: capabilities read at bind and
after RESUME (spec §1.3, §8), initiates queued while paused (spec §5.5), status indications in
the traces of the connections they affect, and neighbor reachability queries (spec §5.4)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import DEFAULT_LAYERS, LayerConfig
from tests.integration.support import topology


def calls(engine: Any, layer: str) -> dict[str, int]:
    result: dict[str, int] = engine.ndis.stats()[layer]["calls"]
    return result


async def settled(engine: Any) -> None:
    for _ in range(200):
        if not any(t.inbox for t in engine.tasks):
            return
        await asyncio.sleep(0.005)


async def test_stack_info_shows_the_capabilities_the_host_read(make_engine: Any) -> None:
    engine = await make_engine()
    await settled(engine)
    layers = {la["name"]: la for la in engine.info()["layers"]}
    nic = layers["nic0"]["capabilities"]
    assert nic["TcpConnectionOffloadCapacity"] == 16384
    assert nic["SupportIPv4"] and nic["SupportIPv6"] and nic["TicksPerSecond"] == [1000]
    # the host read them through the IM (an IM passes the query down, spec §1.3)
    assert layers["tcpip"]["capabilities"] == {"im0": nic}
    assert calls(engine, "tcpip")["NdisOidRequest/OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG"] == 1
    assert calls(engine, "tcpip")["NdisOidRequest/OID_TCP_CONNECTION_OFFLOAD_PARAMETERS"] == 1


async def test_the_host_never_offloads_past_the_advertised_capacity(
    make_engine: Any, echo_port: int
) -> None:
    """The host refuses by itself, with the status the target would give, and sends no
    initiate the target would have to refuse (spec §8: TcpConnectionOffloadCapacity)."""
    engine = await make_engine((*topology(1)[:-1], LayerConfig("nic0", "target", (), 2)))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    assert all(engine.conn_info(c)["state"] == "offloaded" for c in conns)
    before = calls(engine, "nic0").get("MiniportInitiateOffload", 0)
    third = await engine.connect("127.0.0.1", echo_port)  # stays in host mode
    assert engine.conn_info(third)["state"] == "host"
    with pytest.raises(EngineError) as err:
        await engine.offload(third)
    assert err.value.code == ErrorCode.NDIS_STATUS
    assert "NDIS_STATUS_OFFLOAD_TCP_ENTRIES" in err.value.detail
    assert "advertises room for 2" in err.value.detail
    assert calls(engine, "nic0").get("MiniportInitiateOffload", 0) == before
    await engine.upload(conns[0])  # room again
    assert (await engine.offload(third))["state"] == "offloaded"


async def test_no_ipv6_offload_to_a_target_without_ipv6(make_engine: Any) -> None:
    v4_only = (*DEFAULT_LAYERS[:-1], dataclasses.replace(DEFAULT_LAYERS[-1], ipv6=False))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "::1", 0)
    try:
        engine = await make_engine(v4_only)
        assert not engine.info()["layers"][-1]["capabilities"]["SupportIPv6"]
        conn = await engine.connect("::1", server.sockets[0].getsockname()[1])
        assert engine.conn_info(conn)["state"] == "host"
        with pytest.raises(EngineError) as err:
            await engine.offload(conn)
        assert "does not offload IPv6" in err.value.detail
        assert "MiniportInitiateOffload" not in calls(engine, "nic0")
    finally:
        server.close()


async def test_initiates_in_flight_during_pause_are_queued_then_offloaded(
    make_engine: Any, echo_port: int
) -> None:
    """spec §5.5, §6.2: an initiate that arrives while the target is paused is queued, not
    failed, and offloaded after RESUME; the host reads the capabilities again then."""
    engine = await make_engine()
    hold = engine.fault_inject(
        {"kind": "delay", "layer": "im0", "call": "MiniportInitiateOffload", "ms": 60_000}
    )
    connecting = asyncio.ensure_future(engine.connect("127.0.0.1", echo_port))
    await asyncio.sleep(0.2)  # its initiate is held in im0
    failure = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    await settled(engine)
    engine.fault_clear(hold)  # the initiate goes on, into a paused NIC
    await settled(engine)
    nic = next(la for la in engine.info()["layers"] if la["name"] == "nic0")
    assert nic["paused_initiates"] == 1 and not connecting.done()
    asked = calls(engine, "tcpip")["NdisOidRequest/OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG"]
    engine.fault_clear(failure)  # RESUME
    conn = await asyncio.wait_for(connecting, 5.0)
    assert engine.conn_info(conn)["state"] == "offloaded"
    await settled(engine)
    after = calls(engine, "tcpip")["NdisOidRequest/OID_TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG"]
    assert after == asked + 1
    assert await engine.send(conn, b"after resume") == 12


async def test_status_indications_show_in_the_traces_they_affect(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine()
    conn = await engine.connect("127.0.0.1", echo_port)
    fid = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    for _ in range(200):
        if engine.conn_info(conn)["state"] == "host":
            break
        await asyncio.sleep(0.01)
    engine.fault_clear(fid)
    await settled(engine)
    hops = [(h["layer"], h["call"], h.get("event")) for h in engine.trace(conn, None)]
    for status in ("NDIS_STATUS_OFFLOAD_PAUSE", "NDIS_STATUS_UPLOAD_ALL"):
        i = hops.index(("nic0", "NdisMIndicateStatusEx", status))
        assert hops[i + 1] == ("im0", "ProtocolStatusEx", status)
        assert ("im0", "NdisMIndicateStatusEx", status) in hops[i:]
        assert ("tcpip", "ProtocolStatusEx", status) in hops[i:]


async def test_a_stale_neighbor_is_queried_before_a_send(make_engine: Any, echo_port: int) -> None:
    """spec §5.4: nobody heard from the neighbor for NceStaleTicks: before sending, the NIC
    raises NeighborReachabilityQuery; the host answers with its HRD at once, which holds
    further queries off for NceStaleTicks."""
    engine = await make_engine(nce_stale_ms=100)
    conn = await engine.connect("127.0.0.1", echo_port)
    assert await engine.send(conn, b"fresh") == 5  # the neighbor was just offloaded: no query
    await engine.recv(conn, 5, 5.0, True)
    queries = "NdisMOffloadEventIndicate/NeighborReachabilityQuery"
    assert queries not in calls(engine, "nic0")
    await asyncio.sleep(0.3)  # idle for longer than NceStaleTicks
    assert await engine.send(conn, b"stale") == 5
    await engine.send(conn, b"again")  # answered just now: no second query
    await settled(engine)
    assert calls(engine, "nic0")[queries] == 1
    assert calls(engine, "tcpip")["ProtocolIndicateOffloadEvent/NeighborReachabilityQuery"] == 1
    hops = [
        (h["layer"], h["call"])
        for h in engine.trace(conn, None)
        if h.get("event") == "NeighborReachabilityQuery"
    ]
    assert hops == [
        ("nic0", "NdisMOffloadEventIndicate"),
        ("im0", "ProtocolIndicateOffloadEvent"),
        ("im0", "NdisMOffloadEventIndicate"),
        ("tcpip", "ProtocolIndicateOffloadEvent"),
    ]


async def test_reoffloads_after_resume_survive_a_refused_connection(
    make_engine: Any, echo_port: int
) -> None:
    """After a NIC failure every connection is uploaded with its path and neighbor; the host
    offloads them again by itself at RESUME (spec §5.5), in one new tree, in which one connection
    is refused: the others are offloaded, the refused one stays in host mode, and every table
    drains (the target used to raise "neighbor terminated with dependents" here)."""
    engine = await make_engine()
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(3)]
    fid = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    for _ in range(300):
        if all(engine.conn_info(c)["state"] == "host" for c in conns):
            break
        await asyncio.sleep(0.01)
    engine.fault_inject(
        {"kind": "fail_next", "layer": "nic0", "call": "MiniportInitiateOffload", "count": 1}
    )
    engine.fault_clear(fid)
    for _ in range(300):
        states = [engine.conn_info(c)["state"] for c in conns]
        if set(states) <= {"host", "offloaded"} and states.count("offloaded") >= 2:
            break
        await asyncio.sleep(0.01)
    await settled(engine)
    assert sorted(engine.conn_info(c)["state"] for c in conns) == ["host", "offloaded", "offloaded"]
    refused = next(c for c in conns if engine.conn_info(c)["state"] == "host")
    assert (await engine.offload(refused))["state"] == "offloaded"
    for c in conns:
        assert await engine.send(c, b"still works") == 11
    await settled(engine)
    assert engine.layer_errors == 0
