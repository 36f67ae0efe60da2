"""A teaming MUX over several NICs, on real loopback sockets: placement by each policy, room
and IP version, failover of one NIC's connections only (spec §5.5, §5.2) with every byte
arriving once and in order, a NIC taken out and put back, rebalancing, per-NIC object trees
(spec §2.3), and the traces that show a connection move."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections import Counter
from typing import Any

import pytest

from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import LayerConfig
from tests.integration.support import accept_planted_bugs, drained, eventually, fail_next


def teaming(policy: str, nics: int = 3, room: int = 16384, im_under: bool = False) -> Any:
    """tcpip → team0 (mux) → nic0..nicN-1; with `im_under`, nic0 sits below an IM."""
    names = [f"nic{i}" for i in range(nics)]
    lowers = ["im0", *names[1:]] if im_under else names
    layers = [
        LayerConfig("tcpip", "host", ("team0",)),
        LayerConfig("team0", "mux", tuple(lowers), policy=policy),
    ]
    if im_under:
        layers.append(LayerConfig("im0", "passthrough", ("nic0",)))
    layers += [LayerConfig(n, "target", (), room) for n in names]
    return tuple(layers)


def nic_of(engine: Any, conn: int) -> str:
    info = engine.conn_info(conn)
    assert info["state"] == "offloaded", info
    name: str = info["path"][-1]
    return name


def layer(engine: Any, name: str) -> dict[str, Any]:
    result: dict[str, Any] = next(la for la in engine.info()["layers"] if la["name"] == name)
    return result


def team(engine: Any) -> dict[str, Any]:
    return layer(engine, "team0")


def lowers(engine: Any) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = team(engine)["lowers"]
    return result


async def echo(engine: Any, conn: int, data: bytes) -> None:
    assert await engine.send(conn, data) == len(data)
    got = await engine.recv(conn, len(data), 5.0, True)
    assert got == data


def all_offloaded(engine: Any, conns: list[int]) -> Any:
    return lambda: all(engine.conn_info(c)["state"] == "offloaded" for c in conns)


def last_seq(engine: Any, conn: int) -> int:
    return max((h["seq"] for h in engine.trace(conn, None)), default=-1)


def hops(engine: Any, conn: int, after: int = -1) -> list[tuple[str, str, str | None]]:
    """The connection's hops with a `seq` past `after`, as (layer, call, event)."""
    trace = engine.trace(conn, None)
    return [(h["layer"], h["call"], h.get("event")) for h in trace if h["seq"] > after]


# -- placement ---------------------------------------------------------------------------------
async def test_round_robin_places_in_turn_and_carries_bytes(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("round-robin"))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    assert [nic_of(engine, c) for c in conns] == ["nic0", "nic1", "nic2"] * 2
    assert engine.conn_info(conns[0])["path"] == ["tcpip", "team0", "nic0"]
    for c in conns:
        await echo(engine, c, os.urandom(3000))
    assert {n: lo["connections"] for n, lo in lowers(engine).items()} == {
        "nic0": 2,
        "nic1": 2,
        "nic2": 2,
    }
    # each NIC carries the bytes of its own connections only
    layer_stats = engine.ndis.stats()
    assert all(layer_stats[n]["bytes_sent"] == 2 * 3000 for n in ("nic0", "nic1", "nic2"))


async def test_active_standby_uses_the_first_nic_until_it_is_down(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("active-standby"))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(4)]
    assert {nic_of(engine, c) for c in conns} == {"nic0"}
    fault = engine.fault_inject({"kind": "nic_down", "layer": "nic0"})
    await eventually(lambda: {engine.conn_info(c)["path"][-1] for c in conns} == {"nic1"})
    await eventually(all_offloaded(engine, conns))
    for c in conns:
        await echo(engine, c, b"after the move" * 100)
    engine.fault_clear(fault)  # back in service: new connections go to nic0 again
    await eventually(lambda: lowers(engine)["nic0"]["in_service"])
    fresh = await engine.connect("127.0.0.1", echo_port)
    assert nic_of(engine, fresh) == "nic0"


