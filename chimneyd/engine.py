"""The running stack behind `EngineAPI`: the thin asyncio shell around the sans-IO layers.

It puts application requests into the host stack's inbox as typed calls and turns the host's
`done` callbacks into awaitable results. Everything else is a part of its own: the sockets
(`runtime.sockets`), the layers and their tasks (`runtime.topology`), faults (`faults`), the
traces of closed connections (`observe.traces`), events (`observe.events`), and giving memory
back when idle (`runtime.memory`). The engine changes a layer only through its inbox.

Longer than most modules because it is the stack's one face towards the RPC server: a method
per `EngineAPI` call, each a few lines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec

import structlog

from chimneyd import __version__
from chimneyd.api import EngineError, ErrorCode, EventCallback
from chimneyd.compiled import build_name
from chimneyd.config import DEFAULT_LAYERS, EngineConfig, LayerConfig
from chimneyd.drivers.base import DriverLayer, PlantedBug, conns_in
from chimneyd.drivers.delegated import provenance
from chimneyd.drivers.host import AppError, Tcb
from chimneyd.drivers.host.adapter import refusal_info
from chimneyd.drivers.host.errors import SettledThenRaised
from chimneyd.drivers.mux import MuxIm
from chimneyd.drivers.passthrough import ImOffloadEntry
from chimneyd.drivers.target import OffloadTarget
from chimneyd.drivers.wire import WirePort
from chimneyd.faults import FaultRegistry
from chimneyd.ndis.blocks import (
    TCP_FLAG_KEEP_ALIVE_ENABLED,
    TCP_FLAG_KEEP_ALIVE_RESTART,
    TCP_FLAG_MAX_RT_RESTART,
    TCP_FLAG_NAGLING_ENABLED,
    TCP_FLAG_UPDATE_RCV_WND,
    TcpOffloadStateCached,
)
from chimneyd.ndis.broker import Binding, Layer, Ndis
from chimneyd.ndis.trace import HopRecord
from chimneyd.observe.events import EventHub
from chimneyd.observe.traces import TraceArchive
from chimneyd.runtime.layer_task import LayerTask, deliver
from chimneyd.runtime.memory import IdleTrim, allocator_name
from chimneyd.runtime.read_future import ReadFuture
from chimneyd.runtime.sockets import Listener, Sockets
from chimneyd.runtime.topology import build
from chimneyd.runtime.wire import WireSocket

log = structlog.get_logger("chimneyd.engine")

CONTRACT_VERSION = 1
P = ParamSpec("P")


def _error(err: AppError) -> EngineError:
    try:
        code = ErrorCode[err.symbol]
    except KeyError:
        code = ErrorCode.INTERNAL
    return EngineError(code, err.detail)


class _Request:
    """One host request the engine waits on: its future, its withdraw timer, and what to undo
    once the host has answered.

    The host answers every request exactly once (`done`), even one whose future was cancelled
    (its client left); that answer, not the cancellation, is when the request stops counting.
    So a request costs no done-callback of the engine's own: only its caller's (the RPC
    server's, and the latency histogram's while metrics are recorded) are left, each a
    scheduled call of the loop."""

    __slots__ = (
        "conn_id",
        "engine",
        "fut",
        "observe",
        "sent",
        "settled",
        "t0",
        "timer",
        "withdraw",
    )

    def __init__(self, engine: Engine, conn_id: int, read: bool = False) -> None:
        self.engine = engine
        self.conn_id = conn_id
        self.fut: asyncio.Future[Any] = (
            ReadFuture(engine.loop, self) if read else engine.loop.create_future()
        )
        # a send's bytes, counted against `max_queued_send_bytes` until it is answered, and the
        # latency observer that times it (`Engine.start_send`): fields, not a closure of five
        # cells made per send. -1: not a send
        self.sent = -1
        self.observe: Callable[[float], None] | None = None
        self.t0 = 0.0
        self.settled = False
        self.timer: asyncio.TimerHandle | None = None
        # a read's arguments to `app_cancel_recv`: it is withdrawn from the host when it is
        # answered for it (timed out, or a layer failed)
        self.withdraw: tuple[int, Callable[..., None], Callable[..., None]] | None = None

    def done(self, result: Any, err: AppError | None) -> None:
        """The host's answer (the `done` of its app request)."""
        fut = self.fut
        if not fut.done():
            if err is not None:
                fut.set_exception(_error(err))
            else:
                fut.set_result(result)
        self._settle()

    def fail(self, exc: EngineError) -> None:
        """Answer for a layer that failed on the connection; the host may still answer later
        (ignored then)."""
        if not self.fut.done():
            self.fut.set_exception(exc)
        self._settle()

    def abandon(self) -> None:
        """Its future was cancelled before the host answered: withdraw the read from the host
        (`app_cancel_recv`, in the host's own task, as at a timeout), whose answer then settles
        it. Bytes the host handed it before it saw the withdrawal are dropped with the future,
        as those of a read answered just before its client left would be."""
        withdraw = self.withdraw
        if self.settled or withdraw is None:
            return
        if self.timer is not None:  # withdrawn now: its timeout has nothing left to do
            self.timer.cancel()
            self.timer = None
        host = self.engine.host
        host.inbox.push(host.app_cancel_recv, withdraw)

    def _settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        # answered: no longer one a failing layer must answer (`Engine._layer_failed`)
        self.engine._pending.pop(self, None)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        # the withdraw arguments hold `self.done`, and a read's future holds this request:
        # cycles left to the collector, one per read was most of what a young collection
        # found, and freed late
        if self.withdraw is not None:
            self.withdraw = None
            fut = self.fut
            if isinstance(fut, ReadFuture):
                fut.request = None
        if self.sent >= 0:
            self.engine._send_settled(self)


