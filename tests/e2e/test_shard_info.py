"""`stack.info` of a daemon of several shards keeps each layer key's type: a list a layer
holds (the host's `objects`, `waiting`) stays a list when the shards' differ — every shard's
items — where it used to become the string `"mixed"`."""

from __future__ import annotations

from pathlib import Path

from chimney_client import PeerServer
from tests.e2e.test_shards import closing, on_shards, sharded


async def test_stack_info_layer_lists_stay_lists(tmp_path: Path, echo_peer: PeerServer) -> None:
    """One offloaded connection in shard 0 only: shard 0's host holds path and neighbor
    objects, shard 1's none; the daemon's `objects` is shard 0's list."""
    with sharded(tmp_path) as d:
        async with closing(await on_shards(d)) as c:
            conn = await c[0].tcp_connect("127.0.0.1", echo_peer.port)
            info = await c[1].stack_info()
            await c[0].tcp_close(conn)
            host = next(la for la in info["layers"] if la["name"] == "tcpip")
            per_shard = {
                s["shard"]: next(la for la in s["layers"] if la["name"] == "tcpip")["objects"]
                for s in info["shards"]
            }
            assert isinstance(host["objects"], list), host["objects"]
            assert per_shard[0] and not per_shard[1], per_shard
            assert host["objects"] == per_shard[0] + per_shard[1]