async def test_least_loaded_fills_the_emptiest_nic(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine(teaming("least-loaded"))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    assert Counter(nic_of(engine, c) for c in conns) == {"nic0": 2, "nic1": 2, "nic2": 2}
    for c in [c for c in conns if nic_of(engine, c) == "nic2"]:
        await engine.close(c)
    await eventually(lambda: lowers(engine)["nic2"]["connections"] == 0)
    fresh = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    assert [nic_of(engine, c) for c in fresh] == ["nic2", "nic2"]


async def test_least_bytes_avoids_the_nic_with_unacknowledged_data(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("least-bytes"))
    a, b, c = [await engine.connect("127.0.0.1", echo_port) for _ in range(3)]
    assert [nic_of(engine, x) for x in (a, b, c)] == ["nic0", "nic1", "nic2"]
    fault = engine.fault_inject({"kind": "stall_peer", "conn": a, "ms": 3000})
    sending = asyncio.ensure_future(engine.send(a, b"s" * 65536))  # completes when acknowledged
    await eventually(lambda: lowers(engine)["nic0"]["outstanding_bytes"] > 0)
    await engine.close(b)
    await eventually(lambda: lowers(engine)["nic1"]["connections"] == 0)
    first = await engine.connect("127.0.0.1", echo_port)
    second = await engine.connect("127.0.0.1", echo_port)
    # each NIC now has one connection: least-loaded would take nic0 (the first); nic0 has
    # bytes outstanding, so least-bytes takes nic1, then the tie of nic1 and nic2 goes to nic1
    assert [nic_of(engine, x) for x in (first, second)] == ["nic1", "nic1"]
    engine.fault_clear(fault)
    assert await sending == 65536
    assert await engine.recv(a, 65536, 10.0, True) == b"s" * 65536
    await eventually(lambda: lowers(engine)["nic0"]["outstanding_bytes"] == 0)


async def test_hash_keeps_a_connection_on_the_same_nic(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine(teaming("hash"))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(12)]
    first = {c: nic_of(engine, c) for c in conns}
    assert len(set(first.values())) > 1  # 12 distinct 4-tuples on one NIC: (1/3)^11
    for c in conns[:4]:
        await engine.upload(c)
        await engine.offload(c)
    assert {c: nic_of(engine, c) for c in conns} == first


async def test_a_full_nic_is_skipped_and_a_full_team_refuses(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("active-standby", nics=2, room=1))
    a = await engine.connect("127.0.0.1", echo_port)
    b = await engine.connect("127.0.0.1", echo_port)
    assert (nic_of(engine, a), nic_of(engine, b)) == ("nic0", "nic1")
    host = next(la for la in engine.info()["layers"] if la["name"] == "tcpip")
    assert host["capabilities"]["team0"]["TcpConnectionOffloadCapacity"] == 2  # the sum
    third = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(third)["state"] == "host"
    with pytest.raises(EngineError) as err:
        await engine.offload(third)
    assert "NDIS_STATUS_OFFLOAD_TCP_ENTRIES" in err.value.detail
    await echo(engine, third, b"host mode still works")
    await engine.close(a)
    await eventually(lambda: lowers(engine)["nic0"]["connections"] == 0)
    await engine.offload(third)
    assert nic_of(engine, third) == "nic0"


async def test_ipv6_goes_only_to_nics_that_offload_it(make_engine: Any) -> None:
    # nic0 offloads IPv4 only (`ipv6 = false`): its capabilities say so, and the mux skips it
    team = tuple(
        dataclasses.replace(layer, ipv6=False) if layer.name == "nic0" else layer
        for layer in teaming("round-robin", nics=2)
    )
    loop = asyncio.get_running_loop()
    from tests.integration.support import EchoPeer

    v6 = await loop.create_server(EchoPeer, "::1", 0)
    v4 = await loop.create_server(EchoPeer, "127.0.0.1", 0)
    try:
        engine = await make_engine(team)
        v6_port = v6.sockets[0].getsockname()[1]
        v4_port = v4.sockets[0].getsockname()[1]
        six = [await engine.connect("::1", v6_port) for _ in range(3)]
        assert {nic_of(engine, c) for c in six} == {"nic1"}
        four = [await engine.connect("127.0.0.1", v4_port) for _ in range(2)]
        assert {nic_of(engine, c) for c in four} == {"nic0", "nic1"}
        for c in six + four:
            await echo(engine, c, b"v" * 500)
        # with nic1 out, no NIC left offloads IPv6: the host keeps the connection itself
        fault = engine.fault_inject({"kind": "nic_down", "layer": "nic1"})
        await eventually(lambda: all(engine.conn_info(c)["state"] == "host" for c in six))
        more = await engine.connect("::1", v6_port)
        assert engine.conn_info(more)["state"] == "host"
        await echo(engine, more, b"still here")
        for c in six:
            await echo(engine, c, b"after nic1 left" * 20)
        engine.fault_clear(fault)
        await eventually(all_offloaded(engine, six))  # offloaded again at RESUME
    finally:
        v6.close()
        v4.close()


# -- failover ------------------------------------------------------------------------------------
async def test_a_failed_nic_moves_only_its_connections_without_losing_a_byte(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("round-robin"), trace_depth=4096)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(9)]
    on = {c: nic_of(engine, c) for c in conns}
    moved = [c for c in conns if on[c] == "nic1"]
    stayed = [c for c in conns if on[c] != "nic1"]
    marks = {c: last_seq(engine, c) for c in conns}
    sent = {c: bytearray() for c in conns}

    async def stream(c: int, rounds: int) -> bytes:
        got = bytearray()
        for i in range(rounds):
            chunk = os.urandom(1000 + i)
            sent[c] += chunk
            assert await engine.send(c, chunk) == len(chunk)
            got += await engine.recv(c, len(chunk), 5.0, True)
            await asyncio.sleep(0)
        return bytes(got)

    streams = [asyncio.ensure_future(stream(c, 40)) for c in conns]
    await asyncio.sleep(0.01)
    fault = engine.fault_inject({"kind": "target_failure", "layer": "nic1"})
    results = await asyncio.gather(*streams)
    for c, got in zip(conns, results, strict=True):
        assert got == bytes(sent[c]), f"conn {c} on {on[c]}: bytes lost or reordered"
    await eventually(all_offloaded(engine, conns))
    assert all(nic_of(engine, c) in ("nic0", "nic2") for c in moved)
    assert all(nic_of(engine, c) == on[c] for c in stayed)
    for c in stayed:  # never asked up: they kept moving data offloaded
        assert ("team0", "NdisTcpOffloadEventHandler", "TcpIndicateRetrieve") not in hops(
            engine, c, marks[c]
        )
    for c in moved:
        after = hops(engine, c, marks[c])
        retrieve = after.index(("team0", "NdisTcpOffloadEventHandler", "TcpIndicateRetrieve"))
        terminate = after.index(("nic1", "MiniportTerminateOffload", None))
        initiate = after.index((nic_of(engine, c), "MiniportInitiateOffload", None))
        assert retrieve < terminate < initiate
    assert lowers(engine)["nic1"]["failed"] and lowers(engine)["nic1"]["connections"] == 0
    assert engine.ndis.stats()["nic1"]["offloads_active"] == 0  # its path and neighbor went too
    engine.fault_clear(fault)
    await eventually(lambda: lowers(engine)["nic1"]["in_service"])
    fresh = await engine.connect("127.0.0.1", echo_port)
    await echo(engine, fresh, b"nic1 is back")


