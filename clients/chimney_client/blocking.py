"""`Client`: a small blocking msgpack-RPC client for scripts (plain socket, one call at a time).

Same codec, wrappers and errors as the asyncio client. Notifications that arrive while a call
waits are appended to `notifications` and passed to handlers at once; `wait_notification()`
reads more while idle.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, NoReturn, Self

from .errors import CallTimeout, ConnectionLost, ProtocolError
from .protocol import (
    DEFAULT_ADDRESS,
    DEFAULT_MAX_FRAME,
    ClientCodec,
    Notification,
    Reply,
    connect_opts,
    fault_spec,
    parse_address,
)

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 10.0
SERVER_WAIT_MARGIN = 5.0
_RECV_SIZE = 256 * 1024

BlockingHandler = Callable[[list[Any]], None]


class _Slot:
    """Pending-map token of the one call in flight."""

    __slots__ = ("reply",)

    def __init__(self) -> None:
        self.reply: Reply[_Slot] | None = None


class Client:
    """Blocking client. `Client.connect(addr)`; every method blocks until its answer."""

    def __init__(
        self,
        sock: socket.socket,
        address: str = "",
        *,
        call_timeout: float | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self._sock = sock
        self.address = address
        self.call_timeout = call_timeout
        self._codec: ClientCodec[_Slot] = ClientCodec(max_frame)
        self._handlers: dict[str, list[BlockingHandler]] = {}
        self._lost: ConnectionLost | None = None
        #: every notification received, oldest first (the caller may clear it)
        self.notifications: list[Notification] = []

    @classmethod
    def connect(
        cls,
        address: str = DEFAULT_ADDRESS,
        *,
        timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        token: str | None = None,
        call_timeout: float | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> Self:
        target = parse_address(address)
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
        client = cls(sock, address, call_timeout=call_timeout, max_frame=max_frame)
        if token is not None:
            try:
                client.auth(token)
            except BaseException:
                client.close()
                raise
        return client

    def close(self) -> None:
        if self._lost is None:
            self._lost = ConnectionLost(f"connection to {self.address} closed")
        self._sock.close()

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
        """Send one request, wait for its answer; notifications meanwhile are collected."""
        if self._lost is not None:
            raise self._lost
        slot = _Slot()
        msgid, data = self._codec.request(method, params, slot)
        limit = self.call_timeout if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        try:
            self._sendall(data)
            while slot.reply is None:
                if not self._read(deadline):
                    raise CallTimeout(f"{method}: no response within {limit:g} s")
        finally:
            self._codec.forget(msgid)  # a late response is then dropped silently
        if slot.reply.error is not None:
            raise slot.reply.error
        return slot.reply.result

    def notify(self, method: str, *params: Any) -> None:
        if self._lost is not None:
            raise self._lost
        self._sendall(self._codec.notification(method, params))

    def on_notification(self, method: str, handler: BlockingHandler) -> Callable[[], None]:
        """Call `handler(params)` for each notification `method` (while any call reads)."""
        self._handlers.setdefault(method, []).append(handler)

        def remove() -> None:
            handlers = self._handlers.get(method, [])
            if handler in handlers:
                handlers.remove(handler)

        return remove

    def wait_notification(self, timeout: float | None = None) -> Notification | None:
        """Return the oldest collected notification not yet taken, reading up to `timeout`.

        Taken notifications leave `notifications`; None when nothing came in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.notifications:
            if self._lost is not None:
                raise self._lost
            if not self._read(deadline):
                return None
        return self.notifications.pop(0)

    def poll(self) -> None:
        """Read whatever already arrived (notifications) without blocking."""
        while self._lost is None and self._read(time.monotonic()):
            pass

    # ============================================================================================
    # socket
    # ============================================================================================
    def _sendall(self, data: bytes) -> None:
        try:
            self._sock.settimeout(None)
            self._sock.sendall(data)
        except OSError as exc:
            self._fail(f"send failed: {exc}")

    def _read(self, deadline: float | None) -> bool:
        """Read once and dispatch; False if the deadline passed with nothing read."""
        if deadline is None:
            self._sock.settimeout(None)
        else:
            left = deadline - time.monotonic()
            if left <= 0:
                self._sock.settimeout(0.0)
            else:
                self._sock.settimeout(left)
        try:
            data = self._sock.recv(_RECV_SIZE)
        except (TimeoutError, BlockingIOError):
            return False
        except OSError as exc:
            self._fail(f"receive failed: {exc}")
        if not data:
            self._fail("closed by the server")
        try:
            events = self._codec.receive(data)
        except ProtocolError as exc:
            self._fail(f"protocol error: {exc}")
        for event in events:
            if isinstance(event, Notification):
                self.notifications.append(event)
                for handler in list(self._handlers.get(event.method, ())):
                    try:
                        handler(event.params)
                    except Exception:
                        # A broken handler must not lose the replies decoded in this batch.
                        log.exception(
                            "chimney_client_notification_handler_failed: %s", event.method
                        )
            else:
                event.token.reply = event
        return True

    def _fail(self, why: str) -> NoReturn:
        if self._lost is None:
            self._lost = ConnectionLost(f"connection to {self.address} lost: {why}")
        self._codec.fail_all()
        self._sock.close()
        raise self._lost

    # ============================================================================================
    # contract v1 methods (rpc-contract.md), typed; same signatures as AsyncClient
    # ============================================================================================
    def _server_wait(self, timeout_ms: int | None) -> float | None:
        if timeout_ms is None or self.call_timeout is None:
            return None
        return max(self.call_timeout, timeout_ms / 1000 + SERVER_WAIT_MARGIN)

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
        return dict(self.call("tcp.listener_info", listener_id))

    def tcp_accept(self, listener_id: int, timeout_ms: int | None = None) -> int:
        params: list[Any] = [listener_id] if timeout_ms is None else [listener_id, timeout_ms]
        return int(self.call("tcp.accept", *params, timeout=self._server_wait(timeout_ms)))

    def tcp_offload(self, conn_id: int) -> dict[str, Any]:
        return dict(self.call("tcp.offload", conn_id))

    def tcp_upload(self, conn_id: int) -> dict[str, Any]:
        return dict(self.call("tcp.upload", conn_id))

    def tcp_send(self, conn_id: int, data: bytes | bytearray | memoryview) -> int:
        return int(self.call("tcp.send", conn_id, data))

    def tcp_recv(self, conn_id: int, max_bytes: int, timeout_ms: int | None = None) -> bytes:
        params: list[Any] = [conn_id, max_bytes]
        if timeout_ms is not None:
            params.append(timeout_ms)
        return bytes(self.call("tcp.recv", *params, timeout=self._server_wait(timeout_ms)))

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
