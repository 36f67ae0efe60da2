"""The engine's face towards the RPC server and the daemon.

The RPC layer depends only on this module: `EngineAPI` (what an engine offers), `EngineError`
(a failure carrying a contract error code) and the code table of `rpc-contract.md`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
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
#: Callback for another shard's events: (shard, conn_id, event name, info map).
RemoteEventCallback = Callable[[int, int, str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class ShardReply:
    """One shard's answer to a request the daemon's shards all get: `ok` with its `result`,
    `down` (being restarted: it holds nothing), or `failed` with the contract `error`
    (TIMEOUT when it did not answer in time)."""

    state: str
    result: Any = None
    error: EngineError | None = None


class ClusterAPI(Protocol):
    """The other shards of the daemon, as one shard's RPC methods see them (design: scale)."""

    index: int  # this shard
    count: int  # shards in all

    def local(self, what: str, arg: Any = None) -> Any:
        """This shard's own part of `what` (as `ask` gets the others')."""
        ...

    async def ask(self, what: str, arg: Any, targets: list[int]) -> dict[int, ShardReply]:
        """Ask the shards `targets` (never this one) for their part of `what`; every one
        answers, in time or as `failed`."""
        ...

    async def gather(self, what: str, arg: Any = None) -> dict[int, Any]:
        """Every shard's part of `what`, this one's included; None for a shard that is down.
        Raises the `EngineError` of the first shard that failed (TIMEOUT naming it)."""
        ...

    async def gather_counted(self, what: str) -> tuple[dict[int, Any], dict[str, Any]]:
        """`gather` of a part that counts (`stats`, `metrics`), and the counts to add to its
        sums: those of the shards' processes that have no part in it (ended, or down), kept
        by the supervisor (`observe.aggregate.CounterCarry`)."""
        ...

    def watch(self, callback: RemoteEventCallback) -> Callable[[], None]:
        """Hear every other shard's events (an admin's `events.subscribe "*"`); returns the
        function that stops it."""
        ...


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

    def start_send(self, conn_id: int, data: bytes) -> asyncio.Future[Any]:
        """`send` as a future: checked and queued now, answered by the future."""
        ...

    async def recv(
        self, conn_id: int, max_bytes: int, timeout: float | None, waitall: bool = False
    ) -> bytes: ...

    def start_recv(
        self, conn_id: int, max_bytes: int, timeout: float | None, waitall: bool = False
    ) -> asyncio.Future[Any]:
        """`recv` as a future: checked and asked for now, answered by the future."""
        ...

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

    def fault_inject(self, spec: dict[str, Any], fault_id: int | None = None) -> int:
        """Inject `spec`; under `fault_id` when given (one id for a fault in several shards)."""
        ...

    def fault_clear(self, fault_id: int | None) -> None: ...

    def fault_list(self) -> list[dict[str, Any]]: ...

    def fault_reserve(self) -> int:
        """A fault id from this engine's range (for a fault other shards get too)."""
        ...

    def fault_entries(self) -> list[dict[str, Any]]:
        """Every fault held, used up or not, each with `active`."""
        ...

    def nic_in_service(self, layer: str, up: bool) -> None:
        """Put the NIC `layer` back in service under its MUX (`up`) or take it out, as a
        `nic_up` or `nic_down` does, holding no fault (a restarted shard's NIC as the others
        have it, `rpc.sharded.restore_faults`)."""
        ...

    def team_member(self, layer: str) -> str:
        """The name of the layer the MUX above `layer` is bound to on its side (team0 -> imA
        -> nic0: `imA` for `nic0` and for `imA`): one name for the NIC, whichever a `nic_down`
        or `nic_up` gave. Raises `EngineError` (`INVALID_PARAMS`) for a layer under no MUX."""
        ...

    async def shutdown(self, deadline: float) -> dict[str, Any]:
        """Upload and close every connection within `deadline` seconds; report what was left."""
        ...