async def split_initiate_held_at_nic1(
    make_engine: Any, echo_port: int, ms: int
) -> tuple[Any, list[int], int, list[asyncio.Future[Any]], int]:
    """Two connections offloaded in one tree, split over nic0 and nic1, nic1 slow with its part
    (a delay of `ms`): returned once nic0 has completed its part, with the engine, the
    connections, the delay fault, the offloads in flight and the connection on nic0."""
    engine = await make_engine(teaming("round-robin", nics=2), trace_depth=4096)
    conns = [await engine.connect("127.0.0.1", echo_port, offload=False) for _ in range(2)]
    slow = engine.fault_inject(
        {"kind": "delay", "layer": "nic1", "call": "MiniportInitiateOffload", "ms": ms}
    )
    # asked in the same turn: the host offloads both in one tree (spec §2.3)
    offloads = [asyncio.ensure_future(engine.offload(c)) for c in conns]
    done = ("nic0", "NdisMInitiateOffloadComplete", None)
    await eventually(lambda: any(done in hops(engine, c) for c in conns))
    early = next(c for c in conns if done in hops(engine, c))
    return engine, conns, slow, offloads, early


@pytest.mark.parametrize("leaves", ["target_failure", "nic_down"])
async def test_a_nic_that_leaves_while_the_mux_completes_an_initiate_loses_its_connection(
    make_engine: Any, echo_port: int, leaves: str
) -> None:
    """Two connections are offloaded in one tree, split over both NICs; nic1 is slow with its
    part (a delay fault). nic0 has completed its part when it fails (PAUSE, UPLOAD_ALL), or is
    taken out of service: its connection is not yet offloaded above, so the MUX's evacuation
    cannot ask it up then. It must once the initiate completes, or the connection stays on a
    NIC out of service (a failed one refuses its I/O as an upload under way, spec §5.5,
    §3.6.4) for ever."""
    engine, conns, slow, offloads, early = await split_initiate_held_at_nic1(
        make_engine, echo_port, 400
    )
    failed = engine.fault_inject({"kind": leaves, "layer": "nic0"})
    await asyncio.wait_for(asyncio.gather(*offloads), 5.0)
    # asked up once offloaded above, uploaded from nic0 and offloaded again on nic1
    await eventually(lambda: engine.ndis.stats()["nic0"]["offloads_active"] == 0)
    await eventually(all_offloaded(engine, conns))
    assert [nic_of(engine, c) for c in conns] == ["nic1", "nic1"]
    assert ("team0", "NdisTcpOffloadEventHandler", "TcpIndicateRetrieve") in hops(engine, early)
    engine.fault_clear(slow)
    for c in conns:
        await echo(engine, c, os.urandom(2048))
    engine.fault_clear(failed)
    await eventually(lambda: lowers(engine)["nic0"]["in_service"])
    assert engine.checker is not None and engine.checker.violations == []


async def test_a_nic_that_fails_and_recovers_while_the_mux_completes_an_initiate_still_asks(
    make_engine: Any, echo_port: int
) -> None:
    """As above, but nic0 is back (RESUME) before the initiate completes above. Its UPLOAD_ALL
    still holds the connection it had offloaded: nic0 refuses its I/O as an upload under way
    and will never ask for it itself (spec §5.5). The MUX must ask it up all the same; that
    nic0 is in service again by then does not undo its request (the team fuzz's connections
    under an invalidated neighbor with no `TcpIndicateRetrieve`). nic1 holds its part long
    enough for nic0 to fail and come back first, on a slow machine too."""
    engine, conns, slow, offloads, early = await split_initiate_held_at_nic1(
        make_engine, echo_port, 2000
    )
    failed = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    await eventually(lambda: lowers(engine)["nic0"]["failed"])
    engine.fault_clear(failed)  # RESUME from nic0, its connection still asked for
    await eventually(lambda: not lowers(engine)["nic0"]["failed"])
    assert not all(o.done() for o in offloads)  # the initiate is still held at nic1
    await asyncio.wait_for(asyncio.gather(*offloads), 5.0)
    assert ("team0", "NdisTcpOffloadEventHandler", "TcpIndicateRetrieve") in hops(engine, early)
    await eventually(all_offloaded(engine, conns))
    engine.fault_clear(slow)
    for c in conns:
        await echo(engine, c, os.urandom(2048))
    await eventually(lambda: not team(engine)["evacuating"])
    assert engine.checker is not None and engine.checker.violations == []


async def test_an_initiate_that_reaches_a_failed_nic_waits_for_its_resume_then_moves(
    make_engine: Any, echo_port: int
) -> None:
    """The MUX places an offload on nic0 just before nic0 fails: nic0 queues the initiate
    (spec §5.5: a paused target queues the initiates still on their way) and the connection
    stays offloading, its bytes in the host, until nic0's RESUME. Then nic0 offloads it (and
    the MUX asks it up, since it was on its way to nic0 at the UPLOAD_ALL: the host offloads it
    again); no byte is lost on the way (docs/architecture.md, failover)."""
    engine = await make_engine(teaming("active-standby", nics=2), trace_depth=4096)
    conn = await engine.connect("127.0.0.1", echo_port, offload=False)
    hold = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportInitiateOffload", "ms": 60_000}
    )
    offload = asyncio.ensure_future(engine.offload(conn))
    await eventually(lambda: ("team0", "NdisInitiateOffload", None) in hops(engine, conn))
    failed = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    await eventually(lambda: lowers(engine)["nic0"]["failed"])
    engine.fault_clear(hold)  # the initiate goes on, into the failed nic0
    await eventually(lambda: layer(engine, "nic0")["paused_initiates"] == 1, "nic0 queues it")
    sending = asyncio.ensure_future(engine.send(conn, b"held in the host"))
    await asyncio.sleep(0.05)
    assert not offload.done() and engine.conn_info(conn)["state"] == "offloading"
    engine.fault_clear(failed)  # RESUME: nic0 offloads what it queued
    assert (await asyncio.wait_for(offload, 5.0))["state"] == "offloaded"
    assert await asyncio.wait_for(sending, 5.0) == 16
    assert await engine.recv(conn, 16, 5.0, True) == b"held in the host"
    await eventually(lambda: not team(engine)["evacuating"], "the MUX has its connections")
    await eventually(all_offloaded(engine, [conn]), "offloaded")
    await echo(engine, conn, os.urandom(4096))