def _ignore(result: Any, err: AppError | None) -> None:
    """The `done` of a request whose outcome nobody waits for."""


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# -- the cached TCP variables a client may update (spec §2.2) -------------------------------------
ULONG = 0xFFFFFFFF
UCHAR = 0xFF
#: the TCP cached `Flags` bits spec §2.2 defines (keep-alive, Nagle, the two restarts, rcv wnd)
CACHED_FLAGS = (
    TCP_FLAG_KEEP_ALIVE_ENABLED
    | TCP_FLAG_NAGLING_ENABLED
    | TCP_FLAG_KEEP_ALIVE_RESTART
    | TCP_FLAG_MAX_RT_RESTART
    | TCP_FLAG_UPDATE_RCV_WND
)


def cached_ranges(max_rcv_wnd: int) -> dict[str, tuple[int, int]]:
    """Each field of `TcpOffloadStateCached` and its (lowest, highest) value: the C types of
    spec §2.2 (ULONG, UCHAR, the 20-bit FlowLabel, the 3-bit UserPriority). InitialRcvWnd is a
    window the target must hold, so 1 up to the receive buffer it has (`rx_buffer_bytes`)."""
    ranges = {
        "Flags": (0, CACHED_FLAGS),
        "InitialRcvWnd": (1, max_rcv_wnd),
        "RcvIndicationSize": (0, ULONG),
        "KaProbeCount": (0, UCHAR),
        "KaTimeout": (0, ULONG),
        "KaInterval": (0, ULONG),
        "MaxRT": (0, ULONG),
        "FlowLabel": (0, (1 << 20) - 1),
        "TtlOrHopLimit": (0, UCHAR),
        "TosOrTrafficClass": (0, UCHAR),
        "UserPriority": (0, 7),
    }
    assert set(ranges) == {f.name for f in dataclasses.fields(TcpOffloadStateCached)}
    return ranges


#: The variables of a neighbor's and a path's update (spec §2.2 cached state; a path's
#: `NextHop` is an extension, spec §3.4 (b)), sent with `"object"` naming the object.
OBJECT_VARIABLES: dict[str, frozenset[str]] = {
    "neighbor": frozenset({"DlDestinationAddress", "HostReachabilityDelta"}),
    "path": frozenset({"PathMtu", "NextHop"}),
}


#: the cached TCP variables' names (`cached_ranges`' keys; its window bound does not matter)
_TCP_VARIABLES = frozenset(cached_ranges(1))


def _not_a_variable(key: Any, what: str, known: str) -> EngineError:
    """INVALID_PARAMS for `key`, not a `what` ("TCP", "neighbor", "path") variable. One of
    another object's says so first, with the change the update needs (`"object"` in the map,
    chimneyctl's `object=`: `update c NextHop=…` without `object=path`); else the variables
    `what` has (`known`)."""
    for obj, names in OBJECT_VARIABLES.items():
        if obj != what and key in names:
            return EngineError(
                ErrorCode.INVALID_PARAMS,
                f'{key!r} is a {obj} variable, not a cached {what} one: add "object": "{obj}"'
                f" (chimneyctl: object={obj})",
            )
    if what != "TCP" and key in _TCP_VARIABLES:
        return EngineError(
            ErrorCode.INVALID_PARAMS,
            f'{key!r} is a TCP variable, not a cached {what} one: drop "object" from the update'
            " (chimneyctl: no object=)",
        )
    return EngineError(
        ErrorCode.INVALID_PARAMS,
        f"{str(key)[:40]!r} is not a cached {what} variable (spec §2.2: {known})",
    )


def check_cached(changes: Any, ranges: dict[str, tuple[int, int]]) -> dict[str, int]:
    """The update, each value in its range; else INVALID_PARAMS naming the first bad key."""
    if not isinstance(changes, dict) or not changes:
        raise EngineError(ErrorCode.INVALID_PARAMS, "an update is a non-empty map of variables")
    checked: dict[str, int] = {}
    for key, value in changes.items():
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        bounds = ranges.get(key) if isinstance(key, str) else None
        if bounds is None:
            raise _not_a_variable(key, "TCP", ", ".join(ranges))
        low, high = bounds
        if not isinstance(value, int) or isinstance(value, bool):
            raise EngineError(ErrorCode.INVALID_PARAMS, f"{key} must be an integer")
        if key == "Flags":
            if value < 0 or value & ~high:
                raise EngineError(
                    ErrorCode.INVALID_PARAMS,
                    f"Flags {value:#x} has bits spec §2.2 does not define (allowed: {high:#x})",
                )
        elif not low <= value <= high:
            raise EngineError(ErrorCode.INVALID_PARAMS, f"{key} must be {low}..{high}")
        checked[key] = value
    return checked


#: `tcp.update`'s `object` key: which object of the connection an update is for (spec §3.4).
UPDATE_OBJECTS = ("tcp", "neighbor", "path")
#: A link-layer address as text: two-digit hex bytes separated by one ':' or '-' each (e.g.
#: 02:00:00:00:00:01), or run together (02000000002a). Anything else (an
#: empty group, a group of one or four digits, a trailing or mixed separator) is refused,
#: not read as some other address.
_MAC_TEXT = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*|[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2})*")
_MAC_PLAIN = re.compile(r"(?:[0-9A-Fa-f]{2})+")
#: `DlDestinationAddress` is a UCHAR[32] (spec §2.2); `PathMtu` from IPv4's least (RFC 791)
#: to the largest IP packet.
MAX_DL_ADDRESS = 32
PATH_MTU = (68, 65535)


def split_object(changes: Any) -> tuple[str, Any]:
    """The object an update is for (`"object"`, default "tcp") and the changes without it."""
    if not isinstance(changes, dict):
        return "tcp", changes
    rest = dict(changes)
    what = rest.pop("object", rest.pop(b"object", "tcp"))
    if isinstance(what, bytes):
        what = what.decode("utf-8", "replace")
    if what not in UPDATE_OBJECTS:
        raise EngineError(
            ErrorCode.INVALID_PARAMS,
            f"object must be {', '.join(UPDATE_OBJECTS)}, not {what!r:.40}",
        )
    return what, rest


