"""`tcp.info`'s `objects` after a next-hop change (spec §3.4 (b)) names the path each layer
holds for the connection, besides the cached state of it and of its neighbor: per layer,
`path_handles`, the ids of the path's `NDIS_OFFLOAD_HANDLE` the layer owns (`handle`) and of
the context it holds for it (`context`), as `handles` names the connection's. Connections on
one path show the same host handle; a connection on another path another one. The fields
that were there (`neighbor`, `path`: cached values only) are as before (the RPC contract:
extend, never break)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimneyd.config import DEFAULT_LAYERS
from chimneyd.drivers.mux.objects import MuxConnection
from chimneyd.drivers.passthrough import ImOffloadEntry
from chimneyd.drivers.target.contexts import TcpContext
from tests.integration.support import EchoPeer
from tests.integration.test_mux import nic_of, teaming

HOP = "02:00:00:00:00:2b"
OK = {"status": "NDIS_STATUS_SUCCESS"}


def _contexts_below(engine: Any, conn: int) -> list[Any]:
    """The contexts the layers under the host hold for the connection, top down."""
    out: list[Any] = []
    handle = engine.host.tcbs[conn].handle
    while handle is not None and handle.miniport_offload_context is not None:
        ctx = handle.miniport_offload_context
        out.append(ctx)
        handle = ctx.handle if isinstance(ctx, ImOffloadEntry) else None
    return out


def _expected(engine: Any, conn: int) -> dict[str, dict[str, int]]:
    """Per layer that keeps state for paths: the ids of its path object for `conn`."""
    tcb = engine.host.tcbs[conn]
    out = {"tcpip": {"handle": tcb.path.handle.id}}
    for ctx in _contexts_below(engine, conn):
        if isinstance(ctx, MuxConnection):
            vobj = ctx.path  # the MUX's path, and its copy on the connection's NIC
            out[ctx.handle.layer] = {
                "handle": vobj.instances[ctx.lower.id].handle.id,
                "context": vobj.id,
            }
        elif isinstance(ctx, TcpContext):
            out[nic_of(engine, conn)] = {"context": ctx.path.id}
    return out


@pytest.mark.parametrize("layers", ["im", "team"])
async def test_objects_name_the_path_each_layer_holds(
    make_engine: Any, echo_port: int, layers: str
) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoPeer, "::1", 0)
    try:
        engine = await make_engine(
            DEFAULT_LAYERS if layers == "im" else teaming("round-robin", nics=2)
        )
        same = [await engine.connect("127.0.0.1", echo_port) for _ in range(2)]
        other = await engine.connect("::1", server.sockets[0].getsockname()[1])
        for conn in (same[0], other):
            assert await engine.update(conn, {"object": "path", "NextHop": HOP}) == OK
        shown: dict[int, dict[str, Any]] = {}
        for conn in (*same, other):
            objects = engine.conn_info(conn)["objects"]
            shown[conn] = objects
            for layer, held in objects.items():
                # the fields that were there, as they were; the path's ids beside them
                assert set(held) == {"neighbor", "path", "path_handles"}, (layer, held)
                assert set(held["path"]) == {"PathMtu"}, (layer, held)
                assert held["neighbor"]["DlDestinationAddress"] == HOP, (layer, held)
            assert {la: h["path_handles"] for la, h in objects.items()} == _expected(engine, conn)
        # one path, one host handle (and one MUX path); another path, another handle
        assert shown[same[0]]["tcpip"]["path_handles"] == shown[same[1]]["tcpip"]["path_handles"]
        assert shown[same[0]]["tcpip"]["path_handles"] != shown[other]["tcpip"]["path_handles"]
        if layers == "team":
            assert [nic_of(engine, c) for c in same] == ["nic0", "nic1"]
            first, second = (shown[c]["team0"]["path_handles"] for c in same)
            assert first["context"] == second["context"]  # the MUX's one path
            assert first["handle"] != second["handle"]  # its copy on each NIC
        for conn in (*same, other):
            await engine.close(conn)
    finally:
        server.close()