async def test_failover_through_an_im_below_the_mux(make_engine: Any, echo_port: int) -> None:
    """The NIC's PAUSE and UPLOAD_ALL reach the MUX through the IM above that NIC."""
    engine = await make_engine(teaming("round-robin", nics=2, im_under=True))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(4)]
    assert [engine.conn_info(c)["path"][1:] for c in conns[:2]] == [
        ["team0", "im0", "nic0"],
        ["team0", "nic1"],
    ]
    fault = engine.fault_inject({"kind": "target_failure", "layer": "nic0"})
    await eventually(lambda: all(engine.conn_info(c)["path"][-1] == "nic1" for c in conns))
    await eventually(all_offloaded(engine, conns))
    for c in conns:
        await echo(engine, c, os.urandom(2048))
    engine.fault_clear(fault)
    await eventually(lambda: lowers(engine)["im0"]["in_service"])


async def test_nic_down_up_and_rebalance(make_engine: Any, echo_port: int) -> None:
    engine = await make_engine(teaming("least-loaded"))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(9)]
    fault = engine.fault_inject({"kind": "nic_down", "layer": "nic2"})
    await eventually(lambda: lowers(engine)["nic2"]["connections"] == 0)
    await eventually(all_offloaded(engine, conns))
    assert Counter(nic_of(engine, c) for c in conns) == {"nic0": 5, "nic1": 4} or Counter(
        nic_of(engine, c) for c in conns
    ) == {"nic0": 4, "nic1": 5}
    assert not lowers(engine)["nic2"]["in_service"]
    host = next(la for la in engine.info()["layers"] if la["name"] == "tcpip")
    assert host["capabilities"]["team0"]["TcpConnectionOffloadCapacity"] == 2 * 16384
    engine.fault_clear(fault)  # nic_up
    await eventually(lambda: lowers(engine)["nic2"]["in_service"])
    engine.fault_inject({"kind": "rebalance", "layer": "team0"})
    await eventually(lambda: lowers(engine)["nic2"]["connections"] == 3)
    await eventually(all_offloaded(engine, conns))
    assert Counter(nic_of(engine, c) for c in conns) == {"nic0": 3, "nic1": 3, "nic2": 3}
    for c in conns:
        await echo(engine, c, os.urandom(1500))


async def test_each_nic_holds_its_own_copy_of_shared_objects(
    make_engine: Any, echo_port: int
) -> None:
    """Six connections to one peer share a neighbor and a path above the MUX; below it, each
    NIC offloads its own path and neighbor, gone when its last connection goes (spec §2.3)."""
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    layer_stats = engine.ndis.stats()
    assert layer_stats["tcpip"]["offloads_active"] == 6 + 2
    assert layer_stats["nic0"]["offloads_active"] == 3 + 2
    assert layer_stats["nic1"]["offloads_active"] == 3 + 2
    for c in [c for c in conns if nic_of(engine, c) == "nic1"]:
        await engine.upload(c)
    await eventually(lambda: engine.ndis.stats()["nic1"]["offloads_active"] == 0)
    assert engine.ndis.stats()["nic0"]["offloads_active"] == 3 + 2


async def test_the_mux_refuses_what_it_cannot_do(make_engine: Any) -> None:
    engine = await make_engine(teaming("round-robin", nics=2))
    with pytest.raises(EngineError) as err:
        engine.fault_inject({"kind": "nic_down", "layer": "team0"})
    assert err.value.code == ErrorCode.INVALID_PARAMS
    with pytest.raises(EngineError) as err:
        engine.fault_inject({"kind": "rebalance", "layer": "nic0"})
    assert err.value.code == ErrorCode.INVALID_PARAMS


@pytest.mark.parametrize("part", ["[neighbor]", "[path]", ""])
async def test_an_initiate_failed_below_fails_every_block_above(
    make_engine: Any, echo_port: int, part: str
) -> None:
    """nic0, the active NIC, fails the neighbor, the path or the connection of a first
    initiate. Every block the MUX completes above must carry a status: the blocks under a
    failed object fail with it (spec §3.2.4), even those the NIC never reached. The connection
    stays in the host, and offloads on a later try. The engine fixture fails the test on any
    layer error or invariant violation."""
    engine = await make_engine(teaming("active-standby", nics=2))
    fail_next(engine, "nic0", f"MiniportInitiateOffload{part}")
    conn = await engine.connect("127.0.0.1", echo_port)
    assert engine.conn_info(conn)["state"] == "host"
    assert engine.layer_errors == 0
    assert (await engine.offload(conn))["state"] == "offloaded"
    assert nic_of(engine, conn) == "nic0"
    await echo(engine, conn, b"offloaded after all")