def _dl_address(value: Any, name: str = "DlDestinationAddress") -> bytes:
    """A `DlDestinationAddress` (or a path's `NextHop`) from bin, or from text like
    "02:00:00:00:00:01"."""
    if isinstance(value, str):
        if _MAC_TEXT.fullmatch(value) is None and _MAC_PLAIN.fullmatch(value) is None:
            raise EngineError(
                ErrorCode.INVALID_PARAMS,
                f"{name} must be bin, or hex bytes like 02:00:00:00:00:01",
            )
        value = bytes.fromhex(value.replace(":", "").replace("-", ""))
    if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_DL_ADDRESS:
        raise EngineError(ErrorCode.INVALID_PARAMS, f"{name} must be 1..{MAX_DL_ADDRESS} bytes")
    return value


def check_object_cached(what: str, changes: Any) -> dict[str, Any]:
    """A neighbor's or path's update (spec §2.2 cached state), each value checked; else
    INVALID_PARAMS naming the first bad key."""
    if not isinstance(changes, dict) or not changes:
        raise EngineError(ErrorCode.INVALID_PARAMS, "an update is a non-empty map of variables")
    # a path's `NextHop` (extension): the link-layer address of the neighbor the path moves
    # under, spec §3.4 (b); the host's neighbor of that next hop on the path's binding
    allowed = OBJECT_VARIABLES["neighbor" if what == "neighbor" else "path"]
    checked: dict[str, Any] = {}
    for key, value in changes.items():
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        if key not in allowed:
            raise _not_a_variable(key, what, ", ".join(sorted(allowed)))
        if key in ("DlDestinationAddress", "NextHop"):
            checked[key] = _dl_address(value, key)
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise EngineError(ErrorCode.INVALID_PARAMS, f"{key} must be an integer")
        low, high = PATH_MTU if key == "PathMtu" else (0, ULONG)
        if not low <= value <= high:
            raise EngineError(ErrorCode.INVALID_PARAMS, f"{key} must be {low}..{high}")
        checked[key] = value
    return checked


