"""The msgpack-RPC server: one asyncio Protocol per client, requests answered out of order.

Per client: a decoder with the message-size limit, an in-flight limit (more requests get LIMIT),
ownership of the connections and listeners it made, its event subscriptions, and back-pressure
(a client that sends requests without reading responses is paused, never buffered without bound).
Responses made in one loop turn go out in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import inspect
import os
import uuid
from typing import Any

import structlog

from chimneyd.api import EngineAPI, EngineError, ErrorCode
from chimneyd.config import RpcConfig, parse_listen

from .codec import Decoder, Encoder, FrameError, Notification, Request
from .methods import METHODS, OPEN_METHODS, pos_int

log = structlog.get_logger("chimneyd.rpc")

WRITE_HIGH = 4 * 1024 * 1024  # pause reading a client whose unread responses pass this
WRITE_LOW = 1 * 1024 * 1024


class Session(asyncio.Protocol):
    """One RPC client."""

    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.engine: EngineAPI = server.engine
        cfg = server.config
        self.decoder = Decoder(cfg.max_message_bytes)
        self.encoder = Encoder()
        self.transport: Any = None
        self.peer = "?"
        self.authed = not cfg.token and not cfg.admin_token
        self.admin = False
        self.in_flight = 0
        self.tasks: set[asyncio.Task[Any]] = set()
        self.conns: set[int] = set()
        self.listeners: set[int] = set()
        self.faults: set[int] = set()
        self.unsubscribe: dict[int | None, Any] = {}
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.closing = False
        self.requests = 0

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        if len(self.server.sessions) >= self.server.config.max_clients:
            log.warning("rpc_client_refused", client=self.peer, reason="max_clients")
            transport.close()
            return
        with contextlib.suppress(Exception):
            transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)  # type: ignore[attr-defined]
        self.server.sessions.add(self)
        log.info("rpc_client_connected", client=self.peer)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            messages = self.decoder.feed(data)
        except FrameError as exc:
            log.warning("rpc_bad_frame", client=self.peer, reason=exc.reason)
            if exc.msgid is not None:
                self.respond(
                    exc.msgid,
                    [int(ErrorCode.INVALID_PARAMS), f"INVALID_PARAMS: {exc.reason}"],
                    None,
                )
            self.close()
            return
        for msg in messages:
            if isinstance(msg, Notification):
                log.info("rpc_notification_ignored", client=self.peer, method=msg.method[:64])
                continue
            self.dispatch(msg)

    def pause_writing(self) -> None:
        # the client is not reading its responses: stop reading its requests (back-pressure)
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.sessions.discard(self)
        for task in self.tasks:
            task.cancel()
        for unsubscribe in self.unsubscribe.values():
            unsubscribe()
        self.unsubscribe.clear()
        if self.conns or self.listeners:
            # connections of a client that went away are closed and freed (rpc-contract)
            task = asyncio.get_running_loop().create_task(
                self._release_all(set(self.conns), set(self.listeners))
            )
            self.server.cleanups.add(task)
            task.add_done_callback(self.server.cleanups.discard)
        log.info("rpc_client_disconnected", client=self.peer, requests=self.requests)

    async def _release_all(self, conns: set[int], listeners: set[int]) -> None:
        for lid in listeners:
            with contextlib.suppress(EngineError):
                await self.engine.close_listener(lid)
        results = await asyncio.gather(
            *(self.engine.close(c) for c in conns), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, Exception) and not isinstance(r, EngineError)]
        if failed:
            log.error(
                "rpc_client_cleanup_failed", client=self.peer, errors=[repr(f) for f in failed[:3]]
            )

    # -- requests ------------------------------------------------------------------------------
    def dispatch(self, req: Request) -> None:
        self.requests += 1
        fn = METHODS.get(req.method)
        if fn is None:
            name = req.method if len(req.method) <= 64 else req.method[:64] + "..."
            self.respond(
                req.msgid, [int(ErrorCode.NO_METHOD), f"NO_METHOD: unknown method {name!r}"], None
            )
            return
        if not self.authed and req.method not in OPEN_METHODS:
            self.respond(
                req.msgid, [int(ErrorCode.DENIED), "DENIED: authenticate first (auth)"], None
            )
            return
        if self.in_flight >= self.server.config.max_in_flight:
            limit = self.server.config.max_in_flight
            self.respond(
                req.msgid,
                [int(ErrorCode.LIMIT), f"LIMIT: more than {limit} requests in flight"],
                None,
            )
            return
        try:
            result = fn(self, req.params)
        except EngineError as err:
            self.respond(req.msgid, [int(err.code), err.message], None)
            return
        except Exception:
            self.internal(req)
            return
        if inspect.isawaitable(result):
            self.in_flight += 1
            task: asyncio.Task[Any] = asyncio.ensure_future(result)
            self.tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, req))
        else:
            self.respond(req.msgid, None, result)

    def _finished(self, req: Request, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        self.in_flight -= 1
        if task.cancelled():
            if not self.closing:
                self.respond(
                    req.msgid, [int(ErrorCode.TIMEOUT), "TIMEOUT: cancelled by shutdown"], None
                )
            return
        err = task.exception()
        if err is None:
            self.respond(req.msgid, None, task.result())
        elif isinstance(err, EngineError):
            self.respond(req.msgid, [int(err.code), err.message], None)
        else:
            self.internal(req, err)

    def internal(self, req: Request, err: BaseException | None = None) -> None:
        trace_id = uuid.uuid4().hex[:12]
        log.error(
            "rpc_internal_error",
            client=self.peer,
            method=req.method[:64],
            trace_id=trace_id,
            exc_info=err or True,
        )
        self.respond(
            req.msgid,
            [int(ErrorCode.INTERNAL), f"INTERNAL: a bug, logged as trace id {trace_id}"],
            None,
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
                msgid, [int(ErrorCode.INTERNAL), f"INTERNAL: trace id {trace_id}"], None
            )
        self.send(frame)

    def send(self, frame: bytes) -> None:
        self.out.append(frame)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(self.out)
        self.out = []

    def close(self) -> None:
        """Close after what is queued has been written."""
        self.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- ownership (used by methods) -----------------------------------------------------------
    def authenticate(self, token: str) -> None:
        cfg = self.server.config
        if cfg.admin_token and hmac.compare_digest(token.encode(), cfg.admin_token.encode()):
            self.authed = self.admin = True
        elif (cfg.token and hmac.compare_digest(token.encode(), cfg.token.encode())) or (
            not cfg.token and not cfg.admin_token
        ):
            self.authed = True
        else:
            raise EngineError(ErrorCode.DENIED, "bad token")

    def conn(self, value: Any, closed_ok: bool = False) -> int:
        conn = pos_int(value, "conn_id")
        if self.admin or conn in self.conns:
            return conn
        raise EngineError(ErrorCode.NOT_FOUND, f"no connection {conn}")

    def listener(self, value: Any) -> int:
        lid = pos_int(value, "listener_id")
        if self.admin or lid in self.listeners:
            return lid
        raise EngineError(ErrorCode.NOT_FOUND, f"no listener {lid}")

    def check_room(self) -> None:
        limit = self.server.config.max_connections_per_client
        if len(self.conns) >= limit:
            raise EngineError(ErrorCode.LIMIT, f"this client already has {limit} connections")

    def adopt(self, conn: int) -> None:
        if self.closing:
            # the client went away while the connection was being made: do not leak it
            task = asyncio.get_running_loop().create_task(self.engine.close(conn))
            self.server.cleanups.add(task)
            task.add_done_callback(self.server.cleanups.discard)
            return
        self.conns.add(conn)

    def release(self, conn: int) -> None:
        self.conns.discard(conn)

    def subscribe(self, conn: int | None) -> None:
        if conn in self.unsubscribe:
            return

        def on_event(conn_id: int, event: str, info: dict[str, Any]) -> None:
            if self.admin or conn_id in self.conns:
                self.send(self.encoder.notification("tcp.event", [conn_id, event, info]))

        self.unsubscribe[conn] = self.engine.subscribe(conn, on_event)


class RpcServer:
    """Listens on the configured addresses and serves `Session`s."""

    def __init__(self, engine: EngineAPI, config: RpcConfig) -> None:
        self.engine = engine
        self.config = config
        self.sessions: set[Session] = set()
        self.servers: list[asyncio.AbstractServer] = []
        self.addresses: list[str] = []
        self.cleanups: set[asyncio.Task[Any]] = set()

    async def start(self) -> list[str]:
        loop = asyncio.get_running_loop()
        for addr in self.config.listen:
            target = parse_listen(addr)
            if isinstance(target, str):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
                server = await loop.create_unix_server(lambda: Session(self), target, backlog=1024)
                self.addresses.append(f"unix:{target}")
            else:
                host, port = target
                server = await loop.create_server(
                    lambda: Session(self), host, port, backlog=1024, reuse_address=True
                )
                bound = server.sockets[0].getsockname()
                self.addresses.append(
                    f"{bound[0]}:{bound[1]}" if ":" not in bound[0] else f"[{bound[0]}]:{bound[1]}"
                )
            self.servers.append(server)
        return self.addresses

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "listen": list(self.addresses),
            "auth": bool(c.token or c.admin_token),
            "limits": {
                "max_message_bytes": c.max_message_bytes,
                "max_in_flight": c.max_in_flight,
                "max_connections_per_client": c.max_connections_per_client,
                "max_clients": c.max_clients,
            },
        }

    def rpc_stats(self) -> dict[str, Any]:
        return {"clients": len(self.sessions), "in_flight": sum(s.in_flight for s in self.sessions)}

    async def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()
        self.servers = []

    async def drain(self, deadline: float) -> int:
        """Let in-flight requests finish within `deadline` seconds, cancel the rest, close every
        client. Returns how many requests were cancelled."""
        tasks = [t for s in self.sessions for t in s.tasks]
        cancelled = 0
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=deadline)
            for task in pending:
                task.cancel()
            cancelled = len(pending)
        for session in list(self.sessions):
            session.flush()
            session.close()
        if self.cleanups:
            await asyncio.wait(list(self.cleanups), timeout=deadline)
        return cancelled


__all__ = ["RpcServer", "Session", "pos_int"]
