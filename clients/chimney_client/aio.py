"""`AsyncClient`: the asyncio msgpack-RPC client (pipelining, per-call timeouts, notifications).

A thin shell over `protocol.ClientCodec`: an asyncio Protocol moves bytes (no Streams on the
data path, perf-notes), writes made in one loop iteration go out as one `writelines`, and a
connection loss fails every pending call with `ConnectionLost`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self

from .errors import CallTimeout, ConnectionLost, ProtocolError, RpcTimeout
from .protocol import (
    DEFAULT_ADDRESS,
    DEFAULT_MAX_FRAME,
    SERVER_WAIT_PARAM,
    ClientCodec,
    Notification,
    Reply,
    connect_opts,
    fault_spec,
    parse_address,
    recv_params,
    server_wait,
)

log = logging.getLogger(__name__)

#: Connect timeout when none is given (seconds).
DEFAULT_CONNECT_TIMEOUT = 10.0
#: How long `close()` lets the daemon read what is still queued before aborting (seconds).
DEFAULT_CLOSE_TIMEOUT = 1.0
#: Notification bytes queued in one loop turn past which they are written at once (asyncio's
#: default high-water mark), so that the transport's pause is seen by `notify()`.
FLUSH_AT = 64 * 1024
#: Notifications that wait for one coroutine handler at most by default (`max_notifications`);
#: past it the oldest are dropped. The blocking client's `notifications` has the same default.
DEFAULT_MAX_NOTIFICATIONS = 10_000

NotificationHandler = Callable[[list[Any]], Awaitable[None] | None]
TcpEventHandler = Callable[[int, str, dict[str, Any]], Awaitable[None] | None]


class _Subscription:
    """One `on_notification` handler and the notifications waiting for it: while a coroutine
    it returned runs, the next notifications wait here, in order (`AsyncClient._run`)."""

    __slots__ = ("active", "handler", "task", "waiting")

    def __init__(self, handler: NotificationHandler) -> None:
        self.handler = handler
        self.waiting: deque[list[Any]] = deque()
        self.task: asyncio.Task[None] | None = None
        #: False once unsubscribed: what waits is dropped, nothing more is handled
        self.active = True


class _RpcProtocol(asyncio.Protocol):
    """Moves bytes between the transport and the client; nothing else."""

    __slots__ = ("_client",)

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._client._transport_ready(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._client._data_received(data)

    def eof_received(self) -> bool:
        return False  # the server hung up: close our side too, connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._client._connection_lost(exc)

    def pause_writing(self) -> None:
        self._client._pause_writing()

    def resume_writing(self) -> None:
        self._client._resume_writing()


def _expire(fut: asyncio.Future[Any], method: str, limit: float) -> None:
    """A call's time is up: it raises `CallTimeout` (unless its answer came first)."""
    if not fut.done():
        fut.set_exception(CallTimeout(f"{method}: no response within {limit:g} s"))


#: Cleared entries `_Deadlines` lets wait behind a call still running before it compacts.
_COMPACT_AT = 256


