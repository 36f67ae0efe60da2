"""The engine's face towards the RPC server and the daemon.

The RPC layer depends only on this module: `EngineAPI` (what an engine offers), `EngineError`
(a failure carrying a contract error code) and the code table of `rpc-contract.md`.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any, Protocol


class ErrorCode(IntEnum):
    """Error codes of the RPC contract v1."""

    NO_METHOD = 1
    INVALID_PARAMS = 2
    NOT_FOUND = 3
    INVALID_STATE = 4
    NDIS_STATUS = 5
    LIMIT = 6
    TIMEOUT = 7
    DENIED = 8
    CONNECT_FAILED = 9
    INTERNAL = 10


class EngineError(Exception):
    """A failure with a contract code; `str(err)` is the contract message (`"NOT_FOUND: ..."`)."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code.name}: {detail}")

    @property
    def message(self) -> str:
        return f"{self.code.name}: {self.detail}"


#: Callback for events: (conn_id, event name, info map).
EventCallback = Callable[[int, str, dict[str, Any]], None]


class EngineAPI(Protocol):
    """What the running stack offers. Every method raises `EngineError` on failure."""

    def info(self) -> dict[str, Any]:
        """`stack.info` minus the `rpc` part: version, contract, layers."""
        ...

    def stats(self) -> dict[str, Any]:
        """`stack.stats` minus the `rpc` part: layers, connections."""
        ...

    def keep_lean(self, holder: object) -> None:
        """Once idle, give back the tables of `holder`'s emptied containers too."""
        ...

    def give_back_when_idle(self) -> None:
        """Give freed memory back to the system soon, if no connection is open."""
        ...

    async def connect(
        self,
        host: str,
        port: int,
        offload: bool = True,
        target: str | None = None,
        on_conn: Callable[[int], None] | None = None,
    ) -> int: ...

    async def listen(self, host: str, port: int, offload: bool = True) -> int: ...

    def listener_info(self, listener_id: int) -> dict[str, Any]: ...

    async def accept(self, listener_id: int, timeout: float | None) -> int: ...

    async def close_listener(self, listener_id: int) -> None: ...

    async def offload(self, conn_id: int) -> dict[str, Any]: ...

    async def upload(self, conn_id: int) -> dict[str, Any]: ...

    async def send(self, conn_id: int, data: bytes) -> int: ...

    async def recv(
        self, conn_id: int, max_bytes: int, timeout: float | None, waitall: bool = False
    ) -> bytes: ...

    async def disconnect(self, conn_id: int, abortive: bool) -> str: ...

    async def close(self, conn_id: int) -> None: ...

    async def query(self, conn_id: int) -> dict[str, Any]:
        """`NdisQueryOffloadState` of the connection's TCP object: its delegated state now."""
        ...

    async def update(self, conn_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """`NdisUpdateOffload` of the connection's cached TCP variables."""
        ...

    def conn_info(self, conn_id: int) -> dict[str, Any]: ...

    def conn_ids(self) -> list[int]: ...

    def trace(self, conn_id: int, limit: int | None) -> list[dict[str, Any]]: ...

    def subscribe(self, conn_id: int | None, callback: EventCallback) -> Callable[[], None]:
        """Call `callback` for events of `conn_id` (None: all); returns an unsubscribe function."""
        ...

    def fault_inject(self, spec: dict[str, Any]) -> int: ...

    def fault_clear(self, fault_id: int | None) -> None: ...

    def fault_list(self) -> list[dict[str, Any]]: ...

    async def shutdown(self, deadline: float) -> dict[str, Any]:
        """Upload and close every connection within `deadline` seconds; report what was left."""
        ...
