"""A next-hop change (spec §3.4 (b)): `tcp.update` with `object` "path" and `NextHop` moves the
connection's path, and every connection on it, under the binding's neighbor of that next hop:
the host offloads that neighbor if it is not, sends `NdisUpdateOffload` with the neighbor as
root and the path as its dependent, and terminates the old neighbor once nothing hangs under
it. Through a pass-through IM (the default topology) and a teaming MUX, whose NICs each move
their copies; with bytes in flight both ways; a NIC failing the move or during it."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import DEFAULT_LAYERS
from tests.integration.support import EchoPeer, eventually, fail_next
from tests.integration.test_mux import echo, nic_of, teaming

HOP = "02:00:00:00:00:2b"
OTHER = "02:00:00:00:00:2c"
DEFAULT_HOP = "00:00:00:00:00:00"
OK = {"status": "NDIS_STATUS_SUCCESS"}


def move(hop: str, **cached: Any) -> dict[str, Any]:
    return {"object": "path", "NextHop": hop, **cached}


def neighbor_mac(engine: Any, conn: int, layer: str) -> str:
    mac: str = engine.conn_info(conn)["objects"][layer]["neighbor"]["DlDestinationAddress"]
    return mac


def host_neighbors(engine: Any) -> list[bytes]:
    """The next hops of the neighbors the host holds."""
    return sorted(k[2] for k in engine.host.objects if k[0] == "neighbor")


async def exchange(engine: Any, conn: int, rounds: int = 3) -> None:
    for _ in range(rounds):
        await echo(engine, conn, os.urandom(4096))


async def test_a_path_moves_under_a_new_neighbor_through_an_im(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(DEFAULT_LAYERS)
    conn = await engine.connect("127.0.0.1", echo_port)
    await exchange(engine, conn)
    assert await engine.update(conn, move(HOP)) == OK
    assert engine.conn_info(conn)["state"] == "offloaded"
    layers = [engine.conn_info(conn)["path"][0], engine.conn_info(conn)["path"][-1]]
    for name in layers:
        assert neighbor_mac(engine, conn, name) == HOP, name
    # step 4: the old neighbor is gone, once nothing hangs under it
    await eventually(lambda: host_neighbors(engine) == [bytes.fromhex("02000000002b")])
    await exchange(engine, conn)


async def test_every_connection_on_the_path_moves_on_every_nic(
    make_engine: Any, echo_port: int
) -> None:
    """Through a teaming MUX: each NIC holding a copy of the path gets a copy of the new
    neighbor and moves its path copy under it; `tcp.info` shows the new neighbor per layer."""
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(4)]
    assert sorted({nic_of(engine, c) for c in conns}) == ["nic0", "nic1"]
    assert await engine.update(conns[0], move(HOP)) == OK
    for c in conns:
        for name in ("tcpip", "team0", nic_of(engine, c)):
            assert neighbor_mac(engine, c, name) == HOP, (c, name)
    await eventually(lambda: host_neighbors(engine) == [bytes.fromhex("02000000002b")])
    for c in conns:
        await exchange(engine, c, 1)


async def test_bytes_in_flight_both_ways_keep_their_order_across_the_move(
    make_engine: Any, echo_port: int
) -> None:
    """Sends and receives outstanding while the path moves, and again while it moves back:
    every byte echoed, in order."""
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    payloads = {c: os.urandom(256 * 1024) for c in conns}

    async def stream(conn: int) -> bytes:
        data = payloads[conn]
        sending = asyncio.ensure_future(engine.send(conn, data))
        got = await engine.recv(conn, len(data), 10.0, True)
        assert await sending == len(data)
        return bytes(got)

    streams = [asyncio.ensure_future(stream(c)) for c in conns]
    assert await engine.update(conns[0], move(HOP)) == OK
    assert await engine.update(conns[1], move(DEFAULT_HOP, PathMtu=1400)) == OK
    got = await asyncio.wait_for(asyncio.gather(*streams), 20.0)
    assert got == [payloads[c] for c in conns]
    for c in conns:
        assert engine.conn_info(c)["state"] == "offloaded"
        assert neighbor_mac(engine, c, nic_of(engine, c)) == DEFAULT_HOP
        assert engine.conn_info(c)["objects"]["team0"]["path"]["PathMtu"] == 1400


@pytest.mark.parametrize("layers", ["im", "team"])
async def test_a_later_connection_goes_under_the_path_s_new_neighbor(
    make_engine: Any, echo_port: int, layers: str
) -> None:
    """Whether the path is still offloaded (it is linked under its neighbor now) or has gone
    with its last connection (the host keeps where it moved it, as a route cache)."""
    engine = await make_engine(DEFAULT_LAYERS if layers == "im" else teaming("round-robin", 2))
    first = await engine.connect("127.0.0.1", echo_port)
    assert await engine.update(first, move(HOP)) == OK
    second = await engine.connect("127.0.0.1", echo_port)
    assert neighbor_mac(engine, second, nic_of(engine, second)) == HOP
    for c in (first, second):
        await engine.close(c)
    await eventually(lambda: not engine.host.objects, "the objects gone")
    again = await engine.connect("127.0.0.1", echo_port)
    assert neighbor_mac(engine, again, nic_of(engine, again)) == HOP
    assert host_neighbors(engine) == [bytes.fromhex("02000000002b")]
    await exchange(engine, again, 1)


async def test_a_move_to_the_neighbor_it_is_under_moves_nothing(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("round-robin", nics=2))
    conn = await engine.connect("127.0.0.1", echo_port)
    assert await engine.update(conn, move(DEFAULT_HOP)) == OK
    assert await engine.update(conn, move(DEFAULT_HOP, PathMtu=1300)) == OK
    assert engine.conn_info(conn)["objects"]["nic0"]["path"]["PathMtu"] == 1300


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        (move("zz"), "NextHop must be"),
        (move(""), "NextHop must be"),
        ({"object": "neighbor", "NextHop": HOP}, "a path variable, not a cached neighbor one"),
        ({"NextHop": HOP}, "NextHop"),
        (move(HOP, PathMtu=10), "PathMtu must be"),
    ],
)
async def test_bad_moves_are_refused_before_any_layer(
    make_engine: Any, echo_port: int, changes: dict[str, Any], what: str
) -> None:
    engine = await make_engine(teaming("round-robin", nics=2))
    conn = await engine.connect("127.0.0.1", echo_port)
    with pytest.raises(EngineError) as err:
        await engine.update(conn, changes)
    assert err.value.code == ErrorCode.INVALID_PARAMS and what in str(err.value)


async def test_a_move_of_a_connection_in_the_host_is_invalid_state(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("round-robin", nics=2))
    conn = await engine.connect("127.0.0.1", echo_port)
    await engine.upload(conn)
    with pytest.raises(EngineError) as err:
        await engine.update(conn, move(HOP))
    assert err.value.code == ErrorCode.INVALID_STATE


@pytest.mark.parametrize("layers", ["im", "team"])
async def test_a_failed_move_uploads_the_path_s_connections(
    make_engine: Any, echo_port: int, layers: str
) -> None:
    """A NIC fails the move's update: nothing moves at any layer, the host terminates what
    failed (spec §3.4) — the path's connections go on in the host — and the new neighbor,
    which nothing uses, goes. A later connection goes under the old next hop."""
    engine = await make_engine(DEFAULT_LAYERS if layers == "im" else teaming("round-robin", 2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    fail_next(engine, "nic1" if layers == "team" else "nic0", "MiniportUpdateOffload")
    with pytest.raises(EngineError) as err:
        await engine.update(conns[0], move(HOP))
    assert err.value.code == ErrorCode.NDIS_STATUS
    await eventually(lambda: all(engine.conn_info(c)["state"] == "host" for c in conns))
    await eventually(lambda: not engine.host.objects, "the objects gone")
    for c in conns:
        await exchange(engine, c, 1)
    again = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(again)["state"] == "offloaded"
    assert host_neighbors(engine) == [bytes(6)]


@pytest.mark.parametrize("fault", ["nic_down", "target_failure"])
@pytest.mark.parametrize("call", ["MiniportInitiateOffload", "MiniportUpdateOffload"])
async def test_a_nic_leaving_the_team_during_the_move(
    make_engine: Any, echo_port: int, fault: str, call: str
) -> None:
    """nic1 is slow with its part (its copy of the new neighbor, or its update moving the
    path copy) and leaves the team meanwhile: the move is answered, nic1's connections move to
    the other NICs, and every connection ends under the new neighbor's copies, carrying bytes."""
    engine = await make_engine(teaming("round-robin", nics=3))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    delay = engine.fault_inject({"kind": "delay", "layer": "nic1", "call": call, "ms": 100})
    moving = asyncio.ensure_future(engine.update(conns[0], move(HOP)))
    await eventually(lambda: engine.host.objects_moving(), "the move below")
    out = engine.fault_inject({"kind": fault, "layer": "nic1"})
    answer = await asyncio.wait_for(moving, 5.0)
    assert answer == OK
    await eventually(
        lambda: all(
            engine.conn_info(c)["state"] == "offloaded" and nic_of(engine, c) != "nic1"
            for c in conns
        ),
        "nic1's connections moved to the other NICs",
    )
    for c in conns:
        assert neighbor_mac(engine, c, nic_of(engine, c)) == HOP, c
        await exchange(engine, c, 1)
    engine.fault_clear(delay)
    engine.fault_clear(out)


