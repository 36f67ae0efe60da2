"""One RPC client: an asyncio Protocol that decodes requests, runs them and writes the answers.

- Frames: a `Decoder` with the message-size limit; a bad frame gets a best-effort error (when its
  msgid is known) and closes this client only. Bytes of an unfinished frame count against the
  server's `FrameBudget` and must complete within `frame_timeout_s`.
- Requests: a plain `def` method is answered at once, with no task; an `async def` one runs as a
  task counted against `max_in_flight` (one more gets LIMIT at once, chosen over pausing reads
  so a client always learns why, and cheap methods keep answering while slow ones wait).
  The daemon-wide methods of a daemon of several shards (`sharded.DAEMON_WIDE_METHODS`) answer
  at once in one process; sharded they wait for the other shards, but are not counted: they
  have a small bound of their own (`DAEMON_WIDE_IN_FLIGHT`), so a client whose slots are all
  held (a `delay` fault) can still clear the fault, and `stack.stats` does not count itself.
  Whatever a method raises becomes one error answer (`errors.for_exception`); the client, the
  other requests and the daemon go on.
- Back-pressure: when the client leaves its answers unread and the transport's buffer passes
  `WRITE_HIGH`, reading it is paused until the buffer drains below `WRITE_LOW`; past
  `hard_write_limit` (event notifications keep coming) it is dropped.
- Auth: `max_auth_failures` wrong tokens on one connection close it (after the DENIED answer).
- Leaving: in-flight requests are cancelled and everything it holds is released (`Ownership.leave`)
  and closed through the engine.
Answers made in one loop turn go out in one write.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable
from types import CoroutineType
from typing import Any, Final, Protocol, cast

import structlog

from chimneyd.api import ClusterAPI, EngineAPI, EngineError, ErrorCode
from chimneyd.config import RpcConfig
from chimneyd.observe import metrics

from . import errors
from .auth import Authenticator, Role
from .codec import (
    BIN_LIMIT,
    OUT_OF_LINE,
    RESPONSE,
    Decoder,
    Encoder,
    Notification,
    ProtocolError,
    bytes_response_head,
)
from .deadlines import ClientClock
from .frame_budget import FrameBudget
from .methods import FUTURE_METHODS, OPEN_METHODS, Method, conn_param
from .ownership import Departure, Ownership
from .sharded import DAEMON_WIDE_IN_FLIGHT
from .sharded import DAEMON_WIDE_METHODS as _SHARDED_WIDE_METHODS

log = structlog.get_logger("chimneyd.rpc")
# what methods answer at once: a result of another class may be a coroutine of the compiled
# build (mypyc makes each coroutine its own class, not CoroutineType)
_ANSWERS: Final = frozenset({dict, list, tuple, int, str, bytes, bool, float, type(None)})
# read once here, not through their modules on every request
_Future: Final = asyncio.Future
_partial: Final = functools.partial
# mypyc reads a name imported from an interpreted module through this module's dict, a Final
# constant as a C value: two tests of every request
DAEMON_WIDE_METHODS: Final = _SHARDED_WIDE_METHODS

WRITE_HIGH = 4 * 1024 * 1024  # pause reading a client whose unread answers pass this
WRITE_LOW = 1 * 1024 * 1024  # and resume once they drain below this
HARD_WRITE_FLOOR = 64 * 1024 * 1024  # a client not reading past this many bytes is dropped


class Server(Protocol):
    """What a session needs of the server that accepted it."""

    engine: EngineAPI
    config: RpcConfig
    ownership: Ownership
    auth: Authenticator
    budget: FrameBudget[Session]
    stopping: bool
    now: Callable[[], float]
    methods: dict[str, Method]
    cluster: ClusterAPI | None

    def admit(self, session: Session) -> bool: ...

    def loud_client(self) -> bool: ...

    def left(self, session: Session) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def rpc_stats(self) -> dict[str, Any]: ...

    def background(self, work: Awaitable[Any]) -> None: ...


class Session(asyncio.Protocol):
    """One RPC client (implements `caller.Caller` for the methods)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.engine: EngineAPI = server.engine
        self.config: RpcConfig = server.config
        # read on every request: a native field (the config is frozen; an attribute of it is a
        # generic read on the compiled build)
        self.max_in_flight: int = self.config.max_in_flight
        self.ownership: Ownership = server.ownership
        self.cluster: ClusterAPI | None = server.cluster
        self.methods = server.methods
        self.holdings = server.ownership.join()
        self.decoder = Decoder(self.config.max_message_bytes)
        self.encoder = Encoder()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.peer_host = "?"  # the address auth failures are counted against
        self.authed = not server.auth.required
        self.auth_failures = 0
        self.in_flight = 0
        self.wide_in_flight = 0  # daemon-wide requests of a shard waiting for the others
        self.tasks: set[asyncio.Future[Any]] = set()
        self.context = contextvars.copy_context()  # the client's, named once connected
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.serving = False  # in `_serve`: its answers are written when it ends
        self.closing = False
        self.hangup = False  # close once the answer being made is queued
        self.accepted = False
        # its connect and departure lines at info (else debug: one of a burst, `ClientLines`)
        self.loud = False
        self.paused = False  # by us: its answers are not being read
        self.requests = 0
        # requests answered at once while serving a read, and how long each took, for the
        # latency histograms when they are on (`metrics.rpc_requests`, once per read)
        self.timings: list[tuple[str, float]] = []
        self.partial = 0  # bytes of an unfinished frame held
        self._now = server.now
        now = self._now()
        self.clock = ClientClock(connected_at=now, last_heard=now)
        self.hard_write_limit = max(HARD_WRITE_FLOOR, 8 * self.config.max_message_bytes)

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer, self.peer_host = f"{peer[0]}:{peer[1]}", str(peer[0])
        else:
            self.peer = self.peer_host = "unix"
        if not self.server.admit(self):
            self.closing = True
            self.transport.abort()
            return
        self.accepted = True
        self.context.run(structlog.contextvars.bind_contextvars, client=self.peer)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        self.loud = self.server.loud_client()
        (log.info if self.loud else log.debug)("rpc_client_connected", client=self.peer)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.clock.last_heard = self._now()
        # requests run in the client's own context: their log lines, and those of the tasks
        # they start (which copy it), name the client. One context made at connection, entered
        # per read: binding and unbinding the name per read cost 3% of the daemon under pings
        self.context.run(self._serve, data)

    def _serve(self, data: bytes) -> None:
        # answers made while serving this read go out in one write at its end, as soon as
        # it is served, not a loop turn later (`send`)
        self.serving = True
        try:
            for msg in self.decoder.feed_raw(data):
                if type(msg) is list:  # a request [0, msgid, method, params], types checked
                    self.dispatch(msg[1], msg[2], msg[3])
                    if self.hangup:
                        self.close()
                        return
                elif isinstance(msg, Notification):
                    log.info("rpc_notification_ignored", method=errors.short(msg.method))
                else:
                    self.bad_frame(msg)  # type: ignore[arg-type]
                    return
        finally:
            self.serving = False
            if self.out:
                self.flush()
            # the latency histograms after the answers are written: their bookkeeping runs
            # while the client reads them, not before it gets them
            if self.timings:
                metrics.rpc_requests(self.timings)
                self.timings = []
        partial = self.decoder.partial
        if partial != self.partial:
            self._hold(partial)

    def _hold(self, partial: int) -> None:
        """The unfinished frame now holds `partial` bytes: start or stop its clock, and keep
        the daemon within its frame budget."""
        if not partial:
            self.clock.partial_since = None
        elif not self.partial and not self.paused:
            self.clock.partial_since = self._now()
        self.partial = partial
        for victim in self.server.budget.set(self, partial):
            victim.drop("rpc_frame_budget_exceeded", held=victim.partial)

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
            self.respond(err.msgid, errors.envelope(code, err.reason), None)
        self.close()

    def pause_writing(self) -> None:
        # the client is not reading its answers: stop reading its requests (back-pressure),
        # and stop its frame clock (it cannot finish a frame we do not read)
        if self.transport is not None and not self.closing:
            log.debug("rpc_client_paused", buffered=self.transport.get_write_buffer_size())
            self.paused = True
            self.clock.partial_since = None
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closing:
            self.paused = False
            if self.server.stopping:
                # the drain stopped reading every client: a request read now would come after
                # the drain took stock of what runs, and go unanswered when it closes us
                return
            if self.partial:
                self.clock.partial_since = self._now()
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.out = []
        if not self.accepted:
            return
        self.server.left(self)
        for task in self.tasks:
            task.cancel()
        departure = self.ownership.leave(self.holdings)
        for unsubscribe in departure.unsubscribes:
            unsubscribe()
        if departure:
            self.server.background(self._release(departure))
        else:
            self.engine.give_back_when_idle()  # what this client's session held goes now
        # one that ended in an error is worth its line, whatever the rate of clients
        (log.info if self.loud or exc is not None else log.debug)(
            "rpc_client_disconnected",
            client=self.peer,
            requests=self.requests,
            conns_closed=len(departure.conns),
            error=str(exc) if exc else None,
        )

    async def _release(self, departure: Departure) -> None:
        """Close and clear what a client that left held."""
        for fid in departure.faults_to_clear:
            try:
                self.engine.fault_clear(fid)
            except EngineError:
                pass  # already gone
            self.ownership.forget_fault(fid)
        for lid in departure.listeners:
            try:
                await self.engine.close_listener(lid)
            except EngineError:
                pass
        results = await asyncio.gather(
            *(self.engine.close(c) for c in departure.conns), return_exceptions=True
        )
        failed = [
            r for r in results if isinstance(r, BaseException) and not isinstance(r, EngineError)
        ]
        if failed:
            log.error(
                "rpc_client_cleanup_failed", client=self.peer, errors=[repr(f) for f in failed[:3]]
            )

    def drop(self, event: str, **details: Any) -> None:
        """Close at once, dropping unsent answers (a limit or a deadline, not a goodbye);
        `event` names why in the log."""
        if self.closing:
            return
        log.warning(event, client=self.peer, **details)
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # -- requests ------------------------------------------------------------------------------
    def dispatch(self, msgid: int, method: str, params: list[Any]) -> None:
        """One request, as decoded (no object per request: `Decoder.feed_raw`)."""
        self.requests += 1
        # DENIED before NO_METHOD: an unauthenticated client learns nothing about the method table
        if not self.authed and method not in OPEN_METHODS:
            self.respond(
                msgid, errors.envelope(ErrorCode.DENIED, "authenticate first (auth)"), None
            )
            return
        fn = self.methods.get(method)
        if fn is None:
            detail = f"unknown method {errors.short(method)!r}"
            self.respond(msgid, errors.envelope(ErrorCode.NO_METHOD, detail), None)
            return
        limit = self.max_in_flight
        if self.in_flight >= limit and method in FUTURE_METHODS:
            self._over_limit(msgid, limit)  # before it starts anything in the engine
            return
        timed = metrics.recording
        t0 = time.perf_counter() if timed else 0.0
        try:
            result = fn(self, params)
        except Exception as exc:
            self.respond(msgid, self._error(method, params, exc), None)
            return
        # a method returns the answer, a future of it, or a coroutine (`async def`); type
        # checks, not `isawaitable`, whose Awaitable ABC check cost 7% of the daemon's time.
        # An answer first: most requests get one at once, and a future is not tested twice
        cls = type(result)
        task: asyncio.Future[Any] | None = None  # stays None for an answer made at once
        if cls not in _ANSWERS:
            if isinstance(result, _Future):
                task = result
            elif cls is CoroutineType or asyncio.iscoroutine(result):  # compiled: own class
                if method in DAEMON_WIDE_METHODS:
                    if self.wide_in_flight >= DAEMON_WIDE_IN_FLIGHT:
                        result.close()  # never ran: nothing was asked of any shard
                        self._over_limit(msgid, DAEMON_WIDE_IN_FLIGHT, " daemon-wide")
                        return
                elif self.in_flight >= limit:
                    result.close()  # the coroutine never ran: nothing happened in the engine
                    self._over_limit(msgid, limit)
                    return
                task = asyncio.ensure_future(result)
        if task is None:
            if timed:  # answered at once: counted at the end of the read
                self.timings.append((method, time.perf_counter() - t0))
            self.respond(msgid, None, result)
            return
        if method in DAEMON_WIDE_METHODS:
            self.wide_in_flight += 1
        else:
            self.in_flight += 1
        self.tasks.add(task)
        # the callback runs in the client's context, as the request did (`data_received`): the
        # same values a copy made here would hold, without making the copy per request
        if timed:  # timed by the callback that answers it: no callback of its own per request
            task.add_done_callback(
                _partial(self._finished_timed, msgid, method, params, t0), context=self.context
            )
        else:
            task.add_done_callback(
                _partial(self._finished, msgid, method, params), context=self.context
            )

    def _over_limit(self, msgid: int, limit: int, kind: str = "") -> None:
        detail = f"more than {limit}{kind} requests in flight"
        self.respond(msgid, errors.envelope(ErrorCode.LIMIT, detail), None)

    def _finished_timed(
        self, msgid: int, method: str, params: list[Any], t0: float, task: asyncio.Future[Any]
    ) -> None:
        self._finished(msgid, method, params, task)
        metrics.rpc_answered(method, time.perf_counter() - t0)

    def _finished(
        self, msgid: int, method: str, params: list[Any], task: asyncio.Future[Any]
    ) -> None:
        self.tasks.discard(task)
        if method in DAEMON_WIDE_METHODS:
            self.wide_in_flight -= 1
        else:
            self.in_flight -= 1
        # `exception()` raises CancelledError for a cancelled future (and only for one: a
        # CancelledError the engine set as the future's exception is returned, as before), so
        # an answer costs no `cancelled()` call first
        try:
            err = task.exception()
        except asyncio.CancelledError:
            if self.server.stopping:
                detail = "cancelled: the daemon is stopping"
                self.respond(msgid, errors.envelope(ErrorCode.TIMEOUT, detail), None)
            elif not self.closing:
                # nobody here cancelled it: a cancellation escaped the engine
                error = self._error(
                    method, params, asyncio.CancelledError("cancelled inside the engine")
                )
                self.respond(msgid, error, None)
            return
        if err is None:
            self.respond(msgid, None, task.result())
        else:
            self.respond(msgid, self._error(method, params, err), None)

    def _error(self, method: str, params: list[Any], exc: BaseException) -> errors.Envelope:
        return errors.for_exception(exc, method, conn_param(method, params), self.peer)

    def respond(self, msgid: int, error: list[Any] | None, result: Any) -> None:
        if self.closing or self.transport is None:
            return
        # `Encoder.response` and `send` written out: every answer passes here (ping: 1 in 3 of
        # the calls a request costs)
        if type(result) is bytes and OUT_OF_LINE <= len(result) < BIN_LIMIT and error is None:
            # data read (tcp.recv): its head, then the bytes themselves, written as they are
            self.out += (bytes_response_head(msgid, len(result)), result)
        else:
            pack = self.encoder.pack
            try:
                frame = pack([RESPONSE, msgid, error, result])
            except (TypeError, ValueError, OverflowError) as exc:
                error = errors.internal(exc, "?", client=self.peer, what="rpc_unencodable_result")
                frame = pack([RESPONSE, msgid, error, None])
            self.out.append(frame)
        if not self.flush_scheduled and not self.serving:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def send(self, frame: bytes) -> None:
        if self.closing:
            return
        self.out.append(frame)
        if not self.flush_scheduled and not self.serving:
            # one write per loop turn for every answer and notification made in it
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        out, self.out = self.out, []
        transport = self.transport
        if not out or transport is None or transport.is_closing():
            return
        transport.writelines(out)
        buffered = transport.get_write_buffer_size()
        if buffered > self.hard_write_limit:
            self.drop("rpc_client_not_reading", buffered=buffered, limit=self.hard_write_limit)

    def close(self) -> None:
        """Close after what is queued has been written."""
        if self.closing:
            return
        self.flush()
        self.closing = True
        transport = self.transport
        if transport is not None:
            if self.server.stopping and transport.can_write_eof():
                # the drain stopped reading: requests the client sent since lie unread, and
                # closing over them resets the connection, which makes many clients drop the
                # answers they have not read yet. The end of our stream (FIN) goes first, after
                # the answers, so the client reads them all and then sees the end
                transport.write_eof()
            transport.close()

    # -- what methods see (caller.Caller) --------------------------------------------------------
    def authenticate(self, token: str) -> None:
        try:
            role = self.server.auth.verify(self.peer_host, token)
        except EngineError:
            self.auth_failures += 1
            log.warning("rpc_auth_failed", client=self.peer, failures=self.auth_failures)
            if self.auth_failures >= self.config.max_auth_failures:
                self.hangup = True  # after this DENIED answer: no more guesses on this one
            raise
        self.authed = True
        if role is Role.ADMIN:
            self.holdings.admin = True

    def subscribe(self, conn: int | None) -> None:
        h = self.holdings
        if self.ownership.subscribed(h, conn):
            return
        sees = self.ownership.sees
        engine = self.engine

        def listener_of(conn_id: int) -> int | None:
            """The listener `conn_id` was accepted on (None: it was not, or it is gone)."""
            try:
                lid = engine.conn_info(conn_id).get("listener")
            except EngineError:
                return None
            return lid if type(lid) is int else None

        def deliver(conn_id: int, event: str, info: dict[str, Any]) -> None:
            try:
                frame = self.encoder.notification("tcp.event", [conn_id, event, info])
            except (TypeError, ValueError, OverflowError) as exc:
                # the engine's bug; the call that raised the event must not fail with it
                errors.internal(exc, "tcp.event", conn_id, self.peer, "rpc_unencodable_event")
                return
            self.send(frame)

        def on_event(conn_id: int, event: str, info: dict[str, Any]) -> None:
            if conn is None:
                # "*" hears the connections accepted on this client's listeners too, from
                # their first event (an `offloaded` before `tcp.accept` takes them)
                if not self.closing and sees(h, conn_id, listener_of):
                    deliver(conn_id, event, info)
                if event == "closed":
                    self.ownership.forget_heard(h, conn_id)
                return
            # the engine calls every subscription an event matches: while this client also
            # has "*", that one delivers it, so the client gets each event once
            if not self.closing and None not in h.subscriptions and sees(h, conn_id):
                deliver(conn_id, event, info)
            if event == "closed":
                # the engine ends a connection's subscriptions with it; this client's entry
                # goes too, whoever closed it, or the client never holds nothing again (and
                # its idle timeout never applies)
                self.ownership.subscription_ended(h, conn)

        cluster = self.cluster
        if cluster is None or conn is not None or not h.admin:
            self.ownership.add_subscription(h, conn, self.engine.subscribe(conn, on_event))
            return
        # an admin's "*" on a daemon of several shards: every shard's events, each saying
        # which shard it comes from (design: scale)
        shard = cluster.index

        def on_local(conn_id: int, event: str, info: dict[str, Any]) -> None:
            if not self.closing:
                deliver(conn_id, event, {**info, "shard": shard})

        def on_remote(from_shard: int, conn_id: int, event: str, info: dict[str, Any]) -> None:
            if not self.closing:
                deliver(conn_id, event, {**info, "shard": from_shard})

        local = self.engine.subscribe(None, on_local)
        remote = cluster.watch(on_remote)

        def unsubscribe() -> None:
            local()
            remote()

        self.ownership.add_subscription(h, None, unsubscribe)

    def describe_rpc(self) -> dict[str, Any]:
        return self.server.describe()

    def rpc_stats(self) -> dict[str, Any]:
        return self.server.rpc_stats()

    def background(self, work: Awaitable[Any]) -> None:
        self.server.background(work)


__all__ = ["HARD_WRITE_FLOOR", "WRITE_HIGH", "WRITE_LOW", "Server", "Session"]