@pytest.mark.parametrize("count", [1, 2])
async def test_a_terminate_that_finds_corruption_is_repeated_through_the_mux(
    make_engine: Any, echo_port: int, count: int
) -> None:
    """The last connection's close terminates it, and the MUX its copies of the path and
    neighbor on the NIC with it; the NIC reports their state corrupt (once, or twice). The
    host terminates the connection again (spec §3.7), then its path and neighbor in a call of
    their own (`terminate.flush_terminates`), and the MUX must take those terminates as a NIC
    would. The engine fixture checks that every table drains, with no layer error or
    violation. Every terminate is counted exactly: a stray one fails the test."""
    engine = await make_engine(teaming("round-robin", nics=2), trace_depth=4096)
    conn = await engine.connect("127.0.0.1", echo_port)
    fail_next(engine, "nic0", "MiniportTerminateOffload", count=count)
    await asyncio.wait_for(engine.close(conn), 5.0)
    assert engine.layer_errors == 0
    # the connection's: each failure, then success
    mine = [h for h in hops(engine, conn) if h[:2] == ("nic0", "NdisMTerminateOffloadComplete")]
    assert len(mine) == count + 1, hops(engine, conn)
    # the host's two steps: the connection, once per failure and once more, then its path and
    # neighbor in a call of their own (`terminate.flush_terminates`), counted once every
    # table is empty: the last of them may still be below when the close answers
    stats = await drained(engine)
    assert stats["tcpip"]["calls"]["NdisTerminateOffload"] == count + 2, stats["tcpip"]
    assert stats["team0"]["calls"]["NdisMTerminateOffloadComplete"] == count + 2, stats["team0"]
    # the MUX's copies of the path and neighbor on nic0 go with the connection's terminate, and
    # fail with it. Failed once, they go again with the connection's next, which completes all
    # three; failed twice, they wait for their retry (`MuxIm._corrupt_again`, a second at
    # least) and the connection's third goes alone: the host's terminate of the path and
    # neighbor takes them down then, in one call more (`MuxIm._terminate`, spec §3.1)
    down = count + 1 + (1 if count >= 2 else 0)
    assert stats["team0"]["calls"]["NdisTerminateOffload"] == down, stats["team0"]
    calls = stats["nic0"]["calls"]
    assert calls["NdisMTerminateOffloadComplete"] == down, calls
    assert "NdisMTerminateOffloadComplete" not in stats["nic1"]["calls"], stats["nic1"]


async def test_a_terminate_that_fails_on_one_nic_of_a_split_call_is_repeated(
    make_engine: Any, echo_port: int
) -> None:
    """Two connections, one on each NIC, are uploaded in one terminate: the MUX splits it, nic0
    reports its connection's state corrupt at once, and nic1 is slow (a delay fault). nic0 then
    asks for the upload and indicates the abort (spec §3.7 steps 2 and 3); the MUX must pass
    them up only after the whole terminate has completed above, as the spec orders them. If
    they overtake it, the host hears the abort of a connection it is still terminating, and
    after the failure nothing terminates it again: it stays offloaded for ever."""
    engine = await make_engine(teaming("round-robin", nics=2), trace_depth=4096)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    assert [nic_of(engine, c) for c in conns] == ["nic0", "nic1"]
    fail_next(engine, "nic0", "MiniportTerminateOffload")
    slow = engine.fault_inject(
        {"kind": "delay", "layer": "nic1", "call": "MiniportTerminateOffload", "ms": 300}
    )
    # asked in the same turn: the host terminates both in one tree (spec §2.3)
    uploads = [asyncio.ensure_future(engine.upload(c)) for c in conns]
    done = await asyncio.wait_for(asyncio.gather(*uploads), 5.0)
    assert [d["state"] for d in done] == ["host", "host"]
    got = [(call, event) for la, call, event in hops(engine, conns[0]) if la == "tcpip"]
    first = got.index(("NdisTerminateOffload", None))
    assert got[first:] == [
        ("NdisTerminateOffload", None),
        ("ProtocolTerminateOffloadComplete", None),  # NDIS_STATUS_FAILURE
        ("ProtocolTcpOffloadEvent", "TcpIndicateRetrieve"),
        ("ProtocolTcpOffloadEvent", "TcpIndicateAbort"),
        ("NdisTerminateOffload", None),  # the further terminate (spec §3.7 step 4)
        ("ProtocolTerminateOffloadComplete", None),
    ]
    await eventually(lambda: engine.ndis.stats()["nic0"]["offloads_active"] == 0)
    engine.fault_clear(slow)
    await echo(engine, conns[1], b"still carried")
    assert engine.layer_errors == 0
    assert engine.checker is not None and engine.checker.violations == []


# -- an initiate split over several NICs -------------------------------------------------------
class Greeter(asyncio.Protocol):
    """Says hello a little after it accepts, then closes its side (FIN)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(GREETING_AFTER_S, transport.write, b"hello")  # type: ignore[attr-defined]
        loop.call_later(GREETING_AFTER_S, transport.write_eof)  # type: ignore[attr-defined]


GREETING_AFTER_S = 0.1


async def test_what_a_nic_indicates_before_the_whole_initiate_completes_waits(
    make_engine: Any,
) -> None:
    """Two connections offloaded in one tree go to two NICs (round-robin). nic1 is slow to
    complete its part (a delay fault), and nic0's connection hears the peer's data and FIN
    meanwhile. The MUX completes the initiate above only once both NICs have; what nic0
    indicates before then must wait for that completion (spec §9 item 5), then arrive whole
    and in order. The engine fixture fails the test on any invariant violation."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Greeter, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        engine = await make_engine(teaming("round-robin", nics=2))
        fault = engine.fault_inject(
            {"kind": "delay", "layer": "nic1", "call": "MiniportInitiateOffload", "ms": 400}
        )
        # connected in the same turn: the host offloads both in one tree (spec §2.3)
        conns = list(await asyncio.gather(*(engine.connect("127.0.0.1", port) for _ in range(2))))
        await eventually(all_offloaded(engine, conns))
        assert sorted(nic_of(engine, c) for c in conns) == ["nic0", "nic1"]
        early = next(c for c in conns if nic_of(engine, c) == "nic0")
        got = [h["call"] for h in engine.trace(early, None) if h["layer"] == "team0"]
        assert "MiniportInitiateOffload" in got and "NdisTcpOffloadReceiveHandler" in got
        assert got.index("NdisMInitiateOffloadComplete") < got.index("NdisTcpOffloadReceiveHandler")
        for c in conns:
            assert await engine.recv(c, 100, 5.0, True) == b"hello"  # then the end of stream
        assert engine.checker is not None and engine.checker.violations == []
        engine.fault_clear(fault)
    finally:
        server.close()


