"""`tcp.connect`'s `opts.target` pins a NIC (rpc-contract): under a mux, the connection's first
offload goes to the NIC named, or is refused as a full NIC refuses it; a later `tcp.offload`
goes there again; a failover still moves it. A target naming an IM or a mux is refused."""

from __future__ import annotations

import pytest

from chimney_client import AsyncClient, PeerServer
from chimney_client.errors import InvalidParams, NdisStatusError
from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import HOST, settled, wait_until
from tests.e2e.topologies import layers, round_trip

#: three NICs in one team, nic1 the active one; nic0 behind an IM, and an IM over the team
TEAM = layers(
    ("tcpip", "host", ["im9"]),
    ("im9", "passthrough", ["team0"]),
    ("team0", "mux", ["nic1", "im0", "nic2"], {"policy": "active-standby"}),
    ("im0", "passthrough", ["nic0"]),
    ("nic0", "target"),
    ("nic1", "target"),
    ("nic2", "target"),
)


def on(nic: str) -> list[str]:
    """The path of a connection offloaded to `nic` in `TEAM`."""
    return ["tcpip", "im9", "team0", *(["im0"] if nic == "nic0" else []), nic]


async def path_of(c: AsyncClient, conn: int) -> list[str]:
    info = await c.tcp_info(conn)
    return list(info["path"]) if info["state"] == "offloaded" else [info["state"]]


@pytest.mark.parametrize("nic", ["nic0", "nic2"])  # not the one the policy picks
async def test_connect_target_under_a_mux_is_the_nic_used(
    spawn_daemon: SpawnDaemon, echo_peer: PeerServer, nic: str
) -> None:
    d = spawn_daemon(TEAM)
    async with await d.aclient() as c:
        conn = await c.tcp_connect(HOST, echo_peer.port, target=nic)
        pinned = await path_of(c, conn)
        await round_trip(c, conn, b"p" * 10000)
        # the policy still places a connection without a target (active-standby: nic1)
        other = await c.tcp_connect(HOST, echo_peer.port)
        placed = await path_of(c, other)
        for cid in (conn, other):
            await c.tcp_close(cid)
        await settled(c.stack_stats)
    assert pinned == on(nic)
    assert placed == on("nic1")


@pytest.mark.parametrize("layer", ["im9", "team0", "im0", "tcpip"])
async def test_connect_target_naming_no_nic_is_invalid_params(
    spawn_daemon: SpawnDaemon, echo_peer: PeerServer, layer: str
) -> None:
    d = spawn_daemon(TEAM)
    async with await d.aclient() as c:
        with pytest.raises(InvalidParams, match=f"layer '{layer}' is a .*, not a target"):
            await c.tcp_connect(HOST, echo_peer.port, target=layer)
        assert await c.tcp_list() == []  # no connection was made


async def test_tcp_offload_honours_the_pin(
    spawn_daemon: SpawnDaemon, echo_peer: PeerServer
) -> None:
    d = spawn_daemon(TEAM)
    async with await d.aclient() as c:
        conn = await c.tcp_connect(HOST, echo_peer.port, offload=False, target="nic2")
        first = (await c.tcp_offload(conn))["path"]
        await c.tcp_upload(conn)
        again = (await c.tcp_offload(conn))["path"]
        await round_trip(c, conn, b"o" * 10000)
        await c.tcp_close(conn)
        await settled(c.stack_stats)
    assert first == on("nic2") and again == on("nic2"), (first, again)


async def test_a_pinned_nic_out_of_service_refuses_the_offload(
    spawn_daemon: SpawnDaemon, echo_peer: PeerServer
) -> None:
    """As a NIC without room: the connection stays usable in the host stack, and `tcp.offload`
    answers the NDIS status; once the NIC is back in service it goes there."""
    d = spawn_daemon(TEAM)
    async with await d.aclient() as c:
        fid = await c.fault_inject("nic_down", layer="nic1")
        conn = await c.tcp_connect(HOST, echo_peer.port, target="nic1")
        at_connect = await path_of(c, conn)
        await round_trip(c, conn, b"h" * 10000)
        with pytest.raises(NdisStatusError):
            await c.tcp_offload(conn)
        refused = await path_of(c, conn)
        await c.fault_clear(fid)

        async def offloaded() -> bool:
            try:
                await c.tcp_offload(conn)
            except NdisStatusError:
                return False  # the NIC's RESUME is on its way
            return True

        await wait_until(offloaded)
        after = await path_of(c, conn)
        await round_trip(c, conn, b"n" * 10000)
        await c.tcp_close(conn)
        await settled(c.stack_stats)
    assert at_connect == ["host"] and refused == ["host"], (at_connect, refused)
    assert after == on("nic1")


async def test_a_failover_still_moves_a_pinned_connection(
    spawn_daemon: SpawnDaemon, echo_peer: PeerServer
) -> None:
    """The pin is where the connection is placed; at its NIC's failure the team moves it."""
    d = spawn_daemon(TEAM)
    async with await d.aclient() as c:
        conn = await c.tcp_connect(HOST, echo_peer.port, target="nic2")
        pinned = await path_of(c, conn)
        fid = await c.fault_inject("target_failure", layer="nic2")

        async def moved() -> bool:
            return await path_of(c, conn) == on("nic1")  # active-standby's first in service

        await wait_until(moved)
        await round_trip(c, conn, b"f" * 10000)
        await c.fault_clear(fid)
        await c.tcp_close(conn)
        await settled(c.stack_stats)
    assert pinned == on("nic2")