class Engine:
    """Implements `chimneyd.api.EngineAPI` over the layer tasks."""

    def __init__(
        self,
        settings: EngineConfig | None = None,
        layers: tuple[LayerConfig, ...] = DEFAULT_LAYERS,
        id_base: int = 0,
    ) -> None:
        """`id_base`: connection, listener and fault ids count up from it (0 for a daemon of
        one shard; a shard's own range otherwise, so ids stay unique daemon-wide)."""
        self.settings = settings if settings is not None else EngineConfig()
        self.loop = asyncio.get_running_loop()
        self.ndis = Ndis(
            clock=time.monotonic_ns, deliver=deliver, trace_depth=self.settings.trace_depth
        )
        self.layer_specs = layers
        self.sockets = Sockets(
            self.loop, deliver, self._attach, self.settings.max_pending_accepts, id_base
        )
        self.host, self.layers, self.tasks = build(
            self.ndis, self.loop, self.settings, layers, self.sockets.find_wire, self._layer_failed
        )
        self.events = EventHub()
        self.events.layer_of = self._layer_of
        self.host.emit = self._emit
        # observability hook (observe.metrics): hears each tcp.send's completion latency
        self.send_observer: Callable[[float], None] | None = None
        self.traces = TraceArchive()
        self.faults = FaultRegistry(id_base)
        self.trim = IdleTrim(self.loop, self._idle, self._lean_holders, self.traces.pack)
        self.layer_errors = 0
        self._conn_ids = id_base
        # every request the host has not answered, oldest first (a dict as an ordered set): a
        # failing layer answers those of its connections (`_layer_failed`). One table, not a
        # set per connection, which every request of an idle connection made and dropped.
        self._pending: dict[_Request, None] = {}
        # bytes of sends asked for and not yet answered, per connection (`max_queued_send_bytes`)
        self._queued_send: dict[int, int] = {}
        self.cached_ranges = cached_ranges(self.settings.rx_buffer_bytes)
        self.checker: Any = None
        if self.settings.invariants:
            from chimneyd.observe.invariants import InvariantChecker

            self.checker = InvariantChecker()  # it logs the first violations itself
            self.ndis.observer = self.checker

    def start(self) -> None:
        for task in self.tasks:
            task.start()

    # ============================================================================================
    # requests into the host stack
    # ============================================================================================
    def post_host(self, fn: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
        """Run `fn(*args)` in the host stack's task (a typed call, through its inbox)."""
        assert not kwargs, "inbox calls take positional arguments"
        self.host.inbox.push(fn, args)

    def _request(
        self,
        fn: Callable[..., None],
        conn_id: int,
        *args: Any,
        withdraw_after: float | None = None,
        read: bool = False,
    ) -> asyncio.Future[Any]:
        """Run the host request `fn(conn_id, *args, done)` in the host's task; the future gets
        the result.

        A `read` (which `withdraw_after` implies) is withdrawn from the host
        (`app_cancel_recv`) when `withdraw_after` is up. The host does it in its own task, so a
        byte is never both given to a timed-out read and kept: no data is lost by a timeout
        (rpc-contract tcp.recv). A read a failed layer answered is withdrawn the same way
        (`_layer_failed`), and so is one whose future is cancelled (`ReadFuture`). A send is
        made by `start_send`, which settles its count when the host has answered it."""
        req = _Request(self, conn_id, read or withdraw_after is not None)
        # known until answered, so a layer that fails on the connection can answer it
        # (`_layer_failed`)
        self._pending[req] = None
        done = req.done  # one bound method: the host names the request to withdraw by it
        inbox: LayerTask = self.host.inbox  # typed: a native call, not a Python one
        inbox.push(fn, (conn_id, *args, done))
        if read or withdraw_after is not None:
            withdraw = req.withdraw = (conn_id, done, _ignore)
            if withdraw_after is not None:
                req.timer = self.loop.call_later(
                    withdraw_after, self.host.inbox.push, self.host.app_cancel_recv, withdraw
                )
        return req.fut

    def _unanswered(self) -> int:
        """Requests the host has not answered yet (an answered one leaves `_pending` at once)."""
        return len(self._pending)

    def _attach(self, wire: WireSocket, listener: Listener | None) -> int:
        """A new connection's socket: give it an id and hand it to the host stack."""
        self._conn_ids += 1
        conn_id = self._conn_ids
        self.sockets.add(conn_id, wire)
        self.post_host(self.host.attach, conn_id, wire, listener.id if listener else None)
        if self.events.noting:
            where = {"local": _addr(wire.local), "remote": _addr(wire.remote)}
            self.events.note(conn_id, "connected", {**where, "listener": listener and listener.id})
        if listener is not None and listener.offload:
            self.post_host(self.host.app_offload, conn_id, None, _ignore)
        return conn_id

    def _layer_failed(
        self, layer: Layer, exc: BaseException, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        """A handler raised inside a layer: answer every request waiting on the connections it
        was handling (never leave one unanswered) and count it. A host completion that broke
        the contract but that the host settled before it raised (`SettledThenRaised`: handles
        it had let go, a block it lacked, a connection it could not take back) names the
        connections it could not settle: only their requests fail, the others are the host's
        (spec §6.3)."""
        self.layer_errors += 1
        conns = sorted(conns_in(args))
        name = getattr(fn, "__name__", "?")
        log.error("layer_failed", layer=layer.name, handler=name, conns=conns, exc_info=exc)
        if isinstance(exc, PlantedBug):
            self.faults.note_hit(exc.fault_id, layer.name, name, conns)
        if self.checker is not None:
            self.checker.violation(f"{layer.name}: {exc!r}")
        detail = f"{layer.name} failed in {name} ({type(exc).__name__}); see the daemon's log"
        # a completion naming handles the host had let go (spec §9 item 8), lacking a block, or
        # with a block the host could not take back: the host settled all the rest first, so a
        # request still pending on another connection the call names is one the host carries
        # on and will answer (an answered one is pending no more): only those the error says
        # the host could not settle fail
        failed = set(exc.conns) if isinstance(exc, SettledThenRaised) else set(conns)
        # a read of a connection the host took back as lost below is the host's still: it
        # answers it as it does a later read, "lost below" (docs/rpc.md, spec §6.3 [EMU])
        lost = exc.lost_below if isinstance(exc, SettledThenRaised) else frozenset()
        for req in [
            r
            for r in self._pending
            if r.conn_id in failed and not (r.withdraw is not None and r.conn_id in lost)
        ]:  # oldest first
            withdraw = req.withdraw  # settling the request lets go of it
            req.fail(EngineError(ErrorCode.INTERNAL, detail))
            if withdraw is not None:
                # withdrawn, as a timed-out read is: else the host would still hand it the next
                # bytes, which nobody then reads (rpc-contract tcp.recv)
                self.host.inbox.push(self.host.app_cancel_recv, withdraw)
        if isinstance(layer, DriverLayer):
            # the call it could not serve fails, so the layers above unwind (answered already;
            # their late answer is ignored)
            try:
                if layer.fail_unserved(name, args):
                    log.warning("layer_call_failed_on_its_behalf", layer=layer.name, handler=name)
            except Exception:
                log.exception("layer_call_not_failed", layer=layer.name, handler=name)

    # ============================================================================================
    # EngineAPI: stack
    # ============================================================================================
    def info(self) -> dict[str, Any]:
        layers = [
            {
                "name": spec.name,
                "kind": spec.kind,
                "lower": list(spec.lower),
                "state": self.layers[spec.name].state,
                **self.layers[spec.name].describe(),
            }
            for spec in self.layer_specs
        ]
        return {
            "version": __version__,
            "contract": CONTRACT_VERSION,
            "build": build_name(),  # which build answers: "compiled" (`make compiled`) or "python"
            "allocator": allocator_name(),  # PYTHONMALLOC as the daemon started: "malloc" unless set
            "layers": layers,
        }

    def stats(self) -> dict[str, Any]:
        return {
            "layers": self.ndis.stats(),
            "connections": len(self.host.tcbs),
            # every asyncio task of the daemon (layer tasks, RPC), to compare with its idle value
            "tasks": len(asyncio.all_tasks(self.loop)),
            "engine": {
                "listeners": len(self.sockets.listeners),
                "pending_overflows": self.sockets.pending_overflows,
                "accept_waiters": self.sockets.accept_waiters(),
                "queued_send_bytes": sum(self._queued_send.values()),
                "pending_requests": self._unanswered(),
                "wires": len(self.sockets.by_conn),
                "ack_waiting": len(self.sockets.watcher.waiting),
                "inbox": {t.layer.name: len(t.inbox) for t in self.tasks},
                "messages": {t.layer.name: t.messages for t in self.tasks},
                "layer_errors": self.layer_errors,
                # every violation found, not only the ones the checker keeps (its list is capped)
                "invariant_violations": self.checker.count if self.checker else None,
                # how much it checked: a checker on but never called (detached from NDIS)
                # counts no violation either, and only this tells the two apart
                "invariant_checked_nbls": self.checker.checked if self.checker else None,
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
        if target is not None:
            # a NIC: NOT_FOUND for no such layer, INVALID_PARAMS for an IM or a mux
            self.target_layer(target)
        wire = await self.sockets.connect(host, port)
        conn_id = self._attach(wire, None)
        if on_conn is not None:
            on_conn(conn_id)
        if not offload:
            if target is not None:  # the NIC a later `tcp.offload` goes to
                self.post_host(self.host.app_pin, conn_id, target, _ignore)
            await self._host_has_seen()  # known to every method once answered
        if offload:
            try:
                await self._request(self.host.app_offload, conn_id, target)
            except EngineError as exc:
                # the connection stays usable in host mode (rpc-contract tcp.offload)
                log.info("offload_refused", conn=conn_id, error=str(exc))
        return conn_id

    async def listen(self, host: str, port: int, offload: bool = True) -> int:
        return (await self.sockets.listen(host, port, offload)).id

    def listener_info(self, listener_id: int) -> dict[str, Any]:
        listener = self.sockets.listener(listener_id)
        return {"host": listener.host, "port": listener.port, "pending": len(listener.pending)}

    async def accept(self, listener_id: int, timeout: float | None) -> int:
        """The listener's next connection. Cancelled (its client left), it takes none: one
        handed to it meanwhile goes to the next accept, or is closed with its listener."""
        conn_id = await self.sockets.accept(listener_id, timeout)
        try:
            await self._host_has_seen()  # the connection may have been made a moment ago
        except asyncio.CancelledError:
            if not self.sockets.give_back(listener_id, conn_id):
                # its listener closed meanwhile and no longer lists it: closed here instead
                self.post_host(self.host.app_close, conn_id, _ignore)
            raise
        return conn_id

    async def close_listener(self, listener_id: int) -> None:
        """Stop listening: accepts still waiting fail (NOT_FOUND, "listener closed") and the
        connections nobody accepted are closed."""
        pending = self.sockets.close_listener(listener_id)
        await asyncio.gather(*(self.close(c) for c in pending), return_exceptions=True)

    def _host_has_seen(self) -> asyncio.Future[None]:
        """Done once the host stack has run everything put in its inbox before (a new
        connection's `attach` included)."""
        fut: asyncio.Future[None] = self.loop.create_future()
        self.host.inbox.push(_set_done, (fut,))
        return fut

    async def offload(self, conn_id: int) -> dict[str, Any]:
        return await self._request(self.host.app_offload, conn_id, None)  # type: ignore[no-any-return]

    async def upload(self, conn_id: int) -> dict[str, Any]:
        return await self._request(self.host.app_upload, conn_id)  # type: ignore[no-any-return]

    async def send(self, conn_id: int, data: bytes) -> int:
        return await self.start_send(conn_id, data)  # type: ignore[no-any-return]

    def start_send(self, conn_id: int, data: bytes) -> asyncio.Future[Any]:
        """Queue a send; its future gets the bytes sent once the peer acknowledged them (spec
        §4.1). LIMIT, before anything is queued, if the connection's unanswered sends would
        pass `max_queued_send_bytes` (what the host holds for it: sends batched, in the
        chimney, or on the socket not yet acknowledged). A future rather than a coroutine: the
        RPC server answers from its callback, with no task per request."""
        queued = self._queued_send.get(conn_id, 0)
        cap = self.settings.max_queued_send_bytes
        n = len(data)
        if queued + n > cap:
            raise EngineError(
                ErrorCode.LIMIT,
                f"connection {conn_id} has {queued} bytes of sends unanswered; {n} more"
                f" would pass engine.max_queued_send_bytes ({cap})",
            )
        if n:  # an empty send counts nothing, and so has nothing to give back (`_send_settled`)
            self._queued_send[conn_id] = queued + n
        req = _Request(self, conn_id)
        req.sent = n
        observe = self.send_observer
        if observe is not None:
            req.observe = observe
            req.t0 = time.perf_counter()
        self._pending[req] = None
        inbox: LayerTask = self.host.inbox  # typed: a native call, not a Python one
        inbox.push(self.host.app_send, (conn_id, data, req.done))
        return req.fut

    def _send_settled(self, req: _Request) -> None:
        """A send is answered (`_Request._settle`): its bytes are the host's until then, even
        for a request the client gave up on (cancelled), so they count against the limit
        until now."""
        if req.sent:
            conn_id = req.conn_id
            left = self._queued_send[conn_id] - req.sent
            if left:
                self._queued_send[conn_id] = left
            else:
                del self._queued_send[conn_id]
        observe = req.observe
        if observe is not None:
            fut = req.fut
            if not fut.cancelled() and fut.exception() is None:
                observe(time.perf_counter() - req.t0)  # a send completes when acknowledged

    async def recv(
        self, conn_id: int, max_bytes: int, timeout: float | None, waitall: bool = False
    ) -> bytes:
        return await self.start_recv(conn_id, max_bytes, timeout, waitall)  # type: ignore[no-any-return]

    def start_recv(
        self, conn_id: int, max_bytes: int, timeout: float | None, waitall: bool = False
    ) -> asyncio.Future[Any]:
        """Ask for up to `max_bytes` (exactly, with `waitall`, short only at the end of the
        stream); the future gets them. See `start_send` for why a future."""
        return self._request(
            self.host.app_recv, conn_id, max_bytes, waitall, withdraw_after=timeout, read=True
        )

    async def disconnect(self, conn_id: int, abortive: bool) -> str:
        return await self._request(self.host.app_disconnect, conn_id, abortive)  # type: ignore[no-any-return]

    async def close(self, conn_id: int) -> None:
        await self._request(self.host.app_close, conn_id)

    async def update(self, conn_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """`NdisUpdateOffload` of the connection's cached TCP variables (spec §3.4); each
        value is checked against its range (spec §2.2) before anything reaches a layer. With
        `"object": "neighbor"` or `"path"` in `changes`, of the cached variables of the
        neighbor or path the connection depends on (shared with the other connections on it)."""
        what, rest = split_object(changes)
        if what != "tcp":
            checked_object = check_object_cached(what, rest)
            return await self._request(  # type: ignore[no-any-return]
                self.host.app_update_object, conn_id, what, checked_object
            )
        checked = check_cached(rest, self.cached_ranges)
        return await self._request(self.host.app_update, conn_id, checked)  # type: ignore[no-any-return]

    async def invalidate(self, conn_id: int, what: str = "neighbor") -> dict[str, Any]:
        """`NdisInvalidateOffload` of the connection's TCP, path or neighbor object (spec §3.5)."""
        if what not in ("tcp", "path", "neighbor"):
            raise EngineError(ErrorCode.INVALID_PARAMS, "object must be tcp, path or neighbor")
        return await self._request(self.host.app_invalidate, conn_id, what)  # type: ignore[no-any-return]

    async def query(self, conn_id: int) -> dict[str, Any]:
        """`NdisQueryOffloadState` of the connection's TCP object: its delegated state now."""
        return await self._request(self.host.app_query, conn_id)  # type: ignore[no-any-return]

    def conn(self, conn_id: int) -> int:
        """`conn_id` if it names an open connection, else NOT_FOUND."""
        if conn_id not in self.host.tcbs:
            raise EngineError(ErrorCode.NOT_FOUND, f"no connection {conn_id}")
        return conn_id

    def conn_info(self, conn_id: int) -> dict[str, Any]:
        tcb = self.host.tcbs.get(conn_id)
        if tcb is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no connection {conn_id}")
        wire = tcb.wire
        return {
            "state": tcb.state,
            "offload_queued": tcb.initiate_queued,
            # extension: why its last offload was refused (nil once one succeeds)
            "offload_refused": refusal_info(tcb),
            "path": self.host.path_names(tcb),
            "local": f"{wire.local[0]}:{wire.local[1]}",
            "remote": f"{wire.remote[0]}:{wire.remote[1]}",
            "bytes_sent": wire.bytes_written,
            "bytes_received": wire.bytes_read,
            "handles": _handles_of(self.host.name, tcb),
            "phases": _phases_of(self.host.name, tcb),
            "delegated": tcb.delegated.as_map() if tcb.delegated else {},
            # what `delegated` is: taken at "offload", "query" or "upload", and when
            **provenance(tcb.delegated, self.ndis.clock()),
            "listener": tcb.listener,
            "socket": _socket_view(wire),
            # extension: once `tcp.update` changed its neighbor or path, their values per layer
            **_objects_of(self.host.name, self.host.updated_objects, tcb),
        }

    def conn_ids(self) -> list[int]:
        return sorted(self.host.tcbs)

    def trace(self, conn_id: int, limit: int | None) -> list[dict[str, Any]]:
        tcb = self.host.tcbs.get(conn_id)
        trace = (
            tcb.trace if tcb is not None else self.traces.get(conn_id, self.ndis.new_trace(conn_id))
        )
        if trace is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no connection {conn_id}")
        return trace.as_maps(limit)

    def watch_hops(
        self, conn_id: int, watcher: Callable[[HopRecord], None]
    ) -> Callable[[], None] | None:
        """Hand each hop record of the open connection `conn_id` to `watcher` as it is
        recorded (the web view's live diagram); returns the function that stops it, or None if
        the connection is not open. Only a watched connection pays for it (ndis.trace)."""
        tcb = self.host.tcbs.get(conn_id)
        if tcb is None:
            return None
        trace = tcb.trace
        trace.watch(watcher)

        def unwatch() -> None:
            if trace.watcher is watcher:
                trace.unwatch()

        return unwatch

    # ============================================================================================
    # events
    # ============================================================================================
    def subscribe(self, conn_id: int | None, callback: EventCallback) -> Callable[[], None]:
        if conn_id is not None:
            self.conn(conn_id)
        return self.events.subscribe(conn_id, callback)

    def _emit(self, conn_id: int, event: str, info: dict[str, Any]) -> None:
        if event == "closed":
            wire = self.sockets.forget(conn_id)
            if wire is not None:
                tcb: Tcb = wire.home_ctx
                self.traces.closed(conn_id, tcb.trace)
            self.trim.soon()
        self.events.emit(conn_id, event, info)

    def _layer_of(self, conn_id: int) -> str:
        """The layer a connection's events come from: the NIC carrying it, else the host."""
        tcb = self.host.tcbs.get(conn_id)
        return self.host.path_names(tcb)[-1] if tcb is not None else self.host.name

    # ============================================================================================
    # memory
    # ============================================================================================
    def _idle(self) -> bool:
        return not self.host.tcbs

    def _lean_holders(self) -> list[object]:
        holders: list[object] = [self, self.ndis, self.sockets, self.sockets.watcher, self.checker]
        for layer in self.layers.values():
            holders += [layer, layer.table, layer.stats]
        return holders

    def give_back_when_idle(self) -> None:
        """Give freed memory back soon, if no connection is open (RPC clients leaving)."""
        self.trim.soon()

    def keep_lean(self, holder: object) -> None:
        self.trim.keep_lean(holder)

    # ============================================================================================
    # faults
    # ============================================================================================
    def fault_inject(self, spec: dict[str, Any], fault_id: int | None = None) -> int:
        """Inject `spec`; under `fault_id` when given (a fault put into several shards)."""
        fault = self.faults.inject(self, spec, fault_id)
        log.info("fault_injected", fault=fault.id, spec=fault.spec)
        if self.events.noting:
            self.events.note(None, "fault_injected", {"fault": fault.id, **fault.spec})
        return fault.id

    def fault_clear(self, fault_id: int | None) -> None:
        ids = list(self.faults.faults) if fault_id is None else [fault_id]
        self.faults.clear(fault_id)
        if self.events.noting:
            for fid in ids:
                self.events.note(None, "fault_cleared", {"fault": fid})

    def fault_list(self) -> list[dict[str, Any]]:
        return self.faults.active()

    def fault_reserve(self) -> int:
        """A fault id from this engine's range, for a fault other shards get too."""
        return self.faults.reserve()

    def fault_entries(self) -> list[dict[str, Any]]:
        """Every fault held, used up or not, each with `active`."""
        return self.faults.entries()

    def nic_in_service(self, layer: str, up: bool) -> None:
        """A NIC put back in service or taken out as `nic_up` or `nic_down` does, but with no
        fault: no id, no entry, no `fault_injected` event."""
        mux, binding = self.mux_above(layer)
        mux.inbox.push(mux.lower_up if up else mux.lower_down, (binding,))

    def driver_layer(self, name: str) -> DriverLayer:
        layer = self.layers.get(name)
        if layer is None:
            raise EngineError(ErrorCode.NOT_FOUND, f"no layer {name!r}")
        return layer

    def mux_layer(self, name: str) -> MuxIm:
        layer = self.driver_layer(name)
        if not isinstance(layer, MuxIm):
            raise EngineError(
                ErrorCode.INVALID_PARAMS, f"layer {name!r} is a {layer.kind}, not a mux"
            )
        return layer

    def mux_above(self, name: str) -> tuple[MuxIm, Binding]:
        """The mux the layer `name` (a NIC, or an IM over one) is bound under, directly or
        through IMs, and its binding on that side (`team_above`)."""
        found = self.team_above(self.driver_layer(name))
        if found is None:
            raise EngineError(ErrorCode.INVALID_PARAMS, f"layer {name!r} is not under a mux")
        return found

    def team_member(self, name: str) -> str:
        """The layer `team_above` finds the MUX bound to on `name`'s side: one name for a NIC
        under IMs and the IMs between (docs/faults.md `nic_down`)."""
        return self.mux_above(name)[1].lower.name

    @staticmethod
    def team_above(layer: Layer) -> tuple[MuxIm, Binding] | None:
        """The MUX `layer` is bound under, directly or through IMs, and the MUX's binding to
        the side `layer` is on (team0 -> imA -> nic1: team0's binding to imA); None when no
        MUX is above it. The one walk `nic_down`, `nic_up` and `host_event` go by (a layer
        has one layer above it and no MUX is below another, config.py: the nearest MUX)."""
        for binding in layer.upper_bindings:
            if isinstance(binding.upper, MuxIm):
                return binding.upper, binding
        for binding in layer.upper_bindings:
            if (found := Engine.team_above(binding.upper)) is not None:
                return found
        return None

    def target_layer(self, name: str) -> OffloadTarget:
        layer = self.driver_layer(name)
        if not isinstance(layer, OffloadTarget):
            raise EngineError(
                ErrorCode.INVALID_PARAMS, f"layer {name!r} is a {layer.kind}, not a target"
            )
        return layer

    # ============================================================================================
    # shutdown
    # ============================================================================================
    async def shutdown(self, deadline: float) -> dict[str, Any]:
        """Close every listener and connection (uploading first) within `deadline` seconds,
        then stop the layers; report what could not be closed and any request the host left
        unanswered. Never waits past the deadline (plus the short drain of the last
        completions) and never raises for a timeout."""
        loop = self.loop
        end = loop.time() + deadline
        # nothing a fault holds may hold the stop: a one-minute delay is released at once
        self.faults.clear(None)
        conn_ids: list[int] = []
        for lid in list(self.sockets.listeners):
            try:
                conn_ids += self.sockets.close_listener(lid)
            except EngineError:
                pass
        conn_ids += [c for c in self.host.tcbs if c not in conn_ids]
        closes = [asyncio.ensure_future(self.close(c)) for c in conn_ids]
        unfinished: list[int] = []
        if closes:
            _, pending = await asyncio.wait(closes, timeout=max(0.0, end - loop.time()))
            for conn_id, fut in zip(conn_ids, closes, strict=True):
                if fut in pending:
                    fut.cancel()
                    unfinished.append(conn_id)
        errors = [
            str(exc)
            for f in closes
            # a close cut off at the deadline is being cancelled, not done: it is unfinished
            if f.done()
            and not f.cancelled()
            and (exc := f.exception()) is not None
            # closed meanwhile by its client's leaving: closed is what was wanted
            and not (isinstance(exc, EngineError) and exc.code is ErrorCode.NOT_FOUND)
        ]
        # let the last completions and receive returns drain through the layers (bounded)
        for _ in range(50):
            if all(not t.inbox for t in self.tasks) and not self._busy():
                break
            await asyncio.sleep(0.01)
        left: dict[str, Any] = {}
        for name, st in self.ndis.stats().items():
            gauges = {k: st[k] for k in ("offloads_active", "handles", "outstanding_nbls") if st[k]}
            if gauges:
                left[name] = gauges
        # a layer's own tables (what no NDIS gauge shows: records of NBLs and calls passed on,
        # connections owed something) are empty too once everything is closed and drained
        for task in self.tasks:
            if not isinstance(task.layer, DriverLayer):
                continue
            tables = {k: n for k, n in task.layer.leftovers().items() if n}
            if tables:
                left.setdefault(task.layer.name, {})["tables"] = tables
        # NDIS's own record of the initiates below (`Ndis.walks_in_flight`): none once drained
        walks = self.ndis.walks_in_flight()
        if walks:
            left["ndis"] = {"initiate_walks": walks}
        if unfinished:
            left["unfinished_closes"] = unfinished
        # a connection closed is gone from the host's table and the socket registry; one
        # still there (not a close cut off at the deadline) is a leak
        kept = [c for c in set(self.host.tcbs) | set(self.sockets.by_conn) if c not in unfinished]
        if kept:
            left["connections_kept"] = sorted(kept)[:20]
        # every request the host was given must have been answered (`_Request`)
        unanswered = self._unanswered()
        if unanswered:
            left["pending_requests"] = unanswered
        for task in self.tasks:
            await task.stop()
        self.trim.cancel()
        return {
            "closed": len(conn_ids) - len(unfinished),
            "errors": errors,
            "left_over": left,
            "connections": len(self.host.tcbs),
        }

    def _busy(self) -> bool:
        st = self.ndis.stats()
        return any(v["outstanding_nbls"] or v["handles"] for v in st.values())


def _socket_view(wire: WirePort) -> dict[str, Any]:
    """The kernel's side of a connection's socket: what a send waits for when it waits. Bytes
    written but not acknowledged with the peer's window too small for them mean the peer's
    application is not reading (TCP flow control), not that the stack lost track of them."""
    acked = wire.acked()
    info = wire.tcp_info()
    return {
        "written": wire.bytes_written,
        "acked": acked,
        "peer_window": info.snd_wnd,  # None on kernels before 5.4
        "probes": info.probes,  # zero-window probes sent without an answer
        # False once the daemon has closed the socket: nothing more will be acknowledged
        "open": not wire.closed,
    }


def _below(tcb: Tcb) -> Iterator[tuple[str, Any]]:
    """The layers under the host that hold the connection, top down: each one's name and the
    context it holds for it."""
    handle = tcb.handle
    while handle is not None and handle.miniport_offload_context is not None:
        ctx = handle.miniport_offload_context
        binding = handle.ndis_reserved
        yield (binding.lower.name if binding is not None else "?"), ctx
        handle = ctx.handle if isinstance(ctx, ImOffloadEntry) else None


def _handles_of(host_name: str, tcb: Tcb) -> dict[str, Any]:
    """Per layer: the handle it owns for the connection and the context it holds (ids)."""
    out: dict[str, Any] = {host_name: {"handle": tcb.handle.id if tcb.handle else None}}
    for lower, ctx in _below(tcb):
        entry: dict[str, Any] = {"context": ctx.id}
        if isinstance(ctx, ImOffloadEntry):
            entry["handle"] = ctx.handle.id
        out[lower] = entry
    return out


def _phases_of(host_name: str, tcb: Tcb) -> dict[str, str]:
    """Per layer: where the connection's object there is in its lifecycle (spec §3.9). The
    layers can disagree for a while (a retrieve on its way up, a terminate on its way down),
    and a wait that never ends shows which layer holds it."""
    out = {host_name: tcb.lifecycle.phase.value}
    for lower, ctx in _below(tcb):
        lifecycle = getattr(ctx, "lifecycle", None)
        out[lower] = lifecycle.phase.value if lifecycle is not None else "?"
    return out


def _cached_view(cached: Any) -> dict[str, Any]:
    """A neighbor's or path's cached state as plain values (a MAC as "02:00:00:00:00:01")."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cached):
        value = getattr(cached, f.name)
        out[f.name] = value.hex(":") if isinstance(value, bytes) else value
    return out


def _objects_of(host_name: str, updated: dict[Any, Any], tcb: Tcb) -> dict[str, Any]:
    """`{"objects": ...}` once `tcp.update` has changed the offloaded connection's neighbor
    or path (else nothing: the values the host offloads by default, and `tcp.info` as it was):
    per layer that keeps state for them, their cached state as that layer holds it — the
    host's own objects, a MUX's virtual objects, a NIC's copies (spec §2.3, §3.4). What an
    object update changed, layer by layer. A pass-through IM keeps no state of its own and is
    left out."""
    out: dict[str, Any] = {}
    path = tcb.path
    neighbor = path.parent if path is not None else None
    if (
        path is None
        or path.cached is None
        or tcb.handle is None
        or not (path.key in updated or (neighbor is not None and neighbor.key in updated))
    ):
        return out
    out[host_name] = {
        "neighbor": _cached_view(neighbor.cached) if neighbor and neighbor.cached else None,
        "path": _cached_view(path.cached),
        # which path it is (spec §2.3: the connections on it share it), as `handles` names
        # the connection: the host owns its handle
        "path_handles": {"handle": path.handle.id if path.handle is not None else None},
    }
    for lower, ctx in _below(tcb):
        held = getattr(ctx, "path", None)
        cached = getattr(held, "cached", None)
        if cached is None or not dataclasses.is_dataclass(cached):
            continue
        # a NIC's path context names its neighbor context; a MUX's virtual path its parent
        above = getattr(held, "neighbor", None) or getattr(held, "parent", None)
        above_cached = getattr(above, "cached", None)
        out[lower] = {
            "neighbor": _cached_view(above_cached) if above_cached is not None else None,
            "path": _cached_view(cached),
            "path_handles": _path_handles(ctx, held),
        }
    return {"objects": out}


def _path_handles(ctx: Any, held: Any) -> dict[str, Any]:
    """The ids of the path a layer below the host holds for the connection whose context is
    `ctx`: the context it holds for the path (a NIC's path context, a MUX's virtual path),
    and the handle it owns for it, if it passes it down (a MUX: its copy's on the NIC that
    carries the connection, spec §1.2)."""
    ids: dict[str, Any] = {"context": held.id}
    instances = getattr(held, "instances", None)
    if isinstance(instances, dict) and isinstance(ctx, ImOffloadEntry):
        copy = instances.get(ctx.lower.id)
        ids["handle"] = copy.handle.id if copy is not None else None
    return ids


def _addr(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)


async def start_engine(
    config: EngineConfig | None = None,
    layers: tuple[LayerConfig, ...] | None = None,
    id_base: int = 0,
) -> Engine:
    """Build the stack from the configuration and start its layer tasks."""
    engine = Engine(config, layers or DEFAULT_LAYERS, id_base)
    engine.start()
    return engine


__all__ = ["Engine", "start_engine"]