async def test_a_copy_left_unused_during_an_invalidate_waits_for_it(
    make_engine: Any, echo_port: int
) -> None:
    """The last connection on nic0 is uploaded while the shared neighbor is being invalidated,
    and nic0 holds the invalidate (a delay fault). nic0's copies of the path and neighbor are
    left unused; the MUX must not terminate them before their invalidate completes (spec §3.1,
    §9 item 7), only after. The engine fixture fails the test on any invariant violation."""
    engine = await make_engine(teaming("round-robin", nics=2))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    assert [nic_of(engine, c) for c in conns] == ["nic0", "nic1"]
    fault = engine.fault_inject(
        {"kind": "delay", "layer": "nic0", "call": "MiniportInvalidateOffload", "ms": 300}
    )
    upload = asyncio.ensure_future(engine.upload(conns[0]))
    invalidate = asyncio.ensure_future(engine.invalidate(conns[1], "neighbor"))
    assert (await asyncio.wait_for(upload, 5.0))["state"] == "host"
    assert await asyncio.wait_for(invalidate, 5.0) == {"status": "NDIS_STATUS_SUCCESS"}
    await eventually(lambda: engine.ndis.stats()["nic0"]["offloads_active"] == 0)
    assert engine.checker is not None and engine.checker.violations == []
    engine.fault_clear(fault)
    for c in conns:
        await echo(engine, c, b"still carried")


async def test_an_invalidate_reaches_a_copy_still_being_offloaded(
    make_engine: Any, echo_port: int
) -> None:
    """The shared neighbor is invalidated while nic1 is still offloading its copy of it, for
    the connection just placed there (a delay fault holds nic1's initiate). That copy must be
    invalidated too once it is offloaded, so nic1 asks its connection up (spec §3.5);
    otherwise it stays offloaded under an invalidated neighbor, and every new connection
    waits behind that neighbor for ever."""
    engine = await make_engine(teaming("round-robin", nics=2))
    first = await engine.connect("127.0.0.1", echo_port)
    assert nic_of(engine, first) == "nic0"
    fault = engine.fault_inject(
        {"kind": "delay", "layer": "nic1", "call": "MiniportInitiateOffload", "ms": 300}
    )
    second = asyncio.ensure_future(engine.connect("127.0.0.1", echo_port))
    # the second connection is placed on nic1, whose part of the initiate is held
    await eventually(lambda: lowers(engine)["nic1"]["connections"] == 1)
    invalidated = await asyncio.wait_for(engine.invalidate(first, "neighbor"), 5.0)
    assert invalidated == {"status": "NDIS_STATUS_SUCCESS"}
    late = await asyncio.wait_for(second, 5.0)
    await eventually(lambda: engine.conn_info(late)["state"] == "host")
    await eventually(lambda: engine.conn_info(first)["state"] == "host")
    engine.fault_clear(fault)
    third = await asyncio.wait_for(engine.connect("127.0.0.1", echo_port), 5.0)
    assert engine.conn_info(third)["state"] == "offloaded"
    for c in (first, late, third):
        await echo(engine, c, b"carried after the invalidate")


@pytest.mark.parametrize("stale", ["neighbor", "path"])
async def test_a_connection_placed_on_a_fresh_copy_of_an_invalidated_object_is_asked_up(
    make_engine: Any, echo_port: int, stale: str
) -> None:
    """A connection waits at the MUX while nic0's copies of its path and neighbor are being
    terminated (a delay fault holds nic0's terminate), and the neighbor (or path) is
    invalidated meanwhile: the invalidate reaches nic1's copy, the only live one. Then nic0's
    copies are gone and the connection goes there, on fresh copies the invalidate never saw.
    The MUX must invalidate them too, so nic0 asks the connection up (spec §3.5); otherwise it
    stays offloaded under an invalidated object and every new connection waits behind it."""
    engine = await make_engine(teaming("least-loaded", nics=2))
    first, second = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    assert [nic_of(engine, c) for c in (first, second)] == ["nic0", "nic1"]
    faults = [
        engine.fault_inject(
            {"kind": "delay", "layer": nic, "call": "MiniportTerminateOffload", "ms": ms}
        )
        for nic, ms in (("nic0", 400), ("nic1", 1200))  # nic1's copies go after nic0's
    ]
    # nic0's last connection goes up, and its copies with it, held by the delay
    upload = asyncio.ensure_future(engine.upload(first))
    await eventually(lambda: ("team0", "NdisTerminateOffload", None) in hops(engine, first))
    late = asyncio.ensure_future(engine.connect("127.0.0.1", echo_port))
    # its initiate waits at the MUX for nic0's copies, built before the invalidate below
    await eventually(lambda: team(engine)["deferred"] == ["Initiate"])
    invalidated = await asyncio.wait_for(engine.invalidate(second, stale), 5.0)
    assert invalidated == {"status": "NDIS_STATUS_SUCCESS"}
    assert (await asyncio.wait_for(upload, 5.0))["state"] == "host"
    conn = await asyncio.wait_for(late, 5.0)
    await eventually(lambda: engine.conn_info(conn)["state"] == "host")
    assert ("nic0", "MiniportInitiateOffload", None) in hops(engine, conn)
    assert ("nic0", "NdisTcpOffloadEventHandler", "TcpIndicateRetrieve") in hops(engine, conn)
    await eventually(lambda: engine.conn_info(second)["state"] == "host")
    for fault in faults:
        engine.fault_clear(fault)
    fourth = await asyncio.wait_for(engine.connect("127.0.0.1", echo_port), 5.0)
    assert engine.conn_info(fourth)["state"] == "offloaded"
    for c in (first, second, conn, fourth):
        await echo(engine, c, b"carried after the invalidate")
    assert engine.checker is not None and engine.checker.violations == []


