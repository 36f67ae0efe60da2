"""`tcp.info`'s `offload_refused` over the RPC, on a daemon of deploy/teaming.toml (one process,
and two shards): a `tcp.connect` pinned to a NIC out of service answers the connection's id
(rpc-contract), and `tcp.info` says why its offload was refused — the team's `NDIS_STATUS` — and
nil again once an offload of it goes. Before, it said only `state: "host"`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chimney_client import AsyncClient, PeerServer
from chimney_client.errors import NdisStatusError
from tests.e2e.conftest import SpawnDaemon
from tests.e2e.support import HOST, settled, wait_until
from tests.e2e.test_shards import sharded

TEAMING = (Path(__file__).resolve().parents[2] / "deploy" / "teaming.toml").read_text()
REFUSED = {
    "status": "NDIS_STATUS_FAILURE",
    "layer": "team0",
    "reason": "NDIS_STATUS: NDIS_STATUS_FAILURE (0xC0000001)",
}


async def _refused_then_offloaded(c: AsyncClient, port: int) -> tuple[Any, Any]:
    """`tcp.info` of a connection pinned to nic0 out of service, then once offloaded there."""
    fid = await c.fault_inject("nic_down", layer="nic0")
    conn = await c.tcp_connect(HOST, port, target="nic0")
    info = await c.tcp_info(conn)
    await c.fault_clear(fid)

    async def offloaded() -> bool:
        try:
            await c.tcp_offload(conn)
        except NdisStatusError:
            return False  # the NIC's RESUME is on its way
        return True

    await wait_until(offloaded)
    after = await c.tcp_info(conn)
    await c.tcp_close(conn)
    await settled(c.stack_stats)
    return info, after


async def test_tcp_info_says_why_the_offload_at_connect_was_refused(
    spawn_daemon: SpawnDaemon, echo_peer: PeerServer
) -> None:
    d = spawn_daemon(TEAMING)
    async with await d.aclient() as c:
        info, after = await _refused_then_offloaded(c, echo_peer.port)
    assert info["state"] == "host" and info["offload_refused"] == REFUSED, info
    assert after["state"] == "offloaded" and after["offload_refused"] is None, after


async def test_a_shards_tcp_info_says_it_too(tmp_path: Path, echo_peer: PeerServer) -> None:
    with sharded(tmp_path, TEAMING) as d:
        async with await d.aclient() as c:
            info, after = await _refused_then_offloaded(c, echo_peer.port)
    assert info["state"] == "host" and info["offload_refused"] == REFUSED, info
    assert after["state"] == "offloaded" and after["offload_refused"] is None, after


async def test_a_shards_tcp_info_names_the_team_with_a_short_hop_trace(
    tmp_path: Path, echo_peer: PeerServer
) -> None:
    """`engine.trace_depth` 6, fewer hops than one initiate through the team: the layer is
    noted as the completion goes up, not read back from the trace (before: `layer` nil)."""
    short = TEAMING.replace("[engine]\n", "[engine]\ntrace_depth = 6\n", 1)
    assert short != TEAMING
    with sharded(tmp_path, short) as d:
        async with await d.aclient() as c:
            info, after = await _refused_then_offloaded(c, echo_peer.port)
    assert info["state"] == "host" and info["offload_refused"] == REFUSED, info
    assert after["state"] == "offloaded" and after["offload_refused"] is None, after
