"""The host refuses an offload itself when no target below offers TCP chimney (spec §1.3: a
NIC whose chimney is off advertises no encapsulation the host recognises), and says so twice:
`tcp.offload`'s answer and `tcp.info`'s `offload_refused` (docs/rpc.md), which must agree —
the same `NDIS_STATUS`, the host's own name as the layer (no initiate went down), and the
answer word for word as the reason. Through the RPC server a client drives, on a running
engine with real loopback sockets, straight above the NIC and through an IM (which passes
the NIC's capabilities on, spec §8). Before, no test of its own covered this refusal."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from chimney_client import AsyncClient
from chimney_client.errors import NdisStatusError
from chimneyd.config import RpcConfig
from chimneyd.drivers.target import adapter as target_adapter
from chimneyd.drivers.target.target import OffloadTarget
from chimneyd.ndis.oid import NdisTcpConnectionOffload
from chimneyd.rpc.server import RpcServer
from tests.integration.support import EngineFactory, topology
from tests.rpc.support import HOST

NO_CHIMNEY = (
    "NDIS_STATUS: NDIS_STATUS_NOT_SUPPORTED (0xC00000BB) {} offers no TCP chimney (spec §1.3)"
)


@pytest.fixture
def chimney_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every NIC advertises its capabilities with no encapsulation: chimney is off there."""
    advertised = target_adapter.capabilities

    def off(t: OffloadTarget) -> NdisTcpConnectionOffload:
        return dataclasses.replace(advertised(t), Encapsulation=0)

    monkeypatch.setattr(target_adapter, "capabilities", off)


@pytest.mark.usefixtures("chimney_off")
@pytest.mark.parametrize("ims", [0, 1])
async def test_offload_and_info_agree_when_no_target_offers_chimney(
    make_engine: EngineFactory, echo_port: int, ims: int
) -> None:
    engine = await make_engine(topology(ims))
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