class _Deadlines:
    """The timeouts of one client's calls on one loop timer, not a timer per call.

    A `call_later` armed and cancelled per call cost ~4 µs under uvloop, two per verified echo
    round (issue 15). Calls made with the same time left have their deadlines in the order
    made, so each such group is a FIFO, and the one timer is armed at the earliest deadline of
    all. A call that ends clears its entry (which then holds no future: nor an answer's bytes);
    cleared entries leave their FIFO from its head, or all at once when more of them wait
    behind running calls than `_COMPACT_AT` plus twice the running ones (bounded memory).
    """

    __slots__ = ("_at", "_entries", "_handle", "_live", "_loop", "_queues")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        #: time left at the call -> its entries, [deadline, future or None, method, limit, key]
        self._queues: dict[float, deque[list[Any]]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf  # when `_handle` fires
        self._live = 0  # entries not cleared
        self._entries = 0  # entries in `_queues`, cleared ones too

    def add(self, left: float, fut: asyncio.Future[Any], method: str, limit: float) -> list[Any]:
        """`fut` raises `CallTimeout` in `left` seconds unless it is done or cleared first."""
        deadline = self._loop.time() + left
        entry = [deadline, fut, method, limit, left]
        queue = self._queues.get(left)
        if queue is None:
            queue = self._queues[left] = deque()
        queue.append(entry)
        self._live += 1
        self._entries += 1
        if deadline < self._at:
            self._arm(deadline)
        return entry

    def clear(self, entry: list[Any]) -> None:
        """The call of `entry` ended: no timeout for it, and its future is let go."""
        if entry[1] is None:
            return  # expired already
        entry[1] = None
        self._live -= 1
        if not self._live:
            # every entry is cleared; the timer stays armed (it finds nothing when it fires):
            # calls one after another arm it once per limit, not once each
            self._queues.clear()
            self._entries = 0
            return
        queue = self._queues[entry[4]]
        while queue and queue[0][1] is None:
            queue.popleft()
            self._entries -= 1
        if not queue:
            del self._queues[entry[4]]
        elif self._entries > _COMPACT_AT + 2 * self._live:
            self._compact()

    def close(self) -> None:
        """The connection is gone (every call failed): no timer keeps the client alive."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._at = math.inf

    def _compact(self) -> None:
        for key, queue in list(self._queues.items()):
            kept = deque(e for e in queue if e[1] is not None)
            if kept:
                self._queues[key] = kept
            else:
                del self._queues[key]
        self._entries = self._live

    def _arm(self, deadline: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = deadline
        self._handle = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        # Due: the deadlines the timer was armed for, though uvloop (which counts timers in
        # whole milliseconds) may run it a little before them by `loop.time()`, as it would a
        # timer of their own; a later one only once the clock reaches it. No slack on top: a
        # call whose time is not up would raise CallTimeout and lose an answer coming then.
        due = max(self._loop.time(), self._at)
        self._handle = None
        self._at = math.inf
        first = math.inf
        for key, queue in list(self._queues.items()):
            while queue and (queue[0][1] is None or queue[0][0] <= due):
                _deadline, fut, method, limit, _left = entry = queue.popleft()
                self._entries -= 1
                if fut is not None:
                    entry[1] = None
                    self._live -= 1
                    _expire(fut, method, limit)
            if queue:
                first = min(first, queue[0][0])
            else:
                del self._queues[key]
        if first < math.inf:
            self._arm(first)


class AsyncClient:
    """One msgpack-RPC connection to chimneyd. Create with `await AsyncClient.connect(...)`.

    Every call ends: with its answer, `CallTimeout` (its timeout, including time spent waiting
    for a daemon that does not read), or `ConnectionLost` (each failed call gets its own
    instance, chained from the cause of the loss).
    """

    def __init__(
        self,
        *,
        call_timeout: float | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_notifications: int | None = DEFAULT_MAX_NOTIFICATIONS,
    ):
        self.call_timeout = call_timeout
        #: how many notifications may wait for one coroutine handler (None: no bound)
        self.max_notifications = max_notifications
        #: notifications dropped by that bound, oldest first (the handler never got them)
        self.dropped_notifications = 0
        self._loop = asyncio.get_running_loop()
        self._codec: ClientCodec[asyncio.Future[Any]] = ClientCodec(max_frame)
        self._deadlines = _Deadlines(self._loop)
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        #: bytes of notifications in `_out` (requests are few: each waits for its answer)
        self._out_bytes = 0
        self._flush_scheduled = False
        self._write_paused: asyncio.Future[None] | None = None
        self._handlers: dict[str, list[_Subscription]] = {}
        self._handler_tasks: set[asyncio.Task[None]] = set()
        #: why the connection is gone (a record: each failed call raises a fresh copy)
        self._lost: ConnectionLost | None = None
        self._lost_cause: BaseException | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self.address = ""

    # ============================================================================================
    # lifecycle
    # ============================================================================================
    @classmethod
    async def connect(
        cls,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        token: str | None = None,
        call_timeout: float | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_notifications: int | None = DEFAULT_MAX_NOTIFICATIONS,
    ) -> Self:
        """Connect to `"host:port"` or `"unix:/path"`; send `auth` first when `token` is given.

        `timeout` covers the whole handshake, `auth` included (`ConnectionLost` when it runs
        out). `call_timeout` is the default per-call timeout (None: wait as long as the server
        takes); `tcp_recv`/`tcp_accept` without `timeout_ms` pass it to the daemon as their
        `timeout_ms`, so that a timeout loses no data (see `tcp_recv`). `max_notifications`
        bounds the notifications waiting for one coroutine handler (`on_notification`; None:
        no bound).
        """
        client = cls(
            call_timeout=call_timeout, max_frame=max_frame, max_notifications=max_notifications
        )
        client.address = address
        target = parse_address(address)
        loop = client._loop
        deadline = None if timeout is None else loop.time() + timeout
        try:
            async with asyncio.timeout(timeout):
                if isinstance(target, str):
                    await loop.create_unix_connection(lambda: _RpcProtocol(client), target)
                else:
                    await loop.create_connection(lambda: _RpcProtocol(client), *target)
        except TimeoutError:
            raise ConnectionLost(f"cannot connect to {address}: timed out") from None
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {address}: {exc}") from exc
        if token is not None:
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            # The connect timeout bounds auth too; a shorter call_timeout still applies.
            by_connect = left is not None and (call_timeout is None or left < call_timeout)
            try:
                await client.call("auth", token, timeout=left if by_connect else None)
            except BaseException as exc:
                await client.close()
                if by_connect and isinstance(exc, CallTimeout):
                    raise ConnectionLost(
                        f"cannot connect to {address}: timed out waiting for auth"
                    ) from exc
                raise
        return client

    def _transport_ready(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small requests must not wait for Nagle; batching is done by us, per iteration.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self, timeout: float | None = DEFAULT_CLOSE_TIMEOUT) -> None:
        """Close the connection; pending calls fail with `ConnectionLost` at once. Idempotent.

        What is queued (notifications, abandoned requests) is still written; if the daemon has
        not read it within `timeout` seconds (it stopped reading), the connection is aborted.
        """
        if self._transport is not None and not self._closed.done():
            self._flush()
            self._mark_lost(f"connection to {self.address or 'server'} closed", None)
            self._transport.close()
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._closed)
            except TimeoutError:
                # asyncio's close() waits for the write buffer to drain, forever if the daemon
                # does not read: drop what is left instead.
                log.warning("chimney_client_close_aborted: %s did not read", self.address)
                self._transport.abort()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the connection is gone (closed by us or lost); handler tasks are ended."""
        await asyncio.shield(self._closed)
        tasks = list(self._handler_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def closed(self) -> bool:
        return self._lost is not None

    @property
    def pending(self) -> int:
        """Calls sent and not yet answered."""
        return self._codec.pending

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # ============================================================================================
    # calls and notifications
    # ============================================================================================
    async def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Send one request and wait for its result (raises the `RpcError` subclass on error).

        `timeout` (seconds) overrides the client's `call_timeout`; on expiry `CallTimeout` is
        raised and the late response is dropped when it arrives. Many calls may be in flight.
        A call that waits in the daemon (`tcp.recv`, `tcp.accept`) is timed by the daemon
        (`protocol.server_wait`): its timeout goes as `timeout_ms` when the params have none,
        and the daemon's TIMEOUT answer to it raises `CallTimeout`, with no byte lost. A
        `tcp.recv` abandoned all the same (cancelled, or the daemon did not answer in time)
        still takes bytes in the daemon: the client keeps them for the next `tcp.recv` of the
        connection (`ClientCodec.before_read`).
        """
        if self._lost is not None:
            raise self._gone()
        limit = self.call_timeout if timeout is None else timeout
        if limit is not None and limit != limit:
            # NaN is before no deadline and after none: kept, the call would never time out
            raise ValueError(f"{method}: the call's timeout is NaN")
        wait = None
        sent: list[Any] | tuple[Any, ...] = params
        if method in SERVER_WAIT_PARAM:
            if limit is not None:
                wait = server_wait(method, params, limit)
                sent, limit = wait.params, wait.limit
            kept = self._codec.kept_answer(method, sent)
            if kept is not None:
                return kept  # what a read or accept abandoned earlier got (timed out, cancelled)
        left = limit
        if self._write_paused is not None:
            left = await self._writable(method, limit)
        fut: asyncio.Future[Any] = self._loop.create_future()
        msgid, data = self._codec.request(method, sent, fut)
        if data:  # nothing: a read served by an abandoned read still in the daemon
            self._queue(data)
        # A deadline on the future, not `asyncio.timeout`: that one reschedules and uncancels
        # the task on every call, and was a sixth of this client's time under load; and on the
        # client's one timer, not a `call_later` per call (`_Deadlines`).
        timer = None
        if limit is not None and left is not None:
            timer = self._deadlines.add(left, fut, method, limit)
        try:
            return await fut
        except RpcTimeout as exc:
            if wait is None or not wait.is_call_timeout(exc):
                raise
            raise CallTimeout(f"{method}: no response within the call timeout ({exc})") from exc
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                # cancelled after its answer came, before it ran again: a read's bytes are
                # kept for the next read, not lost with it
                self._codec.late(Reply(msgid, fut, None, fut.result()))
            raise
        finally:
            # Timed out or cancelled: stop waiting; a late response is then dropped silently.
            if timer is not None:
                self._deadlines.clear(timer)
            self._codec.forget(msgid)
            # reads of the connection that waited behind this one, answered from what is kept
            if ready := self._codec.take_ready():
                self._deliver(ready)

    async def _writable(self, method: str, limit: float | None) -> float | None:
        """Wait while the transport's buffer is above its high-water mark (memory stays
        bounded). The wait counts against the call's timeout: returns the time left of it."""
        start = self._loop.time()
        while (paused := self._write_paused) is not None:
            if limit is None:
                await asyncio.shield(paused)
            else:
                try:
                    async with asyncio.timeout(limit - (self._loop.time() - start)):
                        await asyncio.shield(paused)
                except TimeoutError:
                    # Nothing of this request was written: the connection stays usable.
                    raise CallTimeout(
                        f"{method}: not sent within {limit:g} s (the server is not reading)"
                    ) from None
            if self._lost is not None:
                raise self._gone()
        return None if limit is None else max(limit - (self._loop.time() - start), 0.0)

    def notify(self, method: str, *params: Any) -> asyncio.Future[None]:
        """Send a notification (no response ever comes); it is queued at once.

        Returns a future that is done once the write buffer is below its high-water mark:
        `await c.notify(...)` in a loop waits while the daemon does not read, as `call()`
        does, where a flood of notifications not awaited would fill memory. It fails with
        `ConnectionLost` if the connection goes while it waits. Not awaiting it is fine.
        """
        if self._lost is not None:
            raise self._gone()
        data = self._codec.notification(method, params)
        self._queue(data)
        self._out_bytes += len(data)
        if self._out_bytes >= FLUSH_AT:
            # A loop of awaited notifies need not yield (a done future): write now, so that
            # the transport can pause us before a loop turn would.
            self._flush()
        done: asyncio.Future[None] = self._loop.create_future()
        paused = self._write_paused
        if paused is None:
            done.set_result(None)
        else:
            paused.add_done_callback(lambda _: self._notify_sent(done))
        return done

    def _notify_sent(self, done: asyncio.Future[None]) -> None:
        """The write buffer drained (or the connection went): wake a waiting notify."""
        if done.done():
            return  # cancelled by its caller
        if self._lost is not None:
            done.set_exception(self._gone())
            # retrieved here so an unawaited notify logs nothing; an awaiting caller still gets it
            done.exception()
        elif (paused := self._write_paused) is not None:
            paused.add_done_callback(lambda _: self._notify_sent(done))  # paused again already
        else:
            done.set_result(None)

    def on_notification(self, method: str, handler: NotificationHandler) -> Callable[[], None]:
        """Call `handler(params)` for every notification `method`; returns an unsubscriber.

        A plain handler is called as each notification is read. A coroutine handler (one that
        returns an awaitable) runs on one task per subscription, one notification at a time,
        in the order they came: the notifications that come while it runs wait, at most
        `max_notifications` of them; past it the oldest waiting are dropped (counted in
        `dropped_notifications`, logged once), so a slow handler under a flood of events
        holds bounded memory and no task per notification. The connection's reading never
        waits for a handler (it may await calls on this client). A handler that wants to
        handle notifications concurrently starts its own tasks. A handler's exception is
        logged, never fatal; unsubscribing drops what waits for it.
        """
        sub = _Subscription(handler)
        self._handlers.setdefault(method, []).append(sub)

        def remove() -> None:
            subs = self._handlers.get(method, [])
            if sub in subs:
                subs.remove(sub)
            sub.active = False
            sub.waiting.clear()

        return remove

    def on_tcp_event(self, handler: TcpEventHandler) -> Callable[[], None]:
        """`handler(conn_id, event, info)` for every `tcp.event` notification."""

        def unpack(params: list[Any]) -> Awaitable[None] | None:
            conn_id, event, info = [*params, None, None, None][:3]
            return handler(conn_id, event, info if isinstance(info, dict) else {})

        return self.on_notification("tcp.event", unpack)

    # ============================================================================================
    # transport callbacks
    # ============================================================================================
    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            # Every call made in this loop iteration leaves in one write.
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._out_bytes = 0
        if self._out and self._transport is not None and not self._transport.is_closing():
            out, self._out = self._out, []
            self._transport.writelines(out)

    def _pause_writing(self) -> None:
        if self._write_paused is None:
            self._write_paused = self._loop.create_future()

    def _resume_writing(self) -> None:
        waiter, self._write_paused = self._write_paused, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _data_received(self, data: bytes) -> None:
        try:
            events = self._codec.receive(data)
        except ProtocolError as exc:
            log.warning("chimney_client_protocol_error: %s", exc)
            # The codec left every call of the bad chunk pending: all fail here.
            self._mark_lost(f"protocol error from {self.address}: {exc}", exc)
            if self._transport is not None:
                self._transport.abort()
            return
        for event in events:
            if isinstance(event, Notification):
                self._dispatch(event)
                continue
            fut = event.token
            if fut.done():
                self._deliver((event,))  # its caller gave up: back to the codec
            elif event.error is not None:
                fut.set_exception(event.error)
            else:
                fut.set_result(event.result)

    def _deliver(self, replies: Sequence[Reply[asyncio.Future[Any]]]) -> None:
        """Wake the callers of `replies`; one whose caller gave up (timed out, cancelled)
        before it ran again goes back to the codec: a read's bytes are kept for the next read,
        which may be answered with them at once."""
        while replies:
            for event in replies:
                if not event.token.done():
                    if event.error is not None:
                        event.token.set_exception(event.error)
                    else:
                        event.token.set_result(event.result)
                else:
                    self._codec.late(event)
            replies = self._codec.take_ready()

    def _dispatch(self, note: Notification) -> None:
        subs = self._handlers.get(note.method)
        if not subs:
            return  # unknown notifications are ignored (contract)
        for sub in list(subs):
            if not sub.active:
                continue  # unsubscribed by a handler before it in this dispatch
            if sub.task is not None:
                self._hold(sub, note.params)  # its coroutine runs: this one waits behind it
                continue
            try:
                result = sub.handler(note.params)
            except Exception:
                log.exception("chimney_client_notification_handler_failed: %s", note.method)
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(self._run(sub, note.method, result))
                sub.task = task
                self._handler_tasks.add(task)
                task.add_done_callback(functools.partial(self._handler_done, first=result))

    def _hold(self, sub: _Subscription, params: list[Any]) -> None:
        """`params` wait for `sub`'s coroutine; past `max_notifications` the oldest go."""
        sub.waiting.append(params)
        bound = self.max_notifications
        if bound is not None and (excess := len(sub.waiting) - bound) > 0:
            if not self.dropped_notifications:
                log.warning(
                    "chimney_client_notifications_dropped: more than %d wait for a coroutine "
                    "handler; the oldest are dropped (dropped_notifications)",
                    bound,
                )
            for _ in range(excess):
                sub.waiting.popleft()
            self.dropped_notifications += excess

    async def _run(self, sub: _Subscription, method: str, first: Awaitable[None] | None) -> None:
        """Await `sub`'s coroutine, then handle what waited for it, in order, one at a time."""
        try:
            result = first
            while True:
                if result is not None and inspect.isawaitable(result):
                    try:
                        await result
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if task is None or task.cancelling():
                            raise  # this task is cancelled (`wait_closed`)
                        # the handler's own (it awaited something cancelled): a failure of
                        # the handler, not the end of what waits behind it
                        log.exception("chimney_client_notification_handler_failed: %s", method)
                    except Exception:
                        log.exception("chimney_client_notification_handler_failed: %s", method)
                if not sub.waiting or not sub.active:
                    return
                try:
                    result = sub.handler(sub.waiting.popleft())
                except Exception:
                    log.exception("chimney_client_notification_handler_failed: %s", method)
                    result = None
        finally:
            sub.task = None

    def _handler_done(self, task: asyncio.Task[None], first: Awaitable[None] | None = None) -> None:
        self._handler_tasks.discard(task)
        if inspect.iscoroutine(first) and inspect.getcoroutinestate(first) == inspect.CORO_CREATED:
            first.close()  # cancelled before it ran (`wait_closed`): no "never awaited" warning
        if not task.cancelled() and task.exception() is not None:
            log.error("chimney_client_notification_handler_failed", exc_info=task.exception())

    def _connection_lost(self, exc: Exception | None) -> None:
        why = f": {exc}" if exc is not None else ""
        self._mark_lost(f"connection to {self.address or 'server'} lost{why}", exc)
        self._out.clear()
        self._out_bytes = 0
        self._deadlines.close()
        if not self._closed.done():
            self._closed.set_result(None)

    def _mark_lost(self, why: str, cause: BaseException | None) -> None:
        """The connection is gone (or going): the first reason stays; every pending call fails
        now, and calls waiting for the write buffer wake up to fail."""
        if self._lost is None:
            self._lost = ConnectionLost(why)
            self._lost_cause = cause
        for fut in self._codec.fail_all():
            if not fut.done():
                fut.set_exception(self._gone())
        self._resume_writing()

    def _gone(self) -> ConnectionLost:
        """A fresh `ConnectionLost` for one failed call: re-raising one stored instance would
        grow its traceback with every raise and share it between tasks."""
        err = ConnectionLost(str(self._lost))
        err.__cause__ = self._lost_cause
        return err

    # ============================================================================================
    # contract v1 methods (rpc-contract.md), typed
    # ============================================================================================
    async def ping(self) -> str:
        return str(await self.call("ping"))

    async def auth(self, token: str) -> bool:
        return bool(await self.call("auth", token))

    async def stack_info(self) -> dict[str, Any]:
        return dict(await self.call("stack.info"))

    async def stack_stats(self) -> dict[str, Any]:
        return dict(await self.call("stack.stats"))

    async def tcp_connect(
        self, host: str, port: int, offload: bool = True, target: str | None = None
    ) -> int:
        opts = connect_opts(offload, target)
        params: list[Any] = [host, port, opts] if opts else [host, port]
        return int(await self.call("tcp.connect", *params))

    async def tcp_listen(self, host: str, port: int = 0, offload: bool = True) -> int:
        opts = connect_opts(offload, None)
        params: list[Any] = [host, port, opts] if opts else [host, port]
        return int(await self.call("tcp.listen", *params))

    async def tcp_listener_info(self, listener_id: int) -> dict[str, Any]:
        """`host`, `port` and `pending`: the accepted connections waiting for `tcp_accept`, the
        daemon's count plus those this client keeps from accepts it abandoned (cancelled, or
        its own limit), which the next `tcp_accept`s return first."""
        return dict(await self.call("tcp.listener_info", listener_id))

    async def tcp_accept(self, listener_id: int, timeout_ms: int | None = None) -> int:
        """The next accepted connection; timed like `tcp_recv` (a timeout loses none)."""
        params = [listener_id] if timeout_ms is None else [listener_id, timeout_ms]
        return int(await self.call("tcp.accept", *params))

    async def tcp_offload(self, conn_id: int) -> dict[str, Any]:
        return dict(await self.call("tcp.offload", conn_id))

    async def tcp_upload(self, conn_id: int) -> dict[str, Any]:
        return dict(await self.call("tcp.upload", conn_id))

    async def tcp_send(self, conn_id: int, data: bytes | bytearray | memoryview) -> int:
        return int(await self.call("tcp.send", conn_id, data))

    async def tcp_recv(
        self,
        conn_id: int,
        max_bytes: int,
        timeout_ms: int | None = None,
        *,
        waitall: bool = False,
    ) -> bytes:
        """Up to `max_bytes` bytes (empty at end of stream); `RpcTimeout` after `timeout_ms`.

        Without `timeout_ms` on a client with `call_timeout`, the daemon is sent `call_timeout`
        as `timeout_ms` and its TIMEOUT answer raises `CallTimeout`: the daemon times out
        itself and keeps later bytes for the next call. The client's own limit is
        `protocol.SERVER_WAIT_MARGIN` above any server-side wait; a `call_timeout` over the
        daemon's longest wait (an hour) is the client's own limit alone. A read the client
        abandons all the same (cancelled, or its own limit) stays queued in the daemon: what
        it gets is kept and handed to the next reads of the connection, in stream order.

        `waitall`: exactly `max_bytes` bytes (fewer only at the end of stream, docs/rpc.md
        `tcp.recv` opts); one that times out short leaves what it saw to the next read.
        """
        return bytes(
            await self.call("tcp.recv", *recv_params(conn_id, max_bytes, timeout_ms, waitall))
        )

    async def tcp_disconnect(self, conn_id: int, abortive: bool = False) -> str:
        params: list[Any] = [conn_id, True] if abortive else [conn_id]
        return str(await self.call("tcp.disconnect", *params))

    async def tcp_close(self, conn_id: int) -> bool:
        return bool(await self.call("tcp.close", conn_id))

    async def tcp_info(self, conn_id: int) -> dict[str, Any]:
        return dict(await self.call("tcp.info", conn_id))

    async def tcp_list(self) -> list[int]:
        return list(await self.call("tcp.list"))

    async def trace_get(self, conn_id: int, limit: int | None = None) -> list[dict[str, Any]]:
        params: list[Any] = [conn_id] if limit is None else [conn_id, limit]
        return list(await self.call("trace.get", *params))

    async def events_subscribe(self, target: int | str = "*") -> bool:
        """Subscribe to `tcp.event` for one connection or `"*"`; see `on_tcp_event`."""
        return bool(await self.call("events.subscribe", target))

    async def fault_inject(self, kind: str, **keys: Any) -> int:
        """E.g. `await c.fault_inject("peer_reset", conn=3)`; returns the fault id."""
        return int(await self.call("fault.inject", fault_spec(kind, keys)))

    async def fault_clear(self, fault_id: int | str = "*") -> bool:
        return bool(await self.call("fault.clear", fault_id))

    async def fault_list(self, used: bool = False) -> list[dict[str, Any]]:
        """The active faults; `used`: those that ran their course too, each with `active`,
        a raise_next with `raised` (what each bug it planted hit), a fail_next with `failed`
        (the connections of each call it failed)."""
        if used:
            return list(await self.call("fault.list", {"used": True}))
        return list(await self.call("fault.list"))