async def test_a_terminate_from_above_waits_for_the_muxs_own_invalidate(
    make_engine: Any, echo_port: int
) -> None:
    """As above, a connection lands on fresh copies of an invalidated neighbor on nic0, and
    the MUX invalidates them itself; nic0 holds that invalidate (a delay fault). Meanwhile the
    connection is closed, its neighbor's other connections are already up, and the layer
    above terminates the connection with its path and neighbor. Nothing above knows of the
    MUX's own invalidate, so the MUX must hold the terminate until it completes (spec §3.1,
    §9 item 7) rather than fail it as a terminate of objects with dependents."""
    engine = await make_engine(teaming("least-loaded", nics=2))
    first, second = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
    faults = [
        engine.fault_inject(
            {"kind": "delay", "layer": nic, "call": "MiniportTerminateOffload", "ms": ms}
        )
        for nic, ms in (("nic0", 300), ("nic1", 600))
    ]
    upload = asyncio.ensure_future(engine.upload(first))
    await eventually(lambda: ("team0", "NdisTerminateOffload", None) in hops(engine, first))
    late = asyncio.ensure_future(engine.connect("127.0.0.1", echo_port))
    await eventually(lambda: team(engine)["deferred"] == ["Initiate"])
    faults.append(
        engine.fault_inject(
            {"kind": "delay", "layer": "nic0", "call": "MiniportInvalidateOffload", "ms": 2000}
        )
    )
    invalidated = await asyncio.wait_for(engine.invalidate(second, "neighbor"), 5.0)
    assert invalidated == {"status": "NDIS_STATUS_SUCCESS"}
    await asyncio.wait_for(upload, 5.0)
    conn = await asyncio.wait_for(late, 5.0)
    assert nic_of(engine, conn) == "nic0"
    await eventually(lambda: engine.conn_info(second)["state"] == "host")
    # the last connection under the neighbor: the host terminates it, its path and neighbor
    await asyncio.wait_for(engine.close(conn), 5.0)
    assert engine.layer_errors == 0
    await eventually(lambda: engine.ndis.stats()["nic0"]["offloads_active"] == 0)
    for fault in faults:
        engine.fault_clear(fault)
    again = await asyncio.wait_for(engine.connect("127.0.0.1", echo_port), 5.0)
    assert engine.conn_info(again)["state"] == "offloaded"
    for c in (first, second, again):
        await echo(engine, c, b"carried after the invalidate")
    assert engine.checker is not None and engine.checker.violations == []


# -- state operations on objects that live on several NICs -----------------------------------
def copies_on(engine: Any, nic: str) -> dict[str, str]:
    """The phase of each copy the MUX holds on `nic` of the objects offloaded to it, by type
    (`Ip4OffloadState` a path, `NeighborOffloadState` a neighbor): `stack.info` shows no copy."""
    mux = engine.layers["team0"]
    return {
        vobj.header_type.name: inst.lifecycle.phase.name
        for vobj in mux.vobj_table.values()
        for inst in vobj.instances.values()
        if inst.lower.name == nic
    }


def calls(engine: Any, layer: str, call: str) -> int:
    """How many times `layer` made `call` (`stack.stats`: counted where the call is made)."""
    made: int = engine.ndis.stats()[layer]["calls"].get(call, 0)
    return made


async def test_an_invalidate_passes_by_a_copy_whose_terminate_failed(
    make_engine: Any, echo_port: int
) -> None:
    """A NIC's copy of a path whose terminate found its hardware state corrupt (spec §3.7)
    takes only a terminate, which the MUX gives it once nothing on that NIC depends on it. An
    invalidate of the path from above in the meantime reaches the other copies, not that one:
    relaying it there was a §9 violation, met by the team property with bugs planted (this is
    its shrunk example). nic1 gets a connection by a rebalance and is taken out; its terminate
    of that connection and of its path and neighbor copies meets a bug.

    The copy is FAILED only until the host terminates the aborted connection again (§3.7
    step 4), which takes the copy with it: too short a while to invalidate in by waiting. So
    delay faults stage it in order: nic1 holds the first terminate; the MUX holds the
    invalidate at its entry, and the host's second terminate queues behind it (a delay never
    reorders a layer's calls); then nic1's terminate runs and meets the bug, and the invalidate
    is let through to the MUX while its copy on nic1 is FAILED, ahead of that terminate."""
    engine = await make_engine(teaming("active-standby", nics=3), trace_depth=4096)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(3)]  # all on nic0
    engine.fault_inject({"kind": "rebalance", "layer": "team0"})
    await eventually(
        lambda: (
            sorted(lo["connections"] for lo in lowers(engine).values()) == [1, 1, 1]
            and all(engine.conn_info(c)["state"] == "offloaded" for c in conns)
        ),
        "the rebalance gives each NIC one connection",
    )
    moved = next(c for c in conns if nic_of(engine, c) == "nic1")
    others = [c for c in conns if c != moved]
    assert {nic_of(engine, c) for c in others} == {"nic0", "nic2"}
    engine.fault_inject({"kind": "raise_next", "layer": "nic1", "call": "MiniportTerminateOffload"})
    held_below = engine.fault_inject(
        {"kind": "delay", "layer": "nic1", "call": "MiniportTerminateOffload", "ms": 60000}
    )
    mark = last_seq(engine, moved)
    down = engine.fault_inject({"kind": "nic_down", "layer": "nic1"})
    await eventually(
        lambda: ("nic1", "MiniportTerminateOffload", None) in hops(engine, moved, mark),
        "the host's terminate of nic1's connection reaches nic1",
    )
    held_at_mux = engine.fault_inject(
        {"kind": "delay", "layer": "team0", "call": "MiniportInvalidateOffload", "ms": 60000}
    )
    invalidate = asyncio.ensure_future(engine.invalidate(others[0], "path"))
    # once the host has handed it down, it is in the MUX's queue behind the delay that holds
    # it, and ahead of any terminate the host makes after it
    await eventually(
        lambda: calls(engine, "tcpip", "NdisInvalidateOffload") == 1,
        "the host hands the invalidate to the MUX",
    )
    engine.fault_clear(held_below)
    await eventually(lambda: engine.layer_errors == 1, "the bug in nic1's terminate goes off")
    again = ("team0", "MiniportTerminateOffload", None)
    await eventually(
        lambda: hops(engine, moved, mark).count(again) == 2,
        "the host terminates the aborted connection again, behind the held invalidate",
    )
    assert copies_on(engine, "nic1") == {
        "Ip4OffloadState": "FAILED",
        "NeighborOffloadState": "FAILED",
    }
    assert not invalidate.done()
    engine.fault_clear(held_at_mux)
    assert await asyncio.wait_for(invalidate, 5.0) == {"status": "NDIS_STATUS_SUCCESS"}
    # it reached the copies on nic0 and nic2 (each NIC completed its part), none on nic1: an
    # invalidate of a path names no connection, so the connections' traces do not show it
    done = "NdisMInvalidateOffloadComplete"
    assert {n: calls(engine, n, done) for n in ("nic0", "nic1", "nic2")} == {
        "nic0": 1,
        "nic1": 0,
        "nic2": 1,
    }
    engine.fault_clear(down)
    await eventually(lambda: not team(engine)["evacuating"], "the MUX has its connections")
    await eventually(lambda: engine.conn_info(moved)["state"] == "host", "the abort is done")
    assert engine.checker is not None
    accept_planted_bugs(engine, 1)  # the bug, and no violation beside it
    # the connection whose terminate met the bug is aborted (spec §3.7); the others carry bytes
    abort = ("team0", "NdisTcpOffloadEventHandler", "TcpIndicateAbort")
    assert [c for c in conns if abort in hops(engine, c)] == [moved]
    for c in others:
        await echo(engine, c, os.urandom(2048))


