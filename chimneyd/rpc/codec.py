"""msgpack-RPC framing, sans-IO: bytes in, requests and notifications out; responses in bytes.

A stream of msgpack objects, no length prefix (rpc-contract "Transport and framing"). Strings
are decoded with `surrogateescape`, so a `str` payload that is not valid UTF-8 can be turned back
into its exact bytes (`raw_bytes`), as the contract requires for old raw-mode clients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2


class FrameError(Exception):
    """A frame this client sent cannot be served; the connection is closed after a best-effort
    error (to `msgid` when it is known)."""

    def __init__(self, reason: str, msgid: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.msgid = msgid


@dataclass(slots=True)
class Request:
    msgid: int
    method: str
    params: list[Any]


@dataclass(slots=True)
class Notification:
    method: str
    params: list[Any]


def raw_bytes(value: str | bytes) -> bytes:
    """The exact bytes of a `bin`, or of a `str` as the client sent it (valid UTF-8 or not)."""
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogateescape")


class Decoder:
    """Feed bytes, get messages. An object larger than `max_message` raises `FrameError`."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._unpacker = msgpack.Unpacker(
            raw=False,
            unicode_errors="surrogateescape",
            max_buffer_size=max_message,
            strict_map_key=False,
            use_list=True,
        )

    def feed(self, data: bytes) -> list[Request | Notification]:
        out: list[Request | Notification] = []
        unpacker = self._unpacker
        view = memoryview(data)
        # feed in slices no larger than the limit, so one over-limit frame is detected without
        # holding more than `max_message` bytes of it
        step = self.max_message
        for start in range(0, len(view), step):
            try:
                unpacker.feed(view[start : start + step])
            except msgpack.BufferFull:
                raise FrameError(f"a message is larger than {self.max_message} bytes") from None
            try:
                for obj in unpacker:
                    out.append(self._message(obj))
            except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
                if isinstance(exc, FrameError):
                    raise
                raise FrameError(f"not msgpack: {exc}") from None
        return out

    @staticmethod
    def _message(obj: Any) -> Request | Notification:
        if not isinstance(obj, list) or not obj:
            raise FrameError("a message must be a msgpack array")
        kind = obj[0]
        if kind == REQUEST and len(obj) == 4:
            _, msgid, method, params = obj
            if not isinstance(msgid, int) or isinstance(msgid, bool) or not 0 <= msgid < 1 << 32:
                raise FrameError("msgid must be an unsigned 32-bit integer")
            return Request(msgid, _method(method, msgid), _params(params, msgid))
        if kind == NOTIFICATION and len(obj) == 3:
            _, method, params = obj
            return Notification(_method(method, None), _params(params, None))
        raise FrameError(
            "not a request [0, msgid, method, params] or notification [2, method, params]"
        )


def _method(value: Any, msgid: int | None) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if not isinstance(value, str):
        raise FrameError("method must be str or bin", msgid)
    return value  # an over-long name is just an unknown method: NO_METHOD, not a close


def _params(value: Any, msgid: int | None) -> list[Any]:
    if not isinstance(value, list):
        raise FrameError("params must be an array", msgid)
    return value


class Encoder:
    """Responses and notifications; the server always sends method names as str."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")

    def response(self, msgid: int, error: list[Any] | None, result: Any) -> bytes:
        return self._packer.pack([RESPONSE, msgid, error, result])  # type: ignore[no-any-return]

    def notification(self, method: str, params: list[Any]) -> bytes:
        return self._packer.pack([NOTIFICATION, method, params])  # type: ignore[no-any-return]
