"""The hops of a neighbor or path update through a pass-through IM (spec §1.6, §3.4): the
host's object handle lends the asking connection's trace for the call, and an IM relaying the
update lends it on to its own handle of the object, so `trace.get` shows the call all the way
down to the NIC and back, as it does for a connection's own calls."""

from __future__ import annotations

from typing import Any

from chimneyd.config import LayerConfig
from tests.integration.test_mux import teaming

MAC = "02:00:00:00:00:2a"
UPDATE_CALLS = ("NdisUpdateOffload", "MiniportUpdateOffload")
COMPLETIONS = ("NdisMUpdateOffloadComplete", "ProtocolUpdateOffloadComplete")


def hops_after(engine: Any, conn: int, last: int) -> list[tuple[str, str]]:
    return [(h["layer"], h["call"]) for h in engine.trace(conn, None) if h["seq"] > last]


def last_seq(engine: Any, conn: int) -> int:
    return max(h["seq"] for h in engine.trace(conn, None))


async def test_a_neighbor_update_s_hops_cross_a_pass_through_im(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine()  # tcpip → im0 → nic0
    conn = await engine.connect("127.0.0.1", echo_port)
    last = last_seq(engine, conn)
    await engine.update(conn, {"object": "neighbor", "DlDestinationAddress": MAC})
    hops = hops_after(engine, conn, last)
    assert [h for h in hops if h[1] in UPDATE_CALLS] == [
        ("tcpip", "NdisUpdateOffload"),
        ("im0", "MiniportUpdateOffload"),
        ("im0", "NdisUpdateOffload"),
        ("nic0", "MiniportUpdateOffload"),
    ]
    assert ("nic0", "NdisMUpdateOffloadComplete") in hops
    assert ("im0", "NdisMUpdateOffloadComplete") in hops
    assert hops[-1] == ("tcpip", "ProtocolUpdateOffloadComplete")


async def test_the_im_gives_the_lent_trace_back_after_the_call(
    make_engine: Any, echo_port: int
) -> None:
    """Lent for one call: a path update asked through another connection shows in that
    connection's trace only, at every layer."""
    engine = await make_engine()
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    await engine.update(conns[0], {"object": "neighbor", "DlDestinationAddress": MAC})
    lasts = [last_seq(engine, c) for c in conns]
    await engine.update(conns[1], {"object": "path", "PathMtu": 1400})
    first = [
        h for h in hops_after(engine, conns[0], lasts[0]) if h[1] in UPDATE_CALLS + COMPLETIONS
    ]
    second = hops_after(engine, conns[1], lasts[1])
    assert first == []
    assert ("im0", "NdisUpdateOffload") in second
    assert ("nic0", "MiniportUpdateOffload") in second


async def test_over_an_im_under_a_team_every_nic_s_hop_shows(
    make_engine: Any, echo_port: int
) -> None:
    """tcpip → team0 → (im0 → nic0, nic1): the IM under the MUX relays the MUX's lent trace."""
    layers: tuple[LayerConfig, ...] = teaming("round-robin", nics=2, im_under=True)
    engine = await make_engine(layers)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    last = last_seq(engine, conns[0])
    await engine.update(conns[0], {"object": "neighbor", "DlDestinationAddress": MAC})
    hops = hops_after(engine, conns[0], last)
    assert ("im0", "MiniportUpdateOffload") in hops
    assert ("nic0", "MiniportUpdateOffload") in hops
    assert ("nic1", "MiniportUpdateOffload") in hops
