"""The running stack: layers built from the topology, their tasks, sockets, and the `EngineAPI`.

This is the thin asyncio shell around the sans-IO layers: it opens and accepts the real loopback
sockets, puts application requests into the host stack's inbox and turns the host's callbacks
into awaitable results, and applies faults. It never calls into a layer except through its inbox.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import structlog

from chimneyd import __version__
from chimneyd.api import EngineError, ErrorCode, EventCallback
from chimneyd.drivers.base import Delay, DriverLayer, FailNext
from chimneyd.drivers.host import AppError, HostStack, Tcb
from chimneyd.drivers.nic import OffloadTarget, TcpContext
from chimneyd.drivers.passthrough import ImOffloadEntry, PassthroughIm
from chimneyd.ndis.broker import Layer, Ndis
from chimneyd.ndis.status import NdisStatus, TcpUploadReason
from chimneyd.ndis.trace import HopTrace
from chimneyd.runtime.layer_task import LayerTask, LoopTimers, deliver
from chimneyd.runtime.memory import give_back, refresh_free_lists, release_empty_containers
from chimneyd.runtime.wire import AckWatcher, WireSocket

log = structlog.get_logger("chimneyd.engine")

CONTRACT_VERSION = 1
CLOSED_TRACES_KEPT = 256
# seconds after the last connection closed at which the engine gives freed memory back
TRIM_AFTER_S = (0.5, 3.0)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The `[engine]` settings the engine reads (config.EngineConfig has the same fields)."""

    trace_depth: int = 64
    rx_buffer_bytes: int = 256 * 1024
    push_ticks_ms: int = 500
    invariants: bool = False
    max_nbls: int = 1_000_000


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One `[[layer]]` (config.LayerConfig has the same fields)."""

    name: str
    kind: str
    lower: tuple[str, ...] = ()
    max_connections: int = 16384
    policy: str = "least-loaded"


DEFAULT_TOPOLOGY = (
    LayerSpec("tcpip", "host", ("im0",)),
    LayerSpec("im0", "passthrough", ("nic0",)),
    LayerSpec("nic0", "target"),
)


@dataclass
class Listener:
    id: int
    server: asyncio.AbstractServer
    host: str
    port: int
    offload: bool
    pending: deque[int] = field(default_factory=deque)
    waiters: deque[asyncio.Future[int]] = field(default_factory=deque)


@dataclass
class Fault:
    id: int
    spec: dict[str, Any]
    undo: Callable[[], None] | None = None
    active: Callable[[], bool] = lambda: True


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _error(err: AppError) -> EngineError:
    try:
        code = ErrorCode[err.symbol]
    except KeyError:
        code = ErrorCode.INTERNAL
    return EngineError(code, err.detail)


class Engine:
    """Implements `chimneyd.api.EngineAPI` over the layer tasks."""

    def __init__(self, settings: Any = None, layers: tuple[Any, ...] = DEFAULT_TOPOLOGY) -> None:
        self.settings = settings if settings is not None else EngineSettings()
        self.loop = asyncio.get_running_loop()
        self.ndis = Ndis(
            clock=time.monotonic_ns, deliver=deliver, trace_depth=int(self.settings.trace_depth)
        )
        self.watcher = AckWatcher(self.loop)
        self.wires: dict[tuple[bytes, int, bytes, int], WireSocket] = {}
        self.wire_keys: dict[int, tuple[bytes, int, bytes, int]] = {}
        self.tasks: list[LayerTask] = []
        self.layer_specs = layers
        self.layers: dict[str, Layer] = {}
        self._ids = itertools.count(1)
        self._listener_ids = itertools.count(1)
        self._fault_ids = itertools.count(1)
        self.listeners: dict[int, Listener] = {}
        self.faults: dict[int, Fault] = {}
        self.subscribers: dict[int | None, list[EventCallback]] = {}
        self.closed_traces: OrderedDict[int, HopTrace] = OrderedDict()
        self.trace_archive: bytes | None = None  # closed traces, packed together when idle
        self.layer_errors = 0
        self._trim_handle: asyncio.TimerHandle | None = None
        self.lean_holders: list[object] = [self.loop]  # see `keep_lean`
        self.host = self._build(layers)
        self.host.emit = self._emit
        self.checker: Any = None
        if self.settings.invariants:
            from chimneyd.observe.invariants import InvariantChecker

            self.checker = InvariantChecker()
            self.ndis.observer = self.checker

    # ============================================================================================
    # topology
    # ============================================================================================
    def _build(self, specs: tuple[Any, ...]) -> HostStack:
        host: HostStack | None = None
        s = self.settings
        for spec in specs:
            timers = LoopTimers(self.loop)
            layer: DriverLayer
            if spec.kind == "host":
                layer = host = HostStack(
                    spec.name, self.ndis, timers, rx_buffer_bytes=s.rx_buffer_bytes
                )
            elif spec.kind in ("passthrough", "mux"):
                layer = PassthroughIm(spec.name, self.ndis, timers)
            elif spec.kind == "target":
                layer = OffloadTarget(
                    spec.name,
                    self.ndis,
                    timers,
                    self._find_wire,
                    max_connections=spec.max_connections,
                    rx_buffer_bytes=s.rx_buffer_bytes,
                    push_ticks_ms=s.push_ticks_ms,
                )
            else:
                raise ValueError(f"layer {spec.name}: unknown kind {spec.kind!r}")
            task = LayerTask(layer, self.loop)
            task.on_error = self._layer_failed
            timers.task = task
            self.tasks.append(task)
            self.layers[spec.name] = layer
        for spec in specs:
            for lower in spec.lower:
                self.ndis.bind(self.layers[spec.name], self.layers[lower])
        if host is None:
            raise ValueError("the topology has no host layer")
        return host

    def _layer_failed(self, layer: Layer, exc: BaseException) -> None:
        self.layer_errors += 1
        if self.checker is not None:
            self.checker.violation(f"{layer.name}: {exc!r}")

    def start(self) -> None:
        for task in self.tasks:
            task.start()

    def _find_wire(self, src: bytes, lport: int, dst: bytes, rport: int) -> WireSocket | None:
        return self.wires.get((src, lport, dst, rport))

    def _register(self, wire: WireSocket, listener: int | None = None) -> int:
        conn_id = next(self._ids)
        key = (
            ipaddress.ip_address(wire.local[0]).packed,
            wire.local[1],
            ipaddress.ip_address(wire.remote[0]).packed,
            wire.remote[1],
        )
        self.wires[key] = wire
        self.wire_keys[conn_id] = key  # closing looks the wire up by id, not by a scan
        self._post(self.host.attach, conn_id, wire, listener)
        return conn_id

    def _post(self, fn: Callable[..., Any], *args: Any) -> None:
        self.host.inbox.push(fn, args)

    def _request(
        self, method: str, conn_id: int, *args: Any, withdraw_after: float | None = None
    ) -> asyncio.Future[Any]:
        """Run `host.<method>(tcb, *args, done)` in the host's task; the future gets the result.

        With `withdraw_after`, the host is asked to withdraw the request (`app_cancel_recv`)
        when that time is up. The host does it in its own task, so a byte is never both given to
        a timed-out read and kept: no data is lost by a timeout (rpc-contract tcp.recv)."""
        fut: asyncio.Future[Any] = self.loop.create_future()

        def done(result: Any, err: AppError | None) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(_error(err))
            else:
                fut.set_result(result)

        self._post(self.host.app_call, conn_id, method, args, done)
        if withdraw_after is not None:
            withdraw = (self.host.app_call, conn_id, "app_cancel_recv", (done,), _ignore)
            timer = self.loop.call_later(withdraw_after, self._post, *withdraw)
            fut.add_done_callback(lambda _: timer.cancel())
        return fut

    # ============================================================================================
    # EngineAPI: stack
    # ============================================================================================
    def info(self) -> dict[str, Any]:
        layers = []
        for spec in self.layer_specs:
            layer = self.layers[spec.name]
            layers.append(
                {
                    "name": spec.name,
                    "kind": spec.kind,
                    "lower": list(spec.lower),
                    "state": layer.state,
                }
            )
        return {"version": __version__, "contract": CONTRACT_VERSION, "layers": layers}

    def stats(self) -> dict[str, Any]:
        return {
            "layers": self.ndis.stats(),
            "connections": len(self.host.tcbs),
            # every asyncio task of the daemon (layer tasks, RPC), to compare with its idle value
            "tasks": len(asyncio.all_tasks(self.loop)),
            "engine": {
                "listeners": len(self.listeners),
                "wires": len(self.wires),
                "ack_waiting": len(self.watcher.waiting),
                "inbox": {t.layer.name: len(t.inbox) for t in self.tasks},
                "messages": {t.layer.name: t.messages for t in self.tasks},
                "layer_errors": self.layer_errors,
                "invariant_violations": len(self.checker.violations) if self.checker else None,
            },
        }

    # ============================================================================================
    # EngineAPI: connections
    # ============================================================================================
    async def connect(
        self,
        host: str,
        port: int,
        offload: bool = True,
        target: str | None = None,
        on_conn: Callable[[int], None] | None = None,
    ) -> int:
        """Open a loopback connection in the host stack, offloaded at once if asked. `on_conn`
        learns the id before the offload starts, so the owner hears the `offloaded` event."""
        if not _is_loopback(host):
            raise EngineError(ErrorCode.INVALID_PARAMS, f"host {host!r} is not a loopback address")
        if target is not None and target not in self.layers:
            raise EngineError(ErrorCode.NOT_FOUND, f"no layer {target!r}")
        wire = WireSocket(deliver, self.watcher)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: wire, host, port), timeout=10.0
            )
        except (TimeoutError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in (24, 23):  # EMFILE / ENFILE
                raise EngineError(
                    ErrorCode.LIMIT, f"open-file limit reached: {exc.strerror}"
                ) from None
            raise EngineError(ErrorCode.CONNECT_FAILED, f"{host}:{port}: {exc}") from None
        conn_id = self._register(wire)
        if on_conn is not None:
            on_conn(conn_id)
        if offload:
            try:
                await self._request("app_offload", conn_id, target)
            except EngineError as exc:
                # the connection stays usable in host mode (rpc-contract tcp.offload)
                log.info("offload_refused", conn=conn_id, error=str(exc))
        return conn_id

    async def listen(self, host: str, port: int, offload: bool = True) -> int:
        if not _is_loopback(host):
            raise EngineError(ErrorCode.INVALID_PARAMS, f"host {host!r} is not a loopback address")
        lid = next(self._listener_ids)

        def made(wire: WireSocket) -> None:
            listener = self.listeners.get(lid)
            if listener is None:
                wire.close()
                return
            conn_id = self._register(wire, lid)
            if listener.offload:
                self._post(self.host.app_call, conn_id, "app_offload", (None,), _ignore)
            while listener.waiters:
                waiter = listener.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn_id)
                    return
            listener.pending.append(conn_id)

        try:
            server = await self.loop.create_server(
                lambda: WireSocket(deliver, self.watcher, made),
                host,
                port,
                backlog=4096,
                reuse_address=True,
            )
        except OSError as exc:
            raise EngineError(
                ErrorCode.INVALID_PARAMS, f"cannot listen on {host}:{port}: {exc.strerror}"
            ) from None
        bound = server.sockets[0].getsockname()
        self.listeners[lid] = Listener(lid, server, bound[0], bound[1], offload)
        return lid

    def listener_info(self, listener_id: int) -> dict[str, Any]:
        listener = self._listener(listener_id)
        return {"host": listener.host, "port": listener.port, "pending": len(listener.pending)}

    def _listener(self, listener_id: int) -> Listener:
        listener = self.listeners.get(listener_id)
        if listener is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no listener {listener_id}")
        return listener

    async def accept(self, listener_id: int, timeout: float | None) -> int:
        listener = self._listener(listener_id)
        if listener.pending:
            return listener.pending.popleft()
        fut: asyncio.Future[int] = self.loop.create_future()
        listener.waiters.append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                return fut.result()  # accepted just as the timeout fired: not lost
            fut.cancel()
            raise EngineError(
                ErrorCode.TIMEOUT, f"no connection on listener {listener_id}"
            ) from None

    async def close_listener(self, listener_id: int) -> None:
        listener = self.listeners.pop(listener_id, None)
        if listener is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no listener {listener_id}")
        listener.server.close()
        for waiter in listener.waiters:
            waiter.cancel()
        for conn_id in listener.pending:
            try:
                await self.close(conn_id)
            except EngineError:
                pass

    async def offload(self, conn_id: int) -> dict[str, Any]:
        return await self._request("app_offload", conn_id, None)  # type: ignore[no-any-return]

    async def upload(self, conn_id: int) -> dict[str, Any]:
        return await self._request("app_upload", conn_id)  # type: ignore[no-any-return]

    async def send(self, conn_id: int, data: bytes) -> int:
        return await self._request("app_send", conn_id, data)  # type: ignore[no-any-return]

    async def recv(
        self, conn_id: int, max_bytes: int, timeout: float | None, waitall: bool = False
    ) -> bytes:
        fut = self._request("app_recv", conn_id, max_bytes, waitall, withdraw_after=timeout)
        return await fut  # type: ignore[no-any-return]

    async def disconnect(self, conn_id: int, abortive: bool) -> str:
        return await self._request("app_disconnect", conn_id, abortive)  # type: ignore[no-any-return]

    async def close(self, conn_id: int) -> None:
        await self._request("app_close", conn_id)

    async def update(self, conn_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """`NdisUpdateOffload` of the connection's cached TCP variables (spec §3.4)."""
        for key, value in changes.items():
            if not isinstance(key, str) or not isinstance(value, int) or isinstance(value, bool):
                raise EngineError(
                    ErrorCode.INVALID_PARAMS, "cached variables are names with integer values"
                )
        return await self._request("app_update", conn_id, dict(changes))  # type: ignore[no-any-return]

    async def invalidate(self, conn_id: int, what: str = "neighbor") -> dict[str, Any]:
        """`NdisInvalidateOffload` of the connection's TCP, path or neighbor object (spec §3.5)."""
        if what not in ("tcp", "path", "neighbor"):
            raise EngineError(ErrorCode.INVALID_PARAMS, "object must be tcp, path or neighbor")
        return await self._request("app_invalidate", conn_id, what)  # type: ignore[no-any-return]

    async def query(self, conn_id: int) -> dict[str, Any]:
        """`NdisQueryOffloadState` of the connection's TCP object: its delegated state now."""
        return await self._request("app_query", conn_id)  # type: ignore[no-any-return]

    def _wire(self, tcb: Tcb) -> WireSocket:
        wire = tcb.wire
        assert isinstance(wire, WireSocket)
        return wire

    def _tcb(self, conn_id: int) -> Tcb:
        tcb = self.host.tcbs.get(conn_id)
        if tcb is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no connection {conn_id}")
        return tcb

    def conn_info(self, conn_id: int) -> dict[str, Any]:
        tcb = self._tcb(conn_id)
        wire = tcb.wire
        return {
            "state": tcb.state,
            "path": self.host.path_names(tcb),
            "local": f"{wire.local[0]}:{wire.local[1]}",
            "remote": f"{wire.remote[0]}:{wire.remote[1]}",
            "bytes_sent": wire.bytes_written,
            "bytes_received": wire.bytes_read,
            "handles": self._handles_of(tcb),
            "delegated": tcb.delegated.as_map() if tcb.delegated else {},
            "listener": tcb.listener,
        }

    def _handles_of(self, tcb: Tcb) -> dict[str, Any]:
        """Per layer: the handle it owns for the connection and the context it holds (ids)."""
        out: dict[str, Any] = {}
        handle = tcb.handle
        layer_name = self.host.name
        out[layer_name] = {"handle": handle.id if handle else None}
        while handle is not None and handle.miniport_offload_context is not None:
            ctx = handle.miniport_offload_context
            binding = handle.ndis_reserved
            lower = binding.lower.name if binding is not None else "?"
            entry: dict[str, Any] = {"context": ctx.id}
            if isinstance(ctx, ImOffloadEntry):
                entry["handle"] = ctx.handle.id
                out[lower] = entry
                handle = ctx.handle
            else:
                out[lower] = entry
                handle = None
        return out

    def conn_ids(self) -> list[int]:
        return sorted(self.host.tcbs)

    def trace(self, conn_id: int, limit: int | None) -> list[dict[str, Any]]:
        tcb = self.host.tcbs.get(conn_id)
        trace = tcb.trace if tcb is not None else self.closed_traces.get(conn_id)
        if trace is None and self.trace_archive is not None:
            packed = self._archived_traces().get(conn_id)
            if packed is not None:
                trace = self.ndis.new_trace(conn_id)
                trace.packed = packed
        if trace is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no connection {conn_id}")
        return trace.as_maps(limit)

    # ============================================================================================
    # events
    # ============================================================================================
    def subscribe(self, conn_id: int | None, callback: EventCallback) -> Callable[[], None]:
        if conn_id is not None:
            self._tcb(conn_id)
        self.subscribers.setdefault(conn_id, []).append(callback)

        def unsubscribe() -> None:
            subs = self.subscribers.get(conn_id)
            if subs and callback in subs:
                subs.remove(callback)
                if not subs:
                    del self.subscribers[conn_id]

        return unsubscribe

    def _emit(self, conn_id: int, event: str, info: dict[str, Any]) -> None:
        if event == "closed":
            self._forget(conn_id)
            self.give_back_when_idle()
        for key in (conn_id, None):
            for cb in list(self.subscribers.get(key, ())):
                try:
                    cb(conn_id, event, info)
                except Exception:
                    log.exception("subscriber_failed", conn=conn_id, event_name=event)
        if event == "closed":
            self.subscribers.pop(conn_id, None)

    def give_back_when_idle(self) -> None:
        """Start the idle trim if no connection is open and none is under way: after the last
        close, and again as RPC clients leave (their sockets and buffers go then)."""
        if not self.host.tcbs and self._trim_handle is None:
            self._trim_handle = self.loop.call_later(TRIM_AFTER_S[0], self._trim_when_idle, 0)

    def _trim_when_idle(self, attempt: int) -> None:
        """Once the last connection is gone, give freed memory back to the system: glibc keeps
        freed heap pages otherwise, and RSS after a soak would stay at its peak. A second pass
        a few seconds later returns what went after the first: the buffers of RPC clients that
        left once their connections were closed, objects held by timers that fired since."""
        self._trim_handle = None
        if self.host.tcbs:
            return
        if attempt + 1 < len(TRIM_AFTER_S):
            delay = TRIM_AFTER_S[attempt + 1] - TRIM_AFTER_S[attempt]
            self._trim_handle = self.loop.call_later(delay, self._trim_when_idle, attempt + 1)
        holders: list[object] = [self, self.ndis, self.watcher, self.checker, *self.lean_holders]
        for layer in self.layers.values():
            holders += [layer, getattr(layer, "table", None), getattr(layer, "stats", None)]
        self._archive_closed_traces()
        release_empty_containers(holders)
        refresh_free_lists(self.loop, then=give_back)

    def keep_lean(self, holder: object) -> None:
        """Have the idle trim also release the emptied containers of `holder` (the RPC server's
        map of connection owners, sized for the peak of a soak otherwise)."""
        self.lean_holders.append(holder)

    def _archived_traces(self) -> dict[int, bytes]:
        if self.trace_archive is None:
            return {}
        archived: dict[int, bytes] = msgpack.unpackb(self.trace_archive, strict_map_key=False)
        return archived

    def _archive_closed_traces(self) -> None:
        """Pack the kept traces of closed connections into one object. Hundreds of them, made
        all through a soak and kept after it, sit on as many heap pages that the idle trim then
        cannot return (measured: a third of the RSS left after a 10k soak). One block of this
        size gets its own mapping instead."""
        if not self.closed_traces:
            return
        merged = self._archived_traces()
        for conn_id, trace in self.closed_traces.items():
            trace.freeze()
            merged.pop(conn_id, None)
            if trace.packed is not None:
                merged[conn_id] = trace.packed
        kept = list(merged.items())[-CLOSED_TRACES_KEPT:]
        self.trace_archive = msgpack.packb(dict(kept)) if kept else None
        self.closed_traces.clear()

    def _forget(self, conn_id: int) -> None:
        key = self.wire_keys.pop(conn_id, None)
        wire = self.wires.pop(key, None) if key is not None else None
        if wire is not None:
            self.watcher.discard(wire)
            tcb: Tcb = wire.home_ctx
            tcb.trace.freeze()
            self.closed_traces[conn_id] = tcb.trace
            while len(self.closed_traces) > CLOSED_TRACES_KEPT:
                self.closed_traces.popitem(last=False)

    # ============================================================================================
    # faults
    # ============================================================================================
    def fault_inject(self, spec: dict[str, Any]) -> int:
        kind = spec.get("kind")
        fid = next(self._fault_ids)
        fault = Fault(fid, dict(spec))
        if kind == "peer_reset":
            tcb = self._tcb(_int(spec, "conn"))
            self._wire(tcb).inject_reset()
            fault.active = lambda: False
        elif kind == "target_failure":
            nic = self._layer(spec, OffloadTarget)
            nic.inbox.push(nic.fail_target, ())
            fault.undo = lambda: nic.inbox.push(nic.recover_target, ())
        elif kind == "fail_next":
            layer = self._layer(spec, DriverLayer)
            call = _str(spec, "call")
            if not hasattr(layer, call.split("[")[0]):
                raise EngineError(
                    ErrorCode.INVALID_PARAMS, f"layer {layer.name} has no handler {call!r}"
                )
            status = _status(spec.get("status", "NDIS_STATUS_FAILURE"))
            fn = FailNext(fid, call, status, _int(spec, "count", 1), _int(spec, "skip", 0))
            layer.fail_next.append(fn)

            def undo_fail_next(layer: DriverLayer = layer, fn: FailNext = fn) -> None:
                if fn in layer.fail_next:
                    layer.fail_next.remove(fn)

            fault.undo = undo_fail_next
            fault.active = lambda: fn.count > 0
        elif kind == "delay":
            layer = self._layer(spec, DriverLayer)
            call = _str(spec, "call")
            if not hasattr(layer, call):
                raise EngineError(
                    ErrorCode.INVALID_PARAMS, f"layer {layer.name} has no handler {call!r}"
                )
            layer.delays[call] = Delay(fid, call, _int(spec, "ms"))

            def undo_delay(layer: DriverLayer = layer, call: str = call) -> None:
                layer.delays.pop(call, None)

            fault.undo = undo_delay
        elif kind == "stall_peer":
            tcb = self._tcb(_int(spec, "conn"))
            ms = _int(spec, "ms")
            self._stall(self._wire(tcb), ms / 1000.0)
            until = self.loop.time() + ms / 1000.0
            fault.active = lambda: self.loop.time() < until
        elif kind == "invalidate":
            # the host learns an object is stale (e.g. the neighbor is unreachable)
            tcb = self._tcb(_int(spec, "conn"))
            what = spec.get("object", "neighbor")
            if what not in ("tcp", "path", "neighbor"):
                raise EngineError(ErrorCode.INVALID_PARAMS, "object must be tcp, path or neighbor")
            self._post(self.host.app_call, tcb.conn_id, "app_invalidate", (what,), _ignore)
            fault.active = lambda: False
        elif kind == "retrieve":
            tcb = self._tcb(_int(spec, "conn"))
            reason = (
                TcpUploadReason[_str(spec, "reason")]
                if "reason" in spec
                else TcpUploadReason.UploadRequested
            )
            ctx = self._target_ctx(tcb)
            if ctx is None:
                raise EngineError(
                    ErrorCode.INVALID_STATE, f"connection {tcb.conn_id} is not offloaded"
                )
            nic, tcp_ctx = ctx
            nic.inbox.push(nic.request_upload, (tcp_ctx, reason))
            fault.active = lambda: False
        else:
            raise EngineError(ErrorCode.INVALID_PARAMS, f"unknown fault kind {kind!r}")
        self.faults[fid] = fault
        log.info("fault_injected", fault=fid, spec=spec)
        return fid

    def _stall(self, wire: WireSocket, seconds: float) -> None:
        """stall_peer [EMU]: the peer neither sends nor acknowledges for a while (we stop
        reading its bytes and hear no ACK news), so back-pressure builds on both sides."""
        wire.pause_reading()
        self.watcher.held[wire] = self.loop.time() + seconds

        def resume() -> None:
            owner = wire._owner_ctx
            if not getattr(owner, "paused", False) and not getattr(owner, "read_paused", False):
                wire.resume_reading()
            if not wire.closed:
                wire.watch_acks()

        self.loop.call_later(seconds, resume)

    def _target_ctx(self, tcb: Tcb) -> tuple[OffloadTarget, TcpContext] | None:
        handle = tcb.handle
        while handle is not None and handle.miniport_offload_context is not None:
            ctx = handle.miniport_offload_context
            if isinstance(ctx, TcpContext):
                return handle.ndis_reserved.lower, ctx
            handle = ctx.handle if isinstance(ctx, ImOffloadEntry) else None
        return None

    def _layer(self, spec: dict[str, Any], cls: type[Any]) -> Any:
        name = _str(spec, "layer")
        layer = self.layers.get(name)
        if layer is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no layer {name!r}")
        if not isinstance(layer, cls):
            raise EngineError(ErrorCode.INVALID_PARAMS, f"layer {name!r} is a {layer.kind}")
        return layer

    def fault_clear(self, fault_id: int | None) -> None:
        if fault_id is None:
            ids = list(self.faults)
        elif fault_id not in self.faults:
            raise EngineError(ErrorCode.NOT_FOUND, f"no fault {fault_id}")
        else:
            ids = [fault_id]
        for fid in ids:
            fault = self.faults.pop(fid)
            if fault.undo is not None:
                fault.undo()

    def fault_list(self) -> list[dict[str, Any]]:
        out = []
        for fid, fault in list(self.faults.items()):
            if not fault.active():
                continue
            out.append({"id": fid, **fault.spec})
        return out

    # ============================================================================================
    # shutdown
    # ============================================================================================
    async def shutdown(self, deadline: float) -> dict[str, Any]:
        """Close every listener and connection (uploading first) within `deadline` seconds."""
        for lid in list(self.listeners):
            try:
                await self.close_listener(lid)
            except EngineError:
                pass
        conn_ids = list(self.host.tcbs)
        results = (
            await asyncio.wait_for(
                asyncio.gather(*(self.close(c) for c in conn_ids), return_exceptions=True), deadline
            )
            if conn_ids
            else []
        )
        # let the last completions and receive returns drain through the layers
        for _ in range(50):
            if all(not t.inbox for t in self.tasks) and not self._busy():
                break
            await asyncio.sleep(0.01)
        left = {
            name: {
                k: v
                for k, v in st.items()
                if k in ("offloads_active", "handles", "outstanding_nbls") and v
            }
            for name, st in self.ndis.stats().items()
        }
        left = {k: v for k, v in left.items() if v}
        for task in self.tasks:
            await task.stop()
        if self._trim_handle is not None:
            self._trim_handle.cancel()
        errors = [str(r) for r in results if isinstance(r, Exception)]
        return {
            "closed": len(conn_ids),
            "errors": errors,
            "left_over": left,
            "connections": len(self.host.tcbs),
        }

    def _busy(self) -> bool:
        st = self.ndis.stats()
        return any(v["outstanding_nbls"] or v["handles"] for v in st.values())


def _ignore(result: Any, err: AppError | None) -> None:
    """The `done` of a request whose outcome nobody waits for."""


def _int(spec: dict[str, Any], key: str, default: int | None = None) -> int:
    value = spec.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EngineError(ErrorCode.INVALID_PARAMS, f"fault key {key!r} must be a non-negative int")
    return value


def _str(spec: dict[str, Any], key: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise EngineError(ErrorCode.INVALID_PARAMS, f"fault key {key!r} must be a string")
    return value


def _status(value: Any) -> NdisStatus:
    try:
        if isinstance(value, str):
            return NdisStatus[value]
        return NdisStatus(value)
    except (KeyError, ValueError):
        raise EngineError(ErrorCode.INVALID_PARAMS, f"unknown NDIS status {value!r}") from None


async def start_engine(config: Any = None, layers: tuple[Any, ...] | None = None) -> Engine:
    """Build the stack from the configuration and start its layer tasks."""
    engine = Engine(config, layers or DEFAULT_TOPOLOGY)
    engine.start()
    return engine


__all__ = ["DEFAULT_TOPOLOGY", "Engine", "EngineSettings", "LayerSpec", "socket", "start_engine"]
