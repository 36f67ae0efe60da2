"""An in-memory engine implementing `chimneyd.api.EngineAPI`, for RPC server tests.

No sockets and no NDIS: a connection is an echo buffer (what is sent comes back on `recv`),
events are raised by the calls that would raise them in the real stack. Every call is recorded
in `calls` so tests can check what the server asked of the engine.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from chimneyd.api import EngineError, ErrorCode, EventCallback

REFUSED_PORT = 1  # tcp.connect to this port fails with CONNECT_FAILED


class FakeConn:
    __slots__ = ("buffer", "host", "listener", "port", "readable", "state", "trace")

    def __init__(self, host: str, port: int, offload: bool) -> None:
        self.host = host
        self.port = port
        self.state = "offloaded" if offload else "host"
        self.buffer = bytearray()
        self.readable = asyncio.Event()
        self.trace: list[dict[str, Any]] = []
        self.listener: int | None = None  # the listener it was accepted on


class FakeEngine:
    """Implements EngineAPI (checked by mypy through `as_api`)."""

    def __init__(self) -> None:
        self.conns: dict[int, FakeConn] = {}
        self.closed: list[int] = []
        self.lean_holders: list[object] = []
        self.give_backs = 0
        self.listeners: dict[int, tuple[str, int, asyncio.Queue[int]]] = {}
        self.closed_listeners: list[int] = []
        self.faults: dict[int, dict[str, Any]] = {}
        self.subscribers: dict[int | None, list[EventCallback]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self._ids = itertools.count(1)
        self._listener_ids = itertools.count(1)
        self._fault_ids = itertools.count(1)
        # method name → what that call raises (a bug → INTERNAL, EMFILE → LIMIT, ...)
        self.fail: dict[str, BaseException] = {}
        self.connect_gate: asyncio.Event | None = None  # when set, connects wait on it
        self.listen_gate: asyncio.Event | None = None  # when set, listens wait on it
        self.shutdown_deadline: float | None = None

    def last_call(self) -> Any:
        return self.calls[-1]

    # -- stack ---------------------------------------------------------------------------------
    def _maybe_fail(self, call: str) -> None:
        exc = self.fail.get(call)
        if exc is not None:
            raise exc

    def info(self) -> dict[str, Any]:
        self._maybe_fail("info")
        return {
            "version": "fake",
            "contract": 1,
            "layers": [
                {"name": "tcpip", "kind": "host", "lower": ["nic0"], "state": "running"},
                {"name": "nic0", "kind": "target", "lower": [], "state": "running"},
            ],
        }

    def keep_lean(self, holder: object) -> None:
        self.lean_holders.append(holder)

    def give_back_when_idle(self) -> None:
        self.give_backs += 1

    def stats(self) -> dict[str, Any]:
        active = sum(1 for c in self.conns.values() if c.state == "offloaded")
        layer = {"offloads_active": active, "handles": active, "outstanding_nbls": 0}
        return {
            "layers": {"tcpip": dict(layer), "nic0": dict(layer)},
            "connections": len(self.conns),
        }

    # -- connections ---------------------------------------------------------------------------
    async def connect(
        self,
        host: str,
        port: int,
        offload: bool = True,
        target: str | None = None,
        on_conn: Any = None,
    ) -> int:
        self.calls.append(("connect", host, port, offload, target))
        if self.connect_gate is not None:
            await self.connect_gate.wait()
        self._maybe_fail("connect")
        if port == REFUSED_PORT:
            raise EngineError(ErrorCode.CONNECT_FAILED, f"{host}:{port} refused the connection")
        conn = self._new_conn(host, port, offload)
        if on_conn is not None:
            on_conn(conn)
        return conn

    def _new_conn(self, host: str, port: int, offload: bool) -> int:
        conn = next(self._ids)
        self.conns[conn] = FakeConn(host, port, offload)
        return conn

    async def listen(self, host: str, port: int, offload: bool = True) -> int:
        self.calls.append(("listen", host, port, offload))
        if self.listen_gate is not None:
            await self.listen_gate.wait()
        self._maybe_fail("listen")
        lid = next(self._listener_ids)
        self.listeners[lid] = (host, port or 40000 + lid, asyncio.Queue())
        return lid

    def incoming(self, lid: int, host: str = "127.0.0.1", port: int = 50000) -> int:
        """Test hook: a peer connected to listener `lid`; returns the new conn id."""
        conn = self._new_conn(host, port, True)
        self.conns[conn].listener = lid
        self.listeners[lid][2].put_nowait(conn)
        return conn

    def deliver(self, conn_id: int, data: bytes) -> None:
        """Test hook: the peer sent `data` on `conn_id` (a waiting `recv` completes)."""
        conn = self.conns[conn_id]
        conn.buffer += data
        conn.readable.set()

    def listener_info(self, listener_id: int) -> dict[str, Any]:
        host, port, queue = self._listener(listener_id)
        return {"host": host, "port": port, "pending": queue.qsize()}

    def _listener(self, lid: int) -> tuple[str, int, asyncio.Queue[int]]:
        try:
            return self.listeners[lid]
        except KeyError:
            raise EngineError(ErrorCode.NOT_FOUND, f"no listener {lid}") from None

    async def accept(self, listener_id: int, timeout: float | None) -> int:
        self.calls.append(("accept", listener_id, timeout))
        self._maybe_fail("accept")
        queue = self._listener(listener_id)[2]
        try:
            async with asyncio.timeout(timeout):
                return await queue.get()
        except TimeoutError:
            raise EngineError(ErrorCode.TIMEOUT, "no connection arrived in time") from None

    async def close_listener(self, listener_id: int) -> None:
        self.calls.append(("close_listener", listener_id))
        self._listener(listener_id)
        del self.listeners[listener_id]
        self.closed_listeners.append(listener_id)

    def _conn(self, conn_id: int) -> FakeConn:
        try:
            return self.conns[conn_id]
        except KeyError:
            raise EngineError(ErrorCode.NOT_FOUND, f"no connection {conn_id}") from None

    async def offload(self, conn_id: int) -> dict[str, Any]:
        self.calls.append(("offload", conn_id))
        conn = self._conn(conn_id)
        if conn.state == "offloaded":
            raise EngineError(ErrorCode.INVALID_STATE, f"connection {conn_id} is offloaded")
        conn.state = "offloaded"
        self._emit(conn_id, "offloaded", {"path": ["tcpip", "nic0"]})
        return {"state": "offloaded", "path": ["tcpip", "nic0"]}

    async def upload(self, conn_id: int) -> dict[str, Any]:
        self.calls.append(("upload", conn_id))
        conn = self._conn(conn_id)
        conn.state = "host"
        self._emit(conn_id, "uploaded", {"reason": "UploadRequested"})
        return {"state": "host"}

    async def send(self, conn_id: int, data: bytes) -> int:
        self.calls.append(("send", conn_id, bytes(data)))
        self._maybe_fail("send")
        conn = self._conn(conn_id)
        conn.buffer += data
        conn.readable.set()
        conn.trace.append({"seq": len(conn.trace) + 1, "call": "NdisOffloadTcpSend"})
        return len(data)

    def start_send(self, conn_id: int, data: bytes) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self.send(conn_id, data))

    def start_recv(
        self, conn_id: int, max_bytes: int, timeout: float | None, waitall: bool = False
    ) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self.recv(conn_id, max_bytes, timeout, waitall))

    async def recv(
        self, conn_id: int, max_bytes: int, timeout: float | None, waitall: bool = False
    ) -> bytes:
        self.calls.append(("recv", conn_id, max_bytes, timeout))
        conn = self._conn(conn_id)
        try:
            async with asyncio.timeout(timeout):
                while not conn.buffer:
                    conn.readable.clear()
                    await conn.readable.wait()
        except TimeoutError:
            raise EngineError(ErrorCode.TIMEOUT, "nothing arrived in time") from None
        data = bytes(conn.buffer[:max_bytes])
        del conn.buffer[:max_bytes]
        return data

    async def disconnect(self, conn_id: int, abortive: bool) -> str:
        self.calls.append(("disconnect", conn_id, abortive))
        self._conn(conn_id)
        return "NDIS_STATUS_SUCCESS"

    async def close(self, conn_id: int) -> None:
        self.calls.append(("close", conn_id))
        conn = self._conn(conn_id)
        conn.readable.set()
        del self.conns[conn_id]
        self.closed.append(conn_id)
        self._emit(conn_id, "closed", {})
        self.subscribers.pop(conn_id, None)

    async def query(self, conn_id: int) -> dict[str, Any]:
        self.calls.append(("query", conn_id))
        self._conn(conn_id)
        return {"State": "TcpConnectionEstablished"}

    async def update(self, conn_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("update", conn_id, dict(changes)))
        self._conn(conn_id)
        return {"updated": sorted(changes)}

    def conn_info(self, conn_id: int) -> dict[str, Any]:
        self._maybe_fail("conn_info")
        conn = self._conn(conn_id)
        info: dict[str, Any] = {"state": conn.state, "remote": f"{conn.host}:{conn.port}"}
        if conn.listener is not None:  # the engine's `listener`, for accepted connections only
            info["listener"] = conn.listener
        return info

    def conn_ids(self) -> list[int]:
        return sorted(self.conns)

    def trace(self, conn_id: int, limit: int | None) -> list[dict[str, Any]]:
        if conn_id in self.closed:
            return []
        hops = self._conn(conn_id).trace
        return hops[-limit:] if limit else list(hops)

    # -- events --------------------------------------------------------------------------------
    def subscribe(self, conn_id: int | None, callback: EventCallback) -> Callable[[], None]:
        if conn_id is not None:
            self._conn(conn_id)
        self.subscribers.setdefault(conn_id, []).append(callback)

        def unsubscribe() -> None:
            subs = self.subscribers.get(conn_id, [])
            if callback in subs:
                subs.remove(callback)

        return unsubscribe

    def subscriber_count(self) -> int:
        return sum(len(v) for v in self.subscribers.values())

    def _emit(self, conn_id: int, event: str, info: dict[str, Any]) -> None:
        for key in (conn_id, None):
            for cb in list(self.subscribers.get(key, ())):
                cb(conn_id, event, info)

    def raise_event(self, conn_id: int, event: str, info: dict[str, Any] | None = None) -> None:
        """Test hook: an indication reached the host stack (e.g. `TcpIndicateDisconnect`)."""
        self._emit(conn_id, event, info or {})

    # -- faults --------------------------------------------------------------------------------
    def fault_inject(self, spec: dict[str, Any], fault_id: int | None = None) -> int:
        if spec["kind"] not in ("peer_reset", "stall_peer", "target_failure", "delay", "fail_next"):
            raise EngineError(ErrorCode.INVALID_PARAMS, f"unknown fault kind {spec['kind']!r}")
        if "conn" in spec:
            self._conn(spec["conn"])
        fid = next(self._fault_ids) if fault_id is None else fault_id
        self.faults[fid] = dict(spec)
        return fid

    def fault_reserve(self) -> int:
        return next(self._fault_ids)

    def fault_entries(self) -> list[dict[str, Any]]:
        return [{"id": fid, **spec, "active": True} for fid, spec in self.faults.items()]

    def fault_clear(self, fault_id: int | None) -> None:
        if fault_id is None:
            self.faults.clear()
        elif self.faults.pop(fault_id, None) is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no fault {fault_id}")

    def fault_list(self) -> list[dict[str, Any]]:
        return [{"id": fid, **spec} for fid, spec in self.faults.items()]

    def nic_in_service(self, layer: str, up: bool) -> None:
        raise EngineError(ErrorCode.INVALID_PARAMS, f"layer {layer!r} is not under a mux")

    def team_member(self, layer: str) -> str:
        raise EngineError(ErrorCode.INVALID_PARAMS, f"layer {layer!r} is not under a mux")

    async def shutdown(self, deadline: float) -> dict[str, Any]:
        self.shutdown_deadline = deadline
        closed = len(self.conns)
        for conn in list(self.conns):
            await self.close(conn)
        return {"closed": closed, "errors": [], "left_over": {}, "connections": 0}


def as_api(engine: FakeEngine) -> Any:
    """The fake typed as the protocol: mypy checks that FakeEngine matches EngineAPI."""
    from chimneyd.api import EngineAPI

    api: EngineAPI = engine
    return api
