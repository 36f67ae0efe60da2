"""The control channel between the supervisor and a shard, sans-IO: bytes in, messages out;
requests out with a deadline each, so that no request is ever left unanswered.

Frames are msgpack-RPC shaped (`[0, msgid, method, params]`, `[1, msgid, error, result]`,
`[2, method, params]`) over a unix socketpair; both ends may ask. Both ends are our own
processes, so a frame that is not of that shape is a bug: it raises `ControlError` and the
shell drops the channel (a shard is then restarted, a supervisor gone makes the shard stop).

A request's answer is one of `Answer`'s three outcomes: the result, the peer's error (a contract
`[code, message]`), or `expired` when the deadline passed first (`expire(now)`) or the channel
closed (`close()`). An answer that comes after its deadline is dropped.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import msgpack

from chimneyd.rpc.codec import Notification, Request  # the same shapes as the RPC port's

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2
#: A control frame is small (stats of one shard, a fault spec, an event); a larger one is a bug.
MAX_FRAME = 64 * 1024 * 1024


class ControlError(Exception):
    """The peer sent something that is not a control frame: drop the channel."""


@dataclass(slots=True)
class Answer:
    """The outcome of one of our requests: `error` is None on success; `expired` when it
    never came in time (or the channel closed)."""

    msgid: int
    method: str
    error: list[Any] | None = None
    result: Any = None
    expired: bool = False


Incoming = Request | Notification | Answer


class ControlCodec:
    """One end of a control channel."""

    __slots__ = ("_deadlines", "_next", "_pending", "_unpacker")

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, max_buffer_size=MAX_FRAME
        )
        self._next = 0
        self._pending: dict[int, str] = {}  # msgid → method, until answered or expired
        self._deadlines: list[tuple[float, int]] = []  # heap of (deadline, msgid)

    # -- out ------------------------------------------------------------------------------------
    def request(self, method: str, params: list[Any], now: float, timeout: float) -> bytes:
        """A request frame; its answer comes out of `feed`, or of `expire` after `timeout`."""
        self._next = (self._next + 1) & 0xFFFFFFFF
        msgid = self._next
        self._pending[msgid] = method
        heapq.heappush(self._deadlines, (now + timeout, msgid))
        return _pack([REQUEST, msgid, method, params])

    @property
    def last_msgid(self) -> int:
        """The msgid of the request `request` made last."""
        return self._next

    @staticmethod
    def respond(msgid: int, error: list[Any] | None, result: Any) -> bytes:
        return _pack([RESPONSE, msgid, error, result])

    @staticmethod
    def notify(method: str, params: list[Any]) -> bytes:
        return _pack([NOTIFICATION, method, params])

    # -- in -------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Incoming]:
        """The messages `data` completes. Raises `ControlError` on a frame of no known shape."""
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise ControlError(f"a control frame is larger than {MAX_FRAME} bytes") from None
        out: list[Incoming] = []
        for obj in self._unpacker:
            msg = self._parse(obj)
            if msg is not None:
                out.append(msg)
        return out

    def _parse(self, obj: Any) -> Incoming | None:
        if isinstance(obj, list) and obj and type(obj[0]) is int:
            kind = obj[0]
            if kind == REQUEST and len(obj) == 4 and isinstance(obj[2], str):
                return Request(obj[1], obj[2], list(obj[3] or []))
            if kind == NOTIFICATION and len(obj) == 3 and isinstance(obj[1], str):
                return Notification(obj[1], list(obj[2] or []))
            if kind == RESPONSE and len(obj) == 4:
                method = self._pending.pop(obj[1], None)
                if method is None:
                    return None  # expired already: whoever asked has had its answer
                return Answer(obj[1], method, obj[2], obj[3])
        raise ControlError(f"not a control frame: {str(obj)[:80]}")

    # -- time -----------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When `expire` next has something to do (None: nothing is pending)."""
        while self._deadlines and self._deadlines[0][1] not in self._pending:
            heapq.heappop(self._deadlines)  # answered in time
        return self._deadlines[0][0] if self._deadlines else None

    def expire(self, now: float) -> list[Answer]:
        """Requests whose deadline has passed, answered `expired` (their late answers will be
        dropped)."""
        out: list[Answer] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, msgid = heapq.heappop(self._deadlines)
            method = self._pending.pop(msgid, None)
            if method is not None:
                out.append(Answer(msgid, method, expired=True))
        return out

    def close(self) -> list[Answer]:
        """The channel is gone: every pending request is answered `expired`."""
        out = [Answer(msgid, method, expired=True) for msgid, method in self._pending.items()]
        self._pending.clear()
        self._deadlines.clear()
        return out

    @property
    def pending(self) -> int:
        return len(self._pending)


def _pack(obj: list[Any]) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    return data


__all__ = [
    "MAX_FRAME",
    "Answer",
    "ControlCodec",
    "ControlError",
    "Incoming",
    "Notification",
    "Request",
]
