"""The host refuses an offload itself when no target below offers TCP chimney (spec §1.3: a
NIC whose chimney is off advertises no encapsulation the host recognises), and says so twice:
`tcp.offload`'s answer and `tcp.info`'s `offload_refused` (docs/rpc.md), which must agree —
the same `NDIS_STATUS`, the host's own name as the layer (no initiate went down), and the
answer word for word as the reason. Through the RPC server a client drives, on a running
engine with real loopback sockets, straight above the NIC and through an IM (which passes
the NIC's capabilities on, spec §8), and through a team whose every NIC has it off. The NIC's
chimney is turned off by its configuration, as a user would (`layer.tcp_chimney`); a team
with one such NIC puts its connections on the others."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from chimney_client import AsyncClient
from chimney_client.errors import NdisStatusError
from chimneyd.api import EngineError, ErrorCode
from chimneyd.config import LayerConfig, RpcConfig
from chimneyd.rpc.server import RpcServer
from tests.integration.support import EngineFactory, topology
from tests.rpc.support import HOST

NO_CHIMNEY = (
    "NDIS_STATUS: NDIS_STATUS_NOT_SUPPORTED (0xC00000BB) {} offers no TCP chimney (spec §1.3)"
)


def chimney_off(ims: int) -> tuple[LayerConfig, ...]:
    """host → `ims` IMs → nic0 with its TCP chimney off (`layer.tcp_chimney = false`)."""
    *above, nic = topology(ims)
    return (*above, dataclasses.replace(nic, tcp_chimney=False))


@pytest.mark.parametrize("ims", [0, 1])
async def test_offload_and_info_agree_when_no_target_offers_chimney(
    make_engine: EngineFactory, echo_port: int, ims: int
) -> None:
    engine = await make_engine(chimney_off(ims))
    server = RpcServer(engine, RpcConfig(listen=(f"{HOST}:0",)))
    await server.start()
    try:
        async with await AsyncClient.connect(server.addresses[0]) as c:
            # the offload at connect is refused: the connection is still answered
            conn = await c.tcp_connect(HOST, echo_port)
            info: dict[str, Any] = await c.tcp_info(conn)
            below = "im0" if ims else "nic0"  # the binding the host reads the capabilities of
            refused = {
                "status": "NDIS_STATUS_NOT_SUPPORTED",
                "layer": "tcpip",
                "reason": NO_CHIMNEY.format(below),
            }
            assert info["state"] == "host" and info["offload_refused"] == refused, info
            # asked again, the answer is the refusal `tcp.info` tells, word for word
            with pytest.raises(NdisStatusError) as answer:
                await c.tcp_offload(conn)
            info = await c.tcp_info(conn)
            assert info["state"] == "host", info
            assert info["offload_refused"]["reason"] == str(answer.value), (info, answer.value)
            assert info["offload_refused"] == refused, info
            # and the connection carries on in the host stack
            assert await c.tcp_send(conn, b"in the host") == 11
            assert await c.tcp_recv(conn, 11, 5000, waitall=True) == b"in the host"
            await c.tcp_close(conn)
    finally:
        await server.stop_accepting()
        await server.drain(5.0)


def team(chimneys: tuple[bool, ...]) -> tuple[LayerConfig, ...]:
    names = tuple(f"nic{i}" for i in range(len(chimneys)))
    return (
        LayerConfig("tcpip", "host", ("team0",)),
        LayerConfig("team0", "mux", names, policy="round-robin"),
        *(LayerConfig(n, "target", tcp_chimney=on) for n, on in zip(names, chimneys, strict=True)),
    )


async def test_a_team_whose_nics_all_have_chimney_off_offers_none(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(team((False, False)))
    conn = await engine.connect(HOST, echo_port)  # its offload at once refused
    with pytest.raises(EngineError) as answer:
        await engine.offload(conn)
    assert answer.value.code == ErrorCode.NDIS_STATUS, answer.value
    assert NO_CHIMNEY.format("team0").endswith(answer.value.detail), answer.value.detail
    assert engine.conn_info(conn)["state"] == "host"


async def test_a_team_puts_no_connection_on_a_nic_with_chimney_off(
    make_engine: EngineFactory, echo_port: int
) -> None:
    engine = await make_engine(team((False, True, False)))
    conns = [await engine.connect(HOST, echo_port) for _ in range(6)]
    placed = {engine.conn_info(c)["state"] for c in conns}
    assert placed == {"offloaded"}, placed
    stats = engine.ndis.stats()
    # the six connections and their path and neighbor, all on nic1
    assert stats["nic1"]["offloads_active"] == stats["tcpip"]["offloads_active"] == 8, stats
    assert stats["nic0"]["offloads_active"] == stats["nic2"]["offloads_active"] == 0, stats
