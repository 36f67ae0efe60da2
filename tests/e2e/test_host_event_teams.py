"""`host_event` on a NIC of a team: the host's reasons to upload (spec §6.2) hold for that NIC
only. Its connections are uploaded, and the team's other NICs go on taking offloads."""

from __future__ import annotations

import pytest

from chimney_client import PeerServer
from chimney_client.errors import InvalidState
from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import HOST, settled, wait_until
from tests.e2e.topologies import layers, round_trip

TEAM = layers(
    ("tcpip", "host", ["team0"]),
    ("team0", "mux", ["nic0", "nic1"], {"policy": "round-robin"}),
    ("nic0", "target"),
    ("nic1", "target"),
)


@pytest.mark.parametrize("event", ["media_disconnect", "power_down"])
async def test_host_event_on_a_nic_of_a_team_leaves_the_other_nic_usable(
    spawn_daemon: SpawnDaemon, echo_peer: PeerServer, event: str
) -> None:
    d = spawn_daemon(TEAM)
    async with await d.aclient() as c:
        old = await c.tcp_connect(HOST, echo_peer.port, target="nic0")
        fid = await c.fault_inject("host_event", layer="nic0", event=event)

        async def uploaded() -> bool:
            return bool((await c.tcp_info(old))["state"] == "host")

        await wait_until(uploaded)
        # round-robin's turn is nic1's, then nic0's: each new one goes to nic1
        new = [await c.tcp_connect(HOST, echo_peer.port) for _ in range(3)]
        infos = [await c.tcp_info(conn) for conn in new]
        for conn in new:
            await round_trip(c, conn, b"z" * 10000)
        # pinned to the NIC the host withholds: refused, as with one NIC
        with pytest.raises(InvalidState, match="withholds offloads to nic0"):
            await c.tcp_offload(await c.tcp_connect(HOST, echo_peer.port, target="nic0"))
        await c.fault_clear(fid)
        for conn in await c.tcp_list():
            await c.tcp_close(conn)
        await settled(c.stack_stats)
    for info in infos:
        assert info["state"] == "offloaded" and info["path"] == ["tcpip", "team0", "nic1"], info


async def test_host_event_on_every_nic_of_a_team_refuses_offloads(
    spawn_daemon: SpawnDaemon, echo_peer: PeerServer
) -> None:
    d = spawn_daemon(TEAM)
    async with await d.aclient() as c:
        f0 = await c.fault_inject("host_event", layer="nic0", event="media_disconnect")
        f1 = await c.fault_inject("host_event", layer="nic1", event="net_event_pause")
        conn = await c.tcp_connect(HOST, echo_peer.port, offload=False)
        with pytest.raises(InvalidState, match=r"withholds offloads to nic0: .*; nic1: "):
            await c.tcp_offload(conn)
        await c.fault_clear(f0)
        placed = (await c.tcp_offload(conn))["path"]
        await c.fault_clear(f1)
        await c.tcp_close(conn)
        await settled(c.stack_stats)
    assert placed == ["tcpip", "team0", "nic0"]
