"""What a method sees of the client calling it: the narrow face of a session.

Methods depend on this protocol, not on the session class, so the method table never imports the
server (server → session → methods → params / ownership / errors).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from chimneyd.api import ClusterAPI, EngineAPI
from chimneyd.config import RpcConfig

from .ownership import Holdings, Ownership


class Caller(Protocol):
    engine: EngineAPI
    config: RpcConfig
    ownership: Ownership
    holdings: Holdings
    cluster: ClusterAPI | None  # the other shards (None: a daemon of one shard)

    def authenticate(self, token: str) -> None:
        """Check `token` (DENIED on failure; too many failures close the client)."""
        ...

    def subscribe(self, conn: int | None) -> None:
        """Send this client `tcp.event` notifications of `conn` (None: all it may see)."""
        ...

    def describe_rpc(self) -> dict[str, Any]:
        """`stack.info`'s `rpc` part: listen addresses, limits."""
        ...

    def rpc_stats(self) -> dict[str, Any]:
        """`stack.stats`'s `rpc` part: clients, in flight."""
        ...

    def background(self, work: Awaitable[Any]) -> None:
        """Run clean-up that belongs to no request (awaited by the server's drain)."""
        ...


__all__ = ["Caller"]
