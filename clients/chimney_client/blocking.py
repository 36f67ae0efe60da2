"""`Client`: a small blocking msgpack-RPC client for scripts (plain socket, one call at a time).

Same codec, wrappers and errors as the asyncio client. Notifications that arrive while a call
waits are appended to `notifications` (bounded: the oldest go past `max_notifications`) and
passed to handlers at once; `wait_notification()` reads more while idle. Threads may share a client: a lock runs their calls one at a time.
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, NoReturn, Self

from .errors import CallTimeout, ConnectionLost, ProtocolError
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

DEFAULT_CONNECT_TIMEOUT = 10.0
#: Notifications `Client.notifications` holds at most by default; past it the oldest go.
DEFAULT_MAX_NOTIFICATIONS = 10_000
_RECV_SIZE = 256 * 1024

BlockingHandler = Callable[[list[Any]], None]


class _Slot:
    """Pending-map token of the one call in flight."""

    __slots__ = ("reply",)

    def __init__(self) -> None:
        self.reply: Reply[_Slot] | None = None


class _Subscription:
    """One `on_notification` handler; `active` is False once unsubscribed, so that a dispatch
    already under way (walking a copy of the list) does not call it any more."""

    __slots__ = ("active", "handler")

    def __init__(self, handler: BlockingHandler) -> None:
        self.handler = handler
        self.active = True


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


class Client:
    """Blocking client. `Client.connect(addr)`; every method blocks until its answer.

    Thread-safe: a lock lets one call at a time use the connection (sending and reading its
    answer); a call that waits for the lock counts that wait against its timeout. `close()`
    does not wait for the lock, and wakes a call blocked in another thread.

    `call_timeout` bounds a whole call, its sending included. A request cut part-way by its
    timeout leaves half a frame on the wire: the call raises `CallTimeout` and the connection
    is closed (later calls raise `ConnectionLost`). Each failed call raises a fresh
    `ConnectionLost`, chained from the cause of the loss.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: str = "",
        *,
        call_timeout: float | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_notifications: int | None = DEFAULT_MAX_NOTIFICATIONS,
    ) -> None:
        self._sock = sock
        self.address = address
        self.call_timeout = call_timeout
        self._codec: ClientCodec[_Slot] = ClientCodec(max_frame)
        self._handlers: dict[str, list[_Subscription]] = {}
        # Reentrant: a notification handler may call while the call that read it holds it.
        self._lock = threading.RLock()
        #: why the connection is gone (a record: each failed call raises a fresh copy)
        self._lost: ConnectionLost | None = None
        self._lost_cause: BaseException | None = None
        #: the notifications received and not taken, oldest first (the caller may take from
        #: it or clear it); at most `max_notifications`: past it the oldest are dropped, so a
        #: client that only uses handlers does not grow without end
        self.notifications: list[Notification] = []
        #: the bound of `notifications` (None: none)
        self.max_notifications = max_notifications
        #: notifications dropped from `notifications` by its bound (handlers still had them)
        self.dropped_notifications = 0

    @classmethod
    def connect(
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
        bounds `notifications` (None: no bound).
        """
        target = parse_address(address)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if isinstance(target, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(target)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(target, timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {address}: {exc}") from exc
        client = cls(
            sock,
            address,
            call_timeout=call_timeout,
            max_frame=max_frame,
            max_notifications=max_notifications,
        )
        if token is not None:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            # The connect timeout bounds auth too; a shorter call_timeout still applies.
            by_connect = left is not None and (call_timeout is None or left < call_timeout)
            try:
                client.call("auth", token, timeout=left if by_connect else None)
            except BaseException as exc:
                client.close()
                if by_connect and isinstance(exc, CallTimeout):
                    raise ConnectionLost(
                        f"cannot connect to {address}: timed out waiting for auth"
                    ) from exc
                raise
        return client

    def close(self) -> None:
        """Close the connection. Idempotent; callable from any thread (a call blocked in
        another thread then raises `ConnectionLost`)."""
        if self._lost is None:
            self._lost = ConnectionLost(f"connection to {self.address} closed")
        self._shut()

    @property
    def closed(self) -> bool:
        return self._lost is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ============================================================================================
    # calls and notifications
    # ============================================================================================
    def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """Send one request, wait for its answer; notifications meanwhile are collected.

        `timeout` (seconds) overrides `call_timeout` and bounds the whole call: waiting for
        another thread's call, sending, and waiting for the answer. A call that waits in the
        daemon (`tcp.recv`, `tcp.accept`) is timed by the daemon, as in `AsyncClient.call`.
        A call interrupted while it waits (Ctrl-C, an exception from a signal handler or a
        notification handler) is abandoned: what its `tcp.recv` (`tcp.accept`) gets, even an
        answer read before the interrupt, is kept for the next call of the connection
        (listener), as in `AsyncClient`.
        """
        limit = self.call_timeout if timeout is None else timeout
        wait = None
        sent: list[Any] | tuple[Any, ...] = params
        if limit is not None and method in SERVER_WAIT_PARAM:
            wait = server_wait(method, params, limit)
            sent, limit = wait.params, wait.limit
        deadline = None if limit is None else time.monotonic() + limit
        self._acquire(method, limit)
        try:
            if self._lost is not None:
                raise self._gone()
            kept = self._codec.kept_answer(method, sent) if method in SERVER_WAIT_PARAM else None
            if kept is not None:
                return kept  # what a read or accept abandoned earlier got (it timed out)
            slot = _Slot()
            msgid, data = self._codec.request(method, sent, slot)
            try:
                try:
                    if data:  # nothing: a read served by an abandoned read in the daemon
                        self._send(data, deadline, method, limit)
                except BaseException:
                    # not written (CallTimeout; Ctrl-C while the daemon did not read; part of
                    # it written: the connection is gone): no answer will come for it. Not
                    # forgotten as an abandoned call, or the next read (accept) with no
                    # timeout would ride on it and wait for ever (`ClientCodec._ride`)
                    self._codec.withdraw(msgid)
                    raise
                while slot.reply is None:
                    # A stream of notifications must not keep a call alive past its deadline.
                    if not self._read(deadline) or (slot.reply is None and _expired(deadline)):
                        raise CallTimeout(f"{method}: no response within {limit:g} s")
            except BaseException:
                if slot.reply is not None and slot.reply.error is None:
                    # answered, then interrupted (Ctrl-C, a handler that raised) before its
                    # caller got it: a read's bytes (an accept's connection) are kept for the
                    # next read of the connection, as an abandoned read's are
                    self._codec.late(slot.reply)
                raise
            finally:
                # a late response is then dropped (a read's bytes kept for the next read)
                self._codec.forget(msgid)
                # what forget (late) answers is for calls this thread made further out (a
                # handler's call runs inside the call that read its notification): their
                # slots get it, as `_read` gives them
                if ready := self._codec.take_ready():
                    self._deliver(ready)
        finally:
            self._lock.release()
        error = slot.reply.error
        if error is not None:
            if wait is not None and wait.is_call_timeout(error):
                raise CallTimeout(f"{method}: no response within the call timeout ({error})") from (
                    error
                )
            raise error
        return slot.reply.result

    def notify(self, method: str, *params: Any) -> None:
        """Send a notification; `call_timeout` bounds the sending."""
        limit = self.call_timeout
        deadline = None if limit is None else time.monotonic() + limit
        self._acquire(method, limit)
        try:
            if self._lost is not None:
                raise self._gone()
            self._send(self._codec.notification(method, params), deadline, method, limit)
        finally:
            self._lock.release()

    def _acquire(self, method: str, limit: float | None) -> None:
        if not self._lock.acquire(timeout=-1 if limit is None else max(limit, 0.0)):
            raise CallTimeout(f"{method}: not sent within {limit:g} s (another call was running)")

    def on_notification(self, method: str, handler: BlockingHandler) -> Callable[[], None]:
        """Call `handler(params)` for each notification `method` (while any call reads).

        Handlers run inside the call that read the notification, in its thread, before it
        returns; they may call on this client (a `tcp.recv` of the running call's connection
        gets its own answer, after that call's bytes in the stream). The returned function
        unsubscribes: the handler is not called again, not even for the notification whose
        handlers are running."""
        sub = _Subscription(handler)
        self._handlers.setdefault(method, []).append(sub)

        def remove() -> None:
            subs = self._handlers.get(method, [])
            if sub in subs:
                subs.remove(sub)
            sub.active = False  # not called again, even by a dispatch under way (`_read`)

        return remove

    def wait_notification(self, timeout: float | None = None) -> Notification | None:
        """Return the oldest collected notification not yet taken, reading up to `timeout`.

        Taken notifications leave `notifications`; None when nothing came in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return None  # another thread's call held the client all the time
        try:
            while not self.notifications:
                if self._lost is not None:
                    raise self._gone()
                # Bytes that are no notification (late responses) must not extend the wait.
                if not self._read(deadline) or (not self.notifications and _expired(deadline)):
                    return None
            return self.notifications.pop(0)
        finally:
            self._lock.release()

    def poll(self) -> None:
        """Read whatever already arrived (notifications) without blocking: what the socket
        held when it was called, so a stream that keeps coming does not keep it reading."""
        with self._lock:
            if self._lost is not None:
                return
            try:
                held = struct.unpack("i", fcntl.ioctl(self._sock, termios.FIONREAD, b"\0" * 4))[0]
            except OSError:
                held = _RECV_SIZE  # no count from this socket: one read's worth
            reads = held // _RECV_SIZE + 1  # a read takes at most _RECV_SIZE
            while reads and self._lost is None and self._read(time.monotonic()):
                reads -= 1

    # ============================================================================================
    # socket
    # ============================================================================================
    def _settimeout(self, deadline: float | None) -> None:
        self._sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), 0.0))

    def _send(self, data: bytes, deadline: float | None, method: str, limit: float | None) -> None:
        """Send one frame by `deadline`. Nothing sent by then: `CallTimeout`, the connection
        stays usable; part of it sent: the stream is broken, the connection is closed."""
        view = memoryview(data)
        sent = 0
        try:
            while sent < len(view):
                self._settimeout(deadline)
                sent += self._sock.send(view[sent:])
        except (TimeoutError, BlockingIOError) as exc:
            if not sent:
                raise CallTimeout(
                    f"{method}: not sent within {limit:g} s (the server is not reading)"
                ) from None
            self._lose(
                f"{method} was cut part-way by its timeout ({sent} of {len(view)} bytes)", exc
            )
            raise CallTimeout(
                f"{method}: not sent within {limit:g} s; connection closed: the request was "
                f"cut part-way"
            ) from None
        except OSError as exc:
            self._fail(f"send failed: {exc}", exc)
        except BaseException as exc:
            if sent:  # e.g. KeyboardInterrupt between two sends: half a frame is on the wire
                self._lose(f"{method} was cut part-way ({sent} of {len(view)} bytes)", exc)
            raise

    def _read(self, deadline: float | None) -> bool:
        """Read once and dispatch; False if the deadline passed with nothing read."""
        try:
            self._settimeout(deadline)  # raises too once another thread closed the socket
            data = self._sock.recv(_RECV_SIZE)
        except (TimeoutError, BlockingIOError):
            return False
        except OSError as exc:
            self._fail(f"receive failed: {exc}", exc)
        if not data:
            self._fail("closed by the server", None)
        try:
            events = self._codec.receive(data)
        except ProtocolError as exc:
            # The codec left every call of the bad chunk pending: `_fail` fails them all.
            self._fail(f"protocol error: {exc}", exc)
        notes: list[Notification] = []
        replies: list[Reply[_Slot]] = []
        for event in events:
            # every reply reaches its slot before any handler runs: a handler interrupted
            # (Ctrl-C) must not lose an answer decoded with its notification (`call` keeps it)
            if isinstance(event, Notification):
                self.notifications.append(event)
                notes.append(event)
            else:
                replies.append(event)
        if replies:
            self._deliver(replies)
        bound = self.max_notifications
        if bound is not None and (excess := len(self.notifications) - bound) > 0:
            self._drop_notifications(excess)
        for note in notes:
            for sub in list(self._handlers.get(note.method, ())):
                if not sub.active:
                    continue  # unsubscribed by a handler before it in this dispatch
                try:
                    sub.handler(note.params)
                except Exception:
                    # A broken handler must not stop the others (its replies are in already).
                    log.exception("chimney_client_notification_handler_failed: %s", note.method)
        return True

    def _deliver(self, replies: list[Reply[_Slot]]) -> None:
        """Hand `replies` to their slots. Each caller then has its answer: it returns with
        it, running nothing but the handlers of this read (`_read`) and the calls they make.
        A read of the same connection that a handler makes (or that a call further out
        made, answered in the same chunk) must not wait behind those bytes
        (`ClientCodec.taken`): their caller is this thread, which would wait for its whole
        timeout, for ever with none. What that frees is handed out in turn."""
        while replies:
            for reply in replies:
                reply.token.reply = reply
                self._codec.taken(reply.msgid)
            replies = self._codec.take_ready()

    def _drop_notifications(self, excess: int) -> None:
        """`notifications` went past its bound: the oldest go (counted; logged once)."""
        if not self.dropped_notifications:
            log.warning(
                "chimney_client_notifications_dropped: more than %d not taken from "
                "Client.notifications; the oldest are dropped (dropped_notifications)",
                self.max_notifications,
            )
        del self.notifications[:excess]
        self.dropped_notifications += excess

    def _lose(self, why: str, cause: BaseException | None) -> None:
        """The connection is gone: the first reason stays, pending calls are dropped."""
        if self._lost is None:
            self._lost = ConnectionLost(f"connection to {self.address} lost: {why}")
            self._lost_cause = cause
        self._codec.fail_all()
        self._shut()

    def _fail(self, why: str, cause: BaseException | None) -> NoReturn:
        self._lose(why, cause)
        raise self._gone()

    def _gone(self) -> ConnectionLost:
        """A fresh `ConnectionLost` for one failed call: re-raising one stored instance would
        grow its traceback with every raise and share it between threads."""
        err = ConnectionLost(str(self._lost))
        err.__cause__ = self._lost_cause
        return err

    def _shut(self) -> None:
        # shutdown() before close(): it wakes a recv blocked in another thread, close() alone
        # does not.
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected any more
        self._sock.close()

    # ============================================================================================
    # contract v1 methods (rpc-contract.md), typed; same signatures as AsyncClient
    # ============================================================================================
    def ping(self) -> str:
        return str(self.call("ping"))

    def auth(self, token: str) -> bool:
        return bool(self.call("auth", token))

    def stack_info(self) -> dict[str, Any]:
        return dict(self.call("stack.info"))

    def stack_stats(self) -> dict[str, Any]:
        return dict(self.call("stack.stats"))

    def tcp_connect(
        self, host: str, port: int, offload: bool = True, target: str | None = None
    ) -> int:
        opts = connect_opts(offload, target)
        params: list[Any] = [host, port, opts] if opts else [host, port]
        return int(self.call("tcp.connect", *params))

    def tcp_listen(self, host: str, port: int = 0, offload: bool = True) -> int:
        opts = connect_opts(offload, None)
        params: list[Any] = [host, port, opts] if opts else [host, port]
        return int(self.call("tcp.listen", *params))

    def tcp_listener_info(self, listener_id: int) -> dict[str, Any]:
        """`host`, `port` and `pending`: the accepted connections waiting for `tcp_accept`, the
        daemon's count plus those this client keeps from accepts it abandoned (cancelled, or
        its own limit), which the next `tcp_accept`s return first."""
        return dict(self.call("tcp.listener_info", listener_id))

    def tcp_accept(self, listener_id: int, timeout_ms: int | None = None) -> int:
        """The next accepted connection; timed like `tcp_recv` (a timeout loses none)."""
        params = [listener_id] if timeout_ms is None else [listener_id, timeout_ms]
        return int(self.call("tcp.accept", *params))

    def tcp_offload(self, conn_id: int) -> dict[str, Any]:
        return dict(self.call("tcp.offload", conn_id))

    def tcp_upload(self, conn_id: int) -> dict[str, Any]:
        return dict(self.call("tcp.upload", conn_id))

    def tcp_send(self, conn_id: int, data: bytes | bytearray | memoryview) -> int:
        return int(self.call("tcp.send", conn_id, data))

    def tcp_recv(
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
        return bytes(self.call("tcp.recv", *recv_params(conn_id, max_bytes, timeout_ms, waitall)))

    def tcp_disconnect(self, conn_id: int, abortive: bool = False) -> str:
        params: list[Any] = [conn_id, True] if abortive else [conn_id]
        return str(self.call("tcp.disconnect", *params))

    def tcp_close(self, conn_id: int) -> bool:
        return bool(self.call("tcp.close", conn_id))

    def tcp_info(self, conn_id: int) -> dict[str, Any]:
        return dict(self.call("tcp.info", conn_id))

    def tcp_list(self) -> list[int]:
        return list(self.call("tcp.list"))

    def trace_get(self, conn_id: int, limit: int | None = None) -> list[dict[str, Any]]:
        params: list[Any] = [conn_id] if limit is None else [conn_id, limit]
        return list(self.call("trace.get", *params))

    def events_subscribe(self, target: int | str = "*") -> bool:
        return bool(self.call("events.subscribe", target))

    def fault_inject(self, kind: str, **keys: Any) -> int:
        return int(self.call("fault.inject", fault_spec(kind, keys)))

    def fault_clear(self, fault_id: int | str = "*") -> bool:
        return bool(self.call("fault.clear", fault_id))

    def fault_list(self, used: bool = False) -> list[dict[str, Any]]:
        """The active faults; `used`: those that ran their course too, each with `active`,
        a raise_next with `raised` (what each bug it planted hit), a fail_next with `failed`
        (the connections of each call it failed)."""
        if used:
            return list(self.call("fault.list", {"used": True}))
        return list(self.call("fault.list"))
