"""The asyncio shell of a control channel (`control.ControlCodec`): bytes in and out of the
socketpair, one timer for the earliest request deadline, one future per request.

`request` always returns: with the peer's answer, or an `Answer` marked `expired` when the
deadline passed or the channel closed. Requests from the peer run as tasks (a slow one holds up
no other) and are answered with their result or a contract error `[code, message]`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, cast

import structlog

from chimneyd.api import EngineError, ErrorCode

from .control import Answer, ControlCodec, ControlError, Notification, Request

log = structlog.get_logger("chimneyd.shards")

#: Events (for admins watching `"*"`) are not written to a peer that has this much unread:
#: they are dropped, and counted, until what it holds drains below a quarter of it. Both ends
#: forward them (shard → supervisor → the watching shards); a flood must neither grow the
#: writer's memory without bound nor make a slow peer look hung.
EVENTS_QUEUED_MAX = 8 * 1024 * 1024

RequestHandler = Callable[[str, list[Any]], Awaitable[Any] | Any]
NotificationHandler = Callable[[str, list[Any]], None]


class ControlLink(asyncio.Protocol):
    """One end of a control channel, as an asyncio Protocol."""

    def __init__(
        self,
        name: str,
        on_request: RequestHandler,
        on_notification: NotificationHandler,
        on_lost: Callable[[], None],
        *,
        max_queued: int = 0,
        on_overfull: Callable[[int], None] | None = None,
    ) -> None:
        """`on_overfull(queued)` is called once when what the peer has not read yet passes
        `max_queued` bytes (0: no bound)."""
        self.name = name
        self.codec = ControlCodec()
        self.on_request = on_request
        self.on_notification = on_notification
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.waiting: dict[int, asyncio.Future[Answer]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self.max_queued = max_queued
        self.on_overfull = on_overfull
        #: when the peer last sent anything (`loop.time()`): a shard reports every second. The
        #: supervisor's watch moves it to a moment it was held up itself (nobody's silence
        #: counts meanwhile); `reported` is only ever what the peer sent
        self.heard = self.reported = self.loop.time()

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.heard = self.reported = self.loop.time()
        try:
            messages = self.codec.feed(data)
        except ControlError as exc:
            log.error("control_bad_frame", link=self.name, error=str(exc))
            self.close()
            return
        for msg in messages:
            if isinstance(msg, Answer):
                self._settle(msg)
            elif isinstance(msg, Request):
                self._serve(msg)
            elif isinstance(msg, Notification):
                try:
                    self.on_notification(msg.method, msg.params)
                except Exception as exc:  # a bug on our side: log it, keep the channel
                    log.error(
                        "control_notification_failed",
                        link=self.name,
                        method=msg.method,
                        exc_info=exc,
                    )

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed and self.transport is None:
            return
        self.closed = True
        self.transport = None
        for answer in self.codec.close():
            self._settle(answer)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.on_lost()

    # -- asking ---------------------------------------------------------------------------------
    async def request(self, method: str, params: list[Any], timeout: float) -> Answer:
        """Ask the peer; the answer, or one marked `expired` after `timeout` seconds."""
        if self.closed or self.transport is None:
            return Answer(0, method, expired=True)
        frame = self.codec.request(method, params, self.loop.time(), timeout)
        msgid = self.codec.last_msgid
        fut: asyncio.Future[Answer] = self.loop.create_future()
        self.waiting[msgid] = fut
        self._write(frame)
        self._arm()
        try:
            return await fut
        finally:
            self.waiting.pop(msgid, None)

    def notify(self, method: str, params: list[Any]) -> None:
        if not self.closed and self.transport is not None:
            self._write(self.codec.notify(method, params))

    @property
    def queued(self) -> int:
        """Bytes written that the peer has not read yet (beyond what the kernel holds)."""
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def _write(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)
        if self.max_queued and self.on_overfull is not None:
            queued = self.transport.get_write_buffer_size()
            if queued > self.max_queued:
                overfull, self.on_overfull = self.on_overfull, None
                overfull(queued)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        else:
            self.closed = True

    def _settle(self, answer: Answer) -> None:
        fut = self.waiting.pop(answer.msgid, None)
        if fut is not None and not fut.done():
            fut.set_result(answer)

    def _arm(self) -> None:
        deadline = self.codec.next_deadline()
        if deadline is None or (self._armed_at is not None and self._armed_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._armed_at = deadline
        self._timer = self.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._armed_at = None
        for answer in self.codec.expire(self.loop.time()):
            self._settle(answer)
        self._arm()

    # -- answering ------------------------------------------------------------------------------
    def _serve(self, req: Request) -> None:
        task = self.loop.create_task(self._answer(req))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, req: Request) -> None:
        error: list[Any] | None = None
        result: Any = None
        try:
            result = self.on_request(req.method, req.params)
            if inspect.isawaitable(result):
                result = await result
        except EngineError as exc:
            error = [int(exc.code), exc.message]
        except Exception as exc:
            log.error("control_request_failed", link=self.name, method=req.method, exc_info=exc)
            error = [int(ErrorCode.INTERNAL), f"INTERNAL: {type(exc).__name__} in {req.method}"]
        if self.transport is None:
            return
        try:
            frame = self.codec.respond(req.msgid, error, result)
        except (TypeError, ValueError, OverflowError) as exc:
            log.error("control_unencodable", link=self.name, method=req.method, exc_info=exc)
            frame = self.codec.respond(
                req.msgid, [int(ErrorCode.INTERNAL), "INTERNAL: unencodable answer"], None
            )
        self._write(frame)


def answer_error(answer: Answer, who: str, timeout: float) -> EngineError:
    """The contract error for a request to `who` that did not succeed."""
    if answer.expired:
        return EngineError(ErrorCode.TIMEOUT, f"{who} did not answer within {timeout:g} s")
    err = answer.error or [int(ErrorCode.INTERNAL), "INTERNAL: no answer"]
    try:
        code = ErrorCode(int(err[0]))
    except (ValueError, TypeError):
        code = ErrorCode.INTERNAL
    message = str(err[1]) if len(err) > 1 else code.name
    detail = message.split(": ", 1)[1] if message.startswith(f"{code.name}: ") else message
    return EngineError(code, f"{who}: {detail}")


__all__ = [
    "EVENTS_QUEUED_MAX",
    "ControlLink",
    "NotificationHandler",
    "RequestHandler",
    "answer_error",
]
