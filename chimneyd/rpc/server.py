"""The msgpack-RPC server: one asyncio Protocol per client, requests answered out of order.

Per client (`Session`):
- a `Decoder` with the message-size limit; a bad frame gets a best-effort error (when its msgid
  is known) and closes that client only;
- an in-flight limit: a request that would be one more than `max_in_flight` running requests
  gets LIMIT at once. Chosen over pausing reads so a client always learns why a request was not
  served, and so cheap methods (`ping`, `tcp.info`) keep answering while slow ones wait;
- back-pressure: when the client leaves its responses unread and the transport's write buffer
  passes `WRITE_HIGH`, reading from it is paused (no new requests) until the buffer drains below
  `WRITE_LOW`. What is already in flight still completes, so the buffer can grow a little past the
  mark; past `hard_write_limit` (event notifications keep coming) the client is dropped;
- ownership: it sees and touches only the connections it made (`tcp.connect`, `tcp.accept` on
  its listeners), its listeners and its faults, unless it authenticated with the admin token;
  anything else is NOT_FOUND, as if it did not exist;
- when it goes away (or ends its stream), its in-flight requests are cancelled, its subscriptions dropped, its
  listeners and connections closed through the engine, and the faults it put on its own
  connections cleared (a fault on a layer stays and becomes anyone's to clear).
Responses made in one loop turn go out in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import inspect
import os
import stat
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, cast

import structlog

from chimneyd.api import EngineAPI, EngineError, ErrorCode
from chimneyd.config import RpcConfig, check_listen, parse_listen

from .codec import Decoder, Encoder, Notification, ProtocolError, Request
from .methods import METHODS, OPEN_METHODS, pos_int

log = structlog.get_logger("chimneyd.rpc")

WRITE_HIGH = 4 * 1024 * 1024  # pause reading a client whose unread responses pass this
WRITE_LOW = 1 * 1024 * 1024  # and resume once they drain below this
HARD_WRITE_FLOOR = 64 * 1024 * 1024  # a client not reading past this many bytes is dropped
CLOSED_REMEMBERED = 1024  # a client's closed connection ids kept for `trace.get` after close
MAX_LISTENERS_PER_CLIENT = 1024
BACKLOG = 4096  # perf-notes: past ~4096 unaccepted connects the accept queue overflows


def _error(code: ErrorCode, detail: str) -> list[Any]:
    return [int(code), f"{code.name}: {detail}"]


def _short(name: str, limit: int = 64) -> str:
    """A client-given name fit for a log line or an error message (a method name may be 1 MB)."""
    return name if len(name) <= limit else name[:limit] + "..."


class Session(asyncio.Protocol):
    """One RPC client."""

    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.engine: EngineAPI = server.engine
        cfg = server.config
        self.config = cfg
        self.decoder = Decoder(cfg.max_message_bytes)
        self.encoder = Encoder()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        # `token` gates the port; `admin_token` alone only lifts ownership for who presents it
        self.authed = not cfg.token
        self.admin = False
        self.in_flight = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.conns: set[int] = set()
        self.closed_conns: OrderedDict[int, None] = OrderedDict()
        self.pending_conns = 0  # connects/accepts under way, counted against the limit
        self.listeners: set[int] = set()
        self.faults: set[int] = set()
        self.unsubscribe: dict[int | None, Callable[[], None]] = {}
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.closing = False
        self.accepted = False
        self.requests = 0
        self.hard_write_limit = max(HARD_WRITE_FLOOR, 8 * cfg.max_message_bytes)

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        if self.server.stopping or len(self.server.sessions) >= self.config.max_clients:
            log.warning("rpc_client_refused", client=self.peer, clients=len(self.server.sessions))
            self.closing = True
            self.transport.abort()
            return
        self.accepted = True
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        self.server.sessions.add(self)
        log.info("rpc_client_connected", client=self.peer)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        # tasks started below copy this context: their log lines (ours and the engine's) name
        # the client
        with structlog.contextvars.bound_contextvars(client=self.peer):
            for msg in self.decoder.feed(data):
                if isinstance(msg, Request):
                    self.dispatch(msg)
                elif isinstance(msg, Notification):
                    log.info("rpc_notification_ignored", method=_short(msg.method))
                else:
                    self.bad_frame(msg)
                    return

    def eof_received(self) -> bool:
        # end of the client's stream = the client is gone: answers already made are flushed,
        # requests still running are cancelled and its connections freed (a closed socket and a
        # half-closed one look alike here, and a request such as `tcp.accept` may wait forever)
        self.close()
        return False

    def bad_frame(self, err: ProtocolError) -> None:
        log.warning("rpc_bad_frame", reason=err.reason, msgid=err.msgid)
        if err.msgid is not None:
            code = ErrorCode.LIMIT if err.limit else ErrorCode.INVALID_PARAMS
            self.respond(err.msgid, _error(code, err.reason), None)
        self.close()

    def pause_writing(self) -> None:
        # the client is not reading its responses: stop reading its requests (back-pressure)
        if self.transport is not None and not self.closing:
            log.debug("rpc_client_paused", buffered=self.transport.get_write_buffer_size())
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.out = []
        if not self.accepted:
            return
        self.server.sessions.discard(self)
        for task in self.tasks:
            task.cancel()
        for unsubscribe in self.unsubscribe.values():
            unsubscribe()
        self.unsubscribe.clear()
        conns, listeners, faults = set(self.conns), set(self.listeners), set(self.faults)
        self.conns.clear()
        self.listeners.clear()
        self.faults.clear()
        if conns or listeners or faults:
            # connections of a client that went away are closed and freed (issue 3, item 2)
            self.server.background(self._release_all(conns, listeners, faults))
        else:
            self.engine.give_back_when_idle()  # what this client's session held goes now
        log.info(
            "rpc_client_disconnected",
            client=self.peer,
            requests=self.requests,
            conns_closed=len(conns),
            error=str(exc) if exc else None,
        )

    async def _release_all(self, conns: set[int], listeners: set[int], faults: set[int]) -> None:
        server = self.server
        closed = conns | set(self.closed_conns)
        for fid in faults:
            if server.fault_conn.get(fid) in closed:
                with contextlib.suppress(EngineError):
                    self.engine.fault_clear(fid)
                server.forget_fault(fid)
            else:
                server.fault_owner[fid] = None  # a layer's fault outlives its maker
        for lid in listeners:
            with contextlib.suppress(EngineError):
                await self.engine.close_listener(lid)
        results = await asyncio.gather(
            *(self.engine.close(c) for c in conns), return_exceptions=True
        )
        for conn in conns:
            if server.conn_owner.get(conn) is self:
                del server.conn_owner[conn]
        failed = [
            r for r in results if isinstance(r, BaseException) and not isinstance(r, EngineError)
        ]
        if failed:
            log.error(
                "rpc_client_cleanup_failed", client=self.peer, errors=[repr(f) for f in failed[:3]]
            )

    # -- requests ------------------------------------------------------------------------------
    def dispatch(self, req: Request) -> None:
        self.requests += 1
        # DENIED before NO_METHOD: an unauthenticated client learns nothing about the method table
        if not self.authed and req.method not in OPEN_METHODS:
            self.respond(req.msgid, _error(ErrorCode.DENIED, "authenticate first (auth)"), None)
            return
        fn = METHODS.get(req.method)
        if fn is None:
            detail = f"unknown method {_short(req.method)!r}"
            self.respond(req.msgid, _error(ErrorCode.NO_METHOD, detail), None)
            return
        try:
            result = fn(self, req.params)
        except EngineError as err:
            self.respond(req.msgid, [int(err.code), err.message], None)
            return
        except Exception as exc:
            self.internal(req, exc)
            return
        # a method is a plain `def` (its result is the answer) or an `async def`; a type check,
        # not `isawaitable`, whose Awaitable ABC check cost 7% of the daemon's time per ping
        if not inspect.iscoroutine(result):
            self.respond(req.msgid, None, result)
            return
        limit = self.config.max_in_flight
        if self.in_flight >= limit:
            result.close()  # the coroutine never ran: nothing happened in the engine
            self.respond(
                req.msgid, _error(ErrorCode.LIMIT, f"more than {limit} requests in flight"), None
            )
            return
        self.in_flight += 1
        task: asyncio.Task[Any] = asyncio.ensure_future(result)
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, req))

    def _finished(self, req: Request, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        self.in_flight -= 1
        if task.cancelled():
            self.respond(
                req.msgid, _error(ErrorCode.TIMEOUT, "cancelled: the daemon is stopping"), None
            )
            return
        err = task.exception()
        if err is None:
            self.respond(req.msgid, None, task.result())
        elif isinstance(err, EngineError):
            self.respond(req.msgid, [int(err.code), err.message], None)
        else:
            self.internal(req, err)

    def internal(self, req: Request, err: BaseException) -> None:
        trace_id = uuid.uuid4().hex[:12]
        log.error(
            "rpc_internal_error",
            client=self.peer,
            method=_short(req.method),
            trace_id=trace_id,
            exc_info=err,
        )
        self.respond(
            req.msgid, _error(ErrorCode.INTERNAL, f"a bug, logged as trace id {trace_id}"), None
        )

    def respond(self, msgid: int, error: list[Any] | None, result: Any) -> None:
        if self.closing or self.transport is None:
            return
        try:
            frame = self.encoder.response(msgid, error, result)
        except (TypeError, ValueError, OverflowError) as exc:
            trace_id = uuid.uuid4().hex[:12]
            log.error("rpc_unencodable_result", trace_id=trace_id, error=repr(exc))
            frame = self.encoder.response(
                msgid, _error(ErrorCode.INTERNAL, f"a bug, logged as trace id {trace_id}"), None
            )
        self.send(frame)

    def send(self, frame: bytes) -> None:
        if self.closing:
            return
        self.out.append(frame)
        if not self.flush_scheduled:
            # one write per loop turn for every response and notification made in it
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        out, self.out = self.out, []
        transport = self.transport
        if not out or transport is None or transport.is_closing():
            return
        transport.writelines(out)
        if transport.get_write_buffer_size() > self.hard_write_limit:
            log.warning(
                "rpc_client_not_reading",
                client=self.peer,
                buffered=transport.get_write_buffer_size(),
                limit=self.hard_write_limit,
            )
            self.closing = True
            transport.abort()  # drop what it would never read; connection_lost cleans up

    def close(self) -> None:
        """Close after what is queued has been written."""
        if self.closing:
            return
        self.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- ownership (used by methods) -----------------------------------------------------------
    def authenticate(self, token: str) -> None:
        cfg = self.config
        given = token.encode("utf-8", "surrogateescape")
        if cfg.admin_token and hmac.compare_digest(given, cfg.admin_token.encode()):
            self.authed = self.admin = True
        elif cfg.token and hmac.compare_digest(given, cfg.token.encode()):
            self.authed = True
        elif not cfg.token and not cfg.admin_token:
            self.authed = True  # nothing to check against: auth is a no-op
        else:
            log.warning("rpc_auth_failed", client=self.peer)
            raise EngineError(ErrorCode.DENIED, "bad token")

    def conn(self, value: Any, closed_ok: bool = False) -> int:
        """A connection id this client may use (NOT_FOUND otherwise). `closed_ok` also admits
        its recently closed connections (their traces outlive them)."""
        conn = pos_int(value, "conn_id")
        if self.admin or conn in self.conns or (closed_ok and conn in self.closed_conns):
            return conn
        raise EngineError(ErrorCode.NOT_FOUND, f"no connection {conn}")

    def owns(self, conn: int) -> bool:
        return self.admin or conn in self.conns or conn in self.closed_conns

    def listener(self, value: Any) -> int:
        lid = pos_int(value, "listener_id")
        if self.admin or lid in self.listeners:
            return lid
        raise EngineError(ErrorCode.NOT_FOUND, f"no listener {lid}")

    def add_listener(self, lid: int) -> None:
        if self.closing:
            self.server.background(self.engine.close_listener(lid))
            return
        self.listeners.add(lid)

    def check_listener_room(self) -> None:
        if len(self.listeners) >= MAX_LISTENERS_PER_CLIENT:
            raise EngineError(
                ErrorCode.LIMIT, f"this client already has {MAX_LISTENERS_PER_CLIENT} listeners"
            )

    async def new_conn(self, make: Awaitable[int]) -> int:
        """Run a connect or accept counted against the per-client limit. The engine call runs to
        its end even if this request is cancelled (client gone, daemon stopping), so a
        connection it makes is always adopted — or closed when nobody is left to own it."""
        limit = self.config.max_connections_per_client
        if len(self.conns) + self.pending_conns >= limit:
            if inspect.iscoroutine(make):
                make.close()
            raise EngineError(ErrorCode.LIMIT, f"this client already has {limit} connections")
        self.pending_conns += 1
        inner = asyncio.ensure_future(make)
        inner.add_done_callback(self._made)
        return await asyncio.shield(inner)

    def adopt(self, conn: int) -> None:
        """The engine made `conn` for this client: own it before its first event (offloaded)."""
        if not self.closing:
            self.conns.add(conn)
            self.server.conn_owner[conn] = self

    def _made(self, task: asyncio.Future[int]) -> None:
        self.pending_conns -= 1
        if task.cancelled() or task.exception() is not None:
            return
        conn = task.result()
        if self.closing:
            # the client went away while the connection was being made: do not leak it
            self.server.background(self.engine.close(conn))
            return
        self.conns.add(conn)
        self.server.conn_owner[conn] = self

    def release(self, conn: int) -> None:
        """`tcp.close` succeeded: the connection is gone, whoever of us owned it."""
        owner = self.server.conn_owner.pop(conn, self)
        owner.conns.discard(conn)
        owner.closed_conns[conn] = None
        while len(owner.closed_conns) > CLOSED_REMEMBERED:
            owner.closed_conns.popitem(last=False)

    def subscribe(self, conn: int | None) -> None:
        if conn in self.unsubscribe:
            return

        def on_event(conn_id: int, event: str, info: dict[str, Any]) -> None:
            if not self.closing and self.owns(conn_id):
                self.send(self.encoder.notification("tcp.event", [conn_id, event, info]))

        self.unsubscribe[conn] = self.engine.subscribe(conn, on_event)

    # -- faults --------------------------------------------------------------------------------
    def add_fault(self, fid: int, conn: int | None) -> None:
        self.faults.add(fid)
        self.server.fault_owner[fid] = self
        if conn is not None:
            self.server.fault_conn[fid] = conn

    def may_touch_fault(self, fid: int) -> bool:
        owner = self.server.fault_owner.get(fid, None)
        # faults made before the server knew them (or whose maker left) are anyone's
        return self.admin or owner is self or owner is None

    def forget_fault(self, fid: int) -> None:
        self.server.forget_fault(fid)


class RpcServer:
    """Listens on the configured addresses and serves `Session`s."""

    def __init__(self, engine: EngineAPI, config: RpcConfig) -> None:
        self.engine = engine
        self.config = config
        self.sessions: set[Session] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.addresses: list[str] = []
        self.unix_paths: list[str] = []
        self.cleanups: set[asyncio.Task[Any]] = set()
        self.conn_owner: dict[int, Session] = {}
        self.fault_owner: dict[int, Session | None] = {}
        self.fault_conn: dict[int, int] = {}
        self.stopping = False
        engine.keep_lean(self)

    async def start(self) -> list[str]:
        """Bind every address; returns them as bound (the real port where 0 was asked).
        Raises `ConfigError` for an address off loopback without a token, OSError if a bind
        fails (what was bound by then is closed)."""
        check_listen(self.config.listen, self.config.token)
        self.stopping = False
        loop = asyncio.get_running_loop()
        try:
            for addr in self.config.listen:
                target = parse_listen(addr)
                if isinstance(target, str):
                    _remove_stale_socket(target)
                    server = await loop.create_unix_server(
                        lambda: Session(self), target, backlog=BACKLOG
                    )
                    self.unix_paths.append(target)
                    self.addresses.append(f"unix:{target}")
                else:
                    host, port = target
                    server = await loop.create_server(
                        lambda: Session(self), host, port, backlog=BACKLOG, reuse_address=True
                    )
                    for sock in server.sockets:
                        bound = sock.getsockname()
                        h = bound[0] if ":" not in bound[0] else f"[{bound[0]}]"
                        self.addresses.append(f"{h}:{bound[1]}")
                self.servers.append(server)
        except BaseException:
            await self.stop_accepting()
            raise
        log.info("rpc_listening", listen=self.addresses)
        return self.addresses

    def background(self, work: Awaitable[Any]) -> None:
        """Clean-up work that belongs to no request; awaited by `drain`."""

        async def run() -> None:
            with contextlib.suppress(EngineError):
                await work

        task = asyncio.get_running_loop().create_task(run())
        self.cleanups.add(task)
        task.add_done_callback(self.cleanups.discard)

    def forget_fault(self, fid: int) -> None:
        owner = self.fault_owner.pop(fid, None)
        self.fault_conn.pop(fid, None)
        if owner is not None:
            owner.faults.discard(fid)

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "listen": list(self.addresses),
            "auth": bool(c.token or c.admin_token),
            "limits": {
                "max_message_bytes": c.max_message_bytes,
                "max_in_flight": c.max_in_flight,
                "max_connections_per_client": c.max_connections_per_client,
                "max_listeners_per_client": MAX_LISTENERS_PER_CLIENT,
                "max_clients": c.max_clients,
            },
        }

    def rpc_stats(self) -> dict[str, Any]:
        return {"clients": len(self.sessions), "in_flight": sum(s.in_flight for s in self.sessions)}

    async def stop_accepting(self) -> None:
        """Close the listening sockets (new clients are refused); existing clients stay."""
        self.stopping = True
        servers, self.servers = self.servers, []
        for server in servers:
            server.close()
        for path in self.unix_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.unix_paths = []

    async def drain(self, deadline: float) -> int:
        """Stop reading requests, let those in flight finish within `deadline` seconds, cancel
        the rest (answered TIMEOUT), close every client. Returns how many were cancelled."""
        sessions = list(self.sessions)
        for session in sessions:
            if session.transport is not None and not session.closing:
                session.transport.pause_reading()
        tasks = [t for s in sessions for t in s.tasks]
        cancelled = 0
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            cancelled = len(pending)
            if pending:
                # let the cancellations run, so their clients get a TIMEOUT answer first
                await asyncio.wait(pending, timeout=1.0)
            if pending:
                # one short wait so the cancelled requests' TIMEOUT answers are queued
                await asyncio.wait(pending, timeout=min(1.0, deadline))
        for session in sessions:
            session.close()
        await asyncio.sleep(0)  # let the transports write what close() flushed
        if self.cleanups:
            await asyncio.wait(list(self.cleanups), timeout=deadline)
        return cancelled


def _remove_stale_socket(path: str) -> None:
    """A unix socket left by an earlier run is removed; any other file is left alone (bind then
    fails with a clear error instead of deleting something that is not ours)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(mode):
        os.unlink(path)


__all__ = ["RpcServer", "Session"]
