"""`tcp.update` of a connection's neighbor or path (spec §3.4 (a)): the host updates its own
object and sends `NdisUpdateOffload` of that object's block; every layer below copies the
values, a teaming MUX into every NIC's copy, so every connection sharing the object sees them
(`tcp.info`'s `objects`). The checks of the values, and what a failed update does."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from tests.integration.support import assert_clean, drained, eventually, fail_next
from tests.integration.test_mux import echo, nic_of, teaming

MAC = "02:00:00:00:00:2a"


def neighbor_at(engine: Any, conn: int, layer: str) -> dict[str, Any]:
    view: dict[str, Any] = engine.conn_info(conn)["objects"][layer]["neighbor"]
    return view


def path_at(engine: Any, conn: int, layer: str) -> dict[str, Any]:
    view: dict[str, Any] = engine.conn_info(conn)["objects"][layer]["path"]
    return view


async def test_a_neighbor_update_reaches_every_nic_s_copy(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    assert [nic_of(engine, c) for c in conns] == ["nic0", "nic1"]
    # shown once an update has changed them: tcp.info stays as it was until then
    assert "objects" not in engine.conn_info(conns[1])
    update = {"object": "neighbor", "DlDestinationAddress": MAC, "HostReachabilityDelta": 5}
    assert await engine.update(conns[0], update) == {"status": "NDIS_STATUS_SUCCESS"}
    for conn, nic in zip(conns, ("nic0", "nic1"), strict=True):
        for layer in ("tcpip", "team0", nic):
            assert neighbor_at(engine, conn, layer)["DlDestinationAddress"] == MAC, (conn, layer)
    for c in conns:
        await echo(engine, c, os.urandom(1024))  # the connections carry on offloaded


async def test_a_path_update_reaches_every_nic_s_copy(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    assert await engine.update(conns[1], {"object": "path", "PathMtu": 1400}) == {
        "status": "NDIS_STATUS_SUCCESS"
    }
    assert [path_at(engine, c, nic_of(engine, c))["PathMtu"] for c in conns] == [1400, 1400]
    assert path_at(engine, conns[0], "tcpip")["PathMtu"] == 1400


async def test_a_new_connection_and_nic_get_the_updated_values(
    make_engine: Any, echo_port: int
) -> None:
    """A NIC that gets its copy of the neighbor after the update gets the new values (the
    MUX keeps them for NICs to come), and so does a later offload of the host's object."""
    engine = await make_engine(teaming("round-robin", nics=2))
    first = await engine.connect("127.0.0.1", echo_port)  # nic0 only
    assert await engine.update(first, {"object": "neighbor", "DlDestinationAddress": MAC})
    second = await engine.connect("127.0.0.1", echo_port)  # nic1: its first copy
    assert nic_of(engine, second) == "nic1"
    assert neighbor_at(engine, second, "nic1")["DlDestinationAddress"] == MAC
    for c in (first, second):
        await engine.close(c)
    again = await engine.connect("127.0.0.1", echo_port)  # the objects offloaded anew
    assert neighbor_at(engine, again, nic_of(engine, again))["DlDestinationAddress"] == MAC


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"object": "neighbor", "PathMtu": 1400}, "a path variable, not a cached neighbor one"),
        (
            {"object": "path", "DlDestinationAddress": MAC},
            "a neighbor variable, not a cached path one",
        ),
        ({"object": "path", "PathMtu": 67}, "PathMtu must be 68..65535"),
        ({"object": "neighbor", "DlDestinationAddress": "zz"}, "DlDestinationAddress"),
        ({"object": "neighbor", "DlDestinationAddress": b""}, "1..32 bytes"),
        ({"object": "neighbor", "HostReachabilityDelta": -1}, "0..4294967295"),
        ({"object": "socket", "PathMtu": 1400}, "object must be"),
        ({"object": "path"}, "non-empty"),
    ],
)
async def test_bad_object_updates_are_refused_before_any_layer(
    make_engine: Any, echo_port: int, changes: dict[str, Any], what: str
) -> None:
    engine = await make_engine(teaming("round-robin", nics=2))
    conn = await engine.connect("127.0.0.1", echo_port)
    with pytest.raises(EngineError) as err:
        await engine.update(conn, changes)
    assert err.value.code == ErrorCode.INVALID_PARAMS and what in str(err.value)


async def test_a_failed_neighbor_update_uploads_its_connections(
    make_engine: Any, echo_port: int
) -> None:
    """A NIC fails the update's block: the host terminates what failed (spec §3.4), every
    connection on the neighbor, which carries on in the host."""
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    fail_next(engine, "nic1", "MiniportUpdateOffload")
    with pytest.raises(EngineError) as err:
        await engine.update(conns[0], {"object": "neighbor", "DlDestinationAddress": MAC})
    assert err.value.code == ErrorCode.NDIS_STATUS
    await eventually(
        lambda: all(engine.conn_info(c)["state"] == "host" for c in conns), "both uploaded"
    )
    for c in conns:
        await echo(engine, c, os.urandom(512))