async def test_update_query_and_invalidate_reach_every_nic(
    make_engine: Any, echo_port: int
) -> None:
    engine = await make_engine(teaming("round-robin", nics=2), trace_depth=4096)
    seen: list[tuple[int, str, dict[str, Any]]] = []
    engine.subscribe(None, lambda c, e, i: seen.append((c, e, i)))
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(4)]
    assert [nic_of(engine, c) for c in conns] == ["nic0", "nic1"] * 2
    # a connection's update goes to its own NIC only
    assert await engine.update(conns[1], {"RcvIndicationSize": 100}) == {
        "status": "NDIS_STATUS_SUCCESS"
    }
    trace = engine.trace(conns[1], None)
    updates = [h["layer"] for h in trace if h["call"] == "MiniportUpdateOffload"]
    assert updates == ["team0", "nic1"]
    await echo(engine, conns[0], b"p" * 900)
    state = await engine.query(conns[0])  # the delegated state from the NIC, through the MUX
    assert state["SndUna"] - engine.conn_info(conns[0])["delegated"]["SndUna"] == 0
    assert engine.conn_info(conns[0])["delegated_source"] == "query"
    for c in conns:
        await echo(engine, c, b"q" * 700)
    # the shared neighbor lives on both NICs: invalidating it reaches both, and every
    # connection on either is asked up (spec §3.5, InvalidState)
    assert await engine.invalidate(conns[0], "neighbor") == {"status": "NDIS_STATUS_SUCCESS"}
    await eventually(lambda: all(engine.conn_info(c)["state"] == "host" for c in conns))
    reasons = [i["reason"] for c, e, i in seen if e == "TcpIndicateRetrieve"]
    assert reasons.count("InvalidState") == 4
    layer_calls = engine.ndis.stats()
    assert layer_calls["nic0"]["offloads_active"] == layer_calls["nic1"]["offloads_active"] == 0
    for c in conns:
        await echo(engine, c, b"after invalidate")
        assert (await engine.offload(c))["state"] == "offloaded"
    assert sorted(nic_of(engine, c) for c in conns) == ["nic0", "nic0", "nic1", "nic1"]


async def test_a_teams_pause_and_resume_show_whole_in_every_connections_trace(
    make_engine: Any, echo_port: int
) -> None:
    """A NIC of a team behind a filter fails: the MUX pauses the layers above while it moves
    that NIC's connections, then resumes them (spec §5.5). A PAUSE or RESUME is the whole
    adapter's: in every connection's trace, moved or not, each shows from where it starts,
    the MUX, through the filter up to the host."""
    layers = (
        LayerConfig("tcpip", "host", ("filter0",)),
        LayerConfig("filter0", "passthrough", ("team0",)),
        LayerConfig("team0", "mux", ("nic0", "nic1", "nic2"), policy="round-robin"),
        LayerConfig("nic0", "target"),
        LayerConfig("nic1", "target"),
        LayerConfig("nic2", "target"),
    )
    engine = await make_engine(layers, trace_depth=4096)
    conns = [await engine.connect("127.0.0.1", echo_port) for _ in range(6)]
    marks = {c: last_seq(engine, c) for c in conns}
    stayed = [c for c in conns if engine.conn_info(c)["path"][-1] != "nic1"]
    engine.fault_inject({"kind": "target_failure", "layer": "nic1"})
    await eventually(lambda: all(engine.conn_info(c)["path"][-1] != "nic1" for c in conns))
    await eventually(all_offloaded(engine, conns))
    relay = [
        ("team0", "NdisMIndicateStatusEx"),
        ("filter0", "ProtocolStatusEx"),
        ("filter0", "NdisMIndicateStatusEx"),
        ("tcpip", "ProtocolStatusEx"),
    ]
    for c in conns:
        seen = hops(engine, c, marks[c])
        for event in ("NDIS_STATUS_OFFLOAD_PAUSE", "NDIS_STATUS_OFFLOAD_RESUME"):
            counts = [seen.count((layer, call, event)) for layer, call in relay]
            assert len(set(counts)) == 1, (c, event, seen)  # whole relays only
            # one that stayed offloaded throughout heard both; a moved one was up for RESUME
            assert counts[0] >= 1 or c not in stayed, (c, event, seen)