async def test_the_move_s_hops_show_in_the_trace_of_the_connection_that_asked(
    make_engine: Any, echo_port: int
) -> None:
    """The new neighbor's initiate and the move's update, host → IM → NIC and back; through
    a MUX, to every NIC (its copy of the new neighbor, then its update)."""
    engine = await make_engine(teaming("round-robin", nics=2, im_under=True))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    last = max(h["seq"] for h in engine.trace(conns[0], None))
    assert await engine.update(conns[0], move(HOP)) == OK
    hops = [(h["layer"], h["call"]) for h in engine.trace(conns[0], None) if h["seq"] > last]
    assert hops[:2] == [("tcpip", "NdisInitiateOffload"), ("team0", "MiniportInitiateOffload")]
    for nic in ("nic0", "nic1"):
        assert (nic, "MiniportInitiateOffload") in hops, nic
        assert (nic, "MiniportUpdateOffload") in hops, nic
    assert ("im0", "MiniportUpdateOffload") in hops
    assert ("tcpip", "NdisUpdateOffload") in hops
    assert hops[-1] == ("tcpip", "ProtocolUpdateOffloadComplete")


@pytest.mark.parametrize("layers", ["im", "team"])
async def test_the_new_neighbor_s_offload_failing(
    make_engine: Any, echo_port: int, layers: str
) -> None:
    """Step 2 fails at a NIC. Through the IM the host's own initiate of the neighbor fails:
    nothing moved, the connections stay offloaded where they were. Through the MUX (which
    offloads the NICs' copies itself, as step 1 of its move) the update fails: the host
    terminates what failed, the path's connections go on in the host."""
    engine = await make_engine(DEFAULT_LAYERS if layers == "im" else teaming("round-robin", 2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    fail_next(engine, "nic0", "MiniportInitiateOffload[neighbor]")
    with pytest.raises(EngineError) as err:
        await engine.update(conns[0], move(HOP))
    assert err.value.code == ErrorCode.NDIS_STATUS
    state = "offloaded" if layers == "im" else "host"
    await eventually(lambda: all(engine.conn_info(c)["state"] == state for c in conns))
    await eventually(lambda: host_neighbors(engine) == ([bytes(6)] if layers == "im" else []))
    for c in conns:
        await exchange(engine, c, 1)


async def test_moves_of_one_path_go_one_at_a_time_in_order(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    hops = [HOP, OTHER, DEFAULT_HOP, OTHER]
    answers = await asyncio.gather(
        *(engine.update(conns[i % 2], move(h)) for i, h in enumerate(hops))
    )
    assert answers == [OK] * len(hops)
    for c in conns:
        for name in ("tcpip", "team0", nic_of(engine, c)):
            assert neighbor_mac(engine, c, name) == OTHER, (c, name)
    await eventually(lambda: host_neighbors(engine) == [bytes.fromhex("02000000002c")])
    for c in conns:
        await exchange(engine, c, 1)


async def test_a_move_beside_updates_of_both_neighbors(make_engine: Any, echo_port: int) -> None:
    """An ARP update of the old neighbor and of the new one (once there) race the move: each
    waits its turn (spec §3.1), and the values end where they were sent."""
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    arp = {"object": "neighbor", "DlDestinationAddress": "02:00:00:00:00:99"}
    answers = await asyncio.gather(
        engine.update(conns[0], move(HOP)),
        engine.update(conns[1], arp),
        engine.update(conns[0], {"object": "path", "PathMtu": 1280}),
    )
    assert answers == [OK] * 3
    for c in conns:
        objects = engine.conn_info(c)["objects"]
        for name in ("tcpip", "team0", nic_of(engine, c)):
            assert objects[name]["path"]["PathMtu"] == 1280, (c, name)
    macs = {neighbor_mac(engine, c, nic_of(engine, c)) for c in conns}
    assert len(macs) == 1  # every copy agrees, whichever neighbor the ARP update reached


async def test_connections_made_and_closed_while_the_move_is_below(
    make_engine: Any, echo_port: int
) -> None:
    """A connection offloaded during the move waits for it and goes under the new neighbor;
    those closed during it go; the move is answered; nothing is left behind."""
    engine = await make_engine(teaming("round-robin", nics=3))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(4)]
    delay = engine.fault_inject(
        {"kind": "delay", "layer": "nic1", "call": "MiniportUpdateOffload", "ms": 50}
    )
    moving = asyncio.ensure_future(engine.update(conns[0], move(HOP)))
    await eventually(lambda: engine.host.objects_moving(), "the move below")
    closes = [asyncio.ensure_future(engine.close(c)) for c in conns[1:]]
    late = asyncio.ensure_future(engine.connect("127.0.0.1", echo_port))
    assert await asyncio.wait_for(moving, 5.0) == OK
    await asyncio.wait_for(asyncio.gather(*closes), 5.0)
    new = await asyncio.wait_for(late, 5.0)
    engine.fault_clear(delay)
    for c in (conns[0], new):
        assert neighbor_mac(engine, c, nic_of(engine, c)) == HOP, c
        await exchange(engine, c, 1)


async def test_closing_every_connection_while_the_move_is_below(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    delay = engine.fault_inject(
        {"kind": "delay", "layer": "nic1", "call": "MiniportInitiateOffload", "ms": 50}
    )
    moving = asyncio.ensure_future(engine.update(conns[0], move(HOP)))
    await eventually(lambda: engine.host.objects_moving(), "the move below")
    await asyncio.wait_for(asyncio.gather(*(engine.close(c) for c in conns)), 5.0)
    assert await asyncio.wait_for(moving, 5.0) == OK
    engine.fault_clear(delay)
    await eventually(lambda: not engine.host.objects, "the objects gone")
    assert engine.host.leftovers()["moves_waiting"] == 0


@pytest.mark.parametrize("fault", [None, "nic_down", "target_failure"])
async def test_a_move_while_a_nic_is_offloading_its_first_copy_of_the_path(
    make_engine: Any, echo_port: int, fault: str | None
) -> None:
    """A connection placed on nic1 has nic1 offloading its first copies of the path and the
    old neighbor (slowly) when the move comes: the MUX moves once that copy is offloaded (no
    state operation on a copy being offloaded, spec §3.1), or without it when nic1 fails or is
    taken out meanwhile. A failed nic1 holds the connection's initiate until its RESUME (spec
    §5.5), then asks it up, and the host offloads it again. Every connection ends under the new
    neighbor, carrying bytes."""
    engine = await make_engine(teaming("round-robin", nics=3))
    first = await engine.connect("127.0.0.1", echo_port)  # nic0
    delay = engine.fault_inject(
        {"kind": "delay", "layer": "nic1", "call": "MiniportInitiateOffload", "ms": 100}
    )
    placing = asyncio.ensure_future(engine.connect("127.0.0.1", echo_port))  # nic1
    await eventually(lambda: len(engine.conn_ids()) == 2, "the second connection made")
    second = max(engine.conn_ids())
    await eventually(lambda: engine.conn_info(second)["state"] == "offloading", "nic1's offload")
    moving = asyncio.ensure_future(engine.update(first, move(HOP)))
    out = engine.fault_inject({"kind": fault, "layer": "nic1"}) if fault else None
    assert await asyncio.wait_for(moving, 5.0) == OK
    if fault == "target_failure":
        assert not placing.done()  # held by the failed NIC, as without a move
        engine.fault_clear(out)  # RESUME
    assert await asyncio.wait_for(placing, 5.0) == second
    await eventually(
        lambda: all(
            engine.conn_info(c)["state"] == "offloaded"
            and (fault != "nic_down" or nic_of(engine, c) != "nic1")
            for c in (first, second)
        ),
        "both offloaded, off nic1 if it was taken out",
    )
    for c in (first, second):
        assert neighbor_mac(engine, c, nic_of(engine, c)) == HOP, c
        await exchange(engine, c, 1)
    engine.fault_clear(delay)
    if fault == "nic_down":
        engine.fault_clear(out)


async def test_invalidates_of_the_old_and_the_new_neighbor_after_the_move(
    make_engine: Any, echo_port: int
) -> None:
    """After the move the path hangs under the new neighbor only: an invalidate of the new
    neighbor sends its connections up (spec §3.5), and once they are up a move is of no
    offloaded connection (a move of a path under an invalidated neighbor, before its
    connections are up, is tests/unit/test_host_next_hop_invalidated.py's)."""
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    assert await engine.update(conns[0], move(HOP)) == OK
    assert await engine.invalidate(conns[1], "neighbor") == OK  # the new one, 02:..:2b
    await eventually(lambda: all(engine.conn_info(c)["state"] == "host" for c in conns))
    with pytest.raises(EngineError) as err:
        await engine.update(conns[0], move(OTHER))
    assert err.value.code == ErrorCode.INVALID_STATE and "not offloaded" in str(err.value)
    await eventually(lambda: not engine.host.objects, "the objects gone")
    again = await engine.connect("127.0.0.1", echo_port)
    assert neighbor_mac(engine, again, nic_of(engine, again)) == HOP  # where the path was moved


async def test_a_move_over_ipv6(make_engine: Any) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoPeer, "::1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        engine = await make_engine(DEFAULT_LAYERS)
        conn = await engine.connect("::1", port)
        assert await engine.update(conn, move(HOP, PathMtu=1280)) == OK
        objects = engine.conn_info(conn)["objects"]
        assert objects["nic0"]["neighbor"]["DlDestinationAddress"] == HOP
        assert objects["nic0"]["path"]["PathMtu"] == 1280
        await exchange(engine, conn, 1)
        await engine.close(conn)
    finally:
        server.close()


async def test_stack_info_shows_the_host_s_neighbors_by_next_hop(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(DEFAULT_LAYERS)
    conn = await engine.connect("127.0.0.1", echo_port)

    def hops() -> list[tuple[str, str]]:
        host = next(la for la in engine.info()["layers"] if la["name"] == "tcpip")
        return sorted((o["kind"], o["next_hop"]) for o in host["objects"])

    assert hops() == [("neighbor", DEFAULT_HOP), ("path", DEFAULT_HOP)]
    assert await engine.update(conn, move(HOP)) == OK
    await eventually(lambda: hops() == [("neighbor", HOP), ("path", HOP)], "the old one gone")