async def test_updates_of_one_neighbor_go_one_at_a_time_in_order(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    macs = [f"02:00:00:00:00:{i:02x}" for i in range(5)]
    answers = await asyncio.gather(
        *(
            engine.update(conns[i % 2], {"object": "neighbor", "DlDestinationAddress": m})
            for i, m in enumerate(macs)
        )
    )
    assert answers == [{"status": "NDIS_STATUS_SUCCESS"}] * 5
    for c in conns:
        assert neighbor_at(engine, c, nic_of(engine, c))["DlDestinationAddress"] == macs[-1]


async def test_the_update_s_hops_show_in_the_trace_of_the_connection_that_asked(
    make_engine: Any, echo_port: int
) -> None:
    """The object's handle lends the connection's trace for the call: host → MUX → every
    NIC holding a copy, and the completions back up (spec §3.4, §3.8)."""
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    last = max(h["seq"] for h in engine.trace(conns[0], None))
    await engine.update(conns[0], {"object": "neighbor", "DlDestinationAddress": MAC})
    hops = [(h["layer"], h["call"]) for h in engine.trace(conns[0], None) if h["seq"] > last]
    down = [h for h in hops if h[1] in ("NdisUpdateOffload", "MiniportUpdateOffload")]
    assert down[:2] == [("tcpip", "NdisUpdateOffload"), ("team0", "MiniportUpdateOffload")]
    assert sorted(down[2:]) == sorted(
        [("team0", "NdisUpdateOffload")] * 2
        + [("nic0", "MiniportUpdateOffload"), ("nic1", "MiniportUpdateOffload")]
    )
    assert {la for la, call in hops if call == "NdisMUpdateOffloadComplete"} == {
        "nic0",
        "nic1",
        "team0",
    }
    assert hops[-1] == ("tcpip", "ProtocolUpdateOffloadComplete")
    # lent for that call only: the other connection's trace has none of it, and a later
    # update through it is in its own trace
    assert not [h for h in engine.trace(conns[1], None) if h["call"] == "NdisUpdateOffload"]
    await engine.update(conns[1], {"object": "path", "PathMtu": 1500})
    assert ("tcpip", "NdisUpdateOffload") in [
        (h["layer"], h["call"]) for h in engine.trace(conns[1], None)
    ]


@pytest.mark.parametrize("fault", ["nic_down", "target_failure"])
async def test_a_neighbor_update_racing_a_nic_leaving_the_team(
    make_engine: Any, echo_port: int, fault: str
) -> None:
    """The update goes in, then nic1 leaves the team (taken out, or failing) before it is
    answered: it is answered, nic1's connections move, and every copy they end under has the
    new MAC; all carry bytes, and closing them leaves nothing behind."""
    engine = await make_engine(teaming("round-robin", nics=3))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    update = asyncio.ensure_future(
        engine.update(conns[0], {"object": "neighbor", "DlDestinationAddress": MAC})
    )
    fid = engine.fault_inject({"kind": fault, "layer": "nic1"})
    assert await asyncio.wait_for(update, 5.0) == {"status": "NDIS_STATUS_SUCCESS"}
    await eventually(
        lambda: all(
            engine.conn_info(c)["state"] == "offloaded" and nic_of(engine, c) != "nic1"
            for c in conns
        ),
        "nic1's connections moved",
    )
    for c in conns:
        assert neighbor_at(engine, c, nic_of(engine, c))["DlDestinationAddress"] == MAC, c
        await echo(engine, c, os.urandom(256))
    engine.fault_clear(fid)
    for c in conns:
        await engine.close(c)
    assert_clean(engine, await drained(engine))


async def test_closing_every_connection_while_their_neighbor_update_is_below(
    make_engine: Any, echo_port: int
) -> None:
    """The neighbor's terminate waits for its update (spec §3.1): closing every connection
    on it meanwhile answers the update and then terminates the objects."""
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    fid = engine.fault_inject(
        {"kind": "delay", "layer": "nic1", "call": "MiniportUpdateOffload", "ms": 100}
    )
    update = asyncio.ensure_future(engine.update(conns[0], {"object": "path", "PathMtu": 9000}))
    closes = [asyncio.ensure_future(engine.close(c)) for c in conns]
    assert await asyncio.wait_for(update, 5.0) == {"status": "NDIS_STATUS_SUCCESS"}
    await asyncio.wait_for(asyncio.gather(*closes), 5.0)
    engine.fault_clear(fid)
    assert_clean(engine, await drained(engine))
