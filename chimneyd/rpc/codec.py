"""msgpack-RPC framing, sans-IO: bytes in, requests and notifications out; responses in bytes.

A stream of msgpack objects, no length prefix (rpc-contract "Transport and framing"). Strings
are decoded with `surrogateescape`, so a `str` payload that is not valid UTF-8 can be turned back
into its exact bytes (`raw_bytes`), as the contract requires for old raw-mode clients.

`Decoder.feed` never raises for bad input: it returns the messages parsed before the first bad
frame, then a `ProtocolError`, and the decoder stays dead (the server closes that client).
`Decoder.feed_raw` is the same with each request left as the array it was decoded to (the
server's path: no object made per request).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

import msgpack

# msgpack-rpc's message types. Final, as every constant the compiled modules read per request:
# mypyc reads a Final module constant as a C value, any other through the module's dict
REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2
MSGID_LIMIT: Final = 1 << 32  # msgid is a 32-bit unsigned integer (msgpack-rpc spec)
#: A `bytes` result at least this long is answered as a head and the payload itself
#: (`bytes_response_head`): packing it would copy it twice (into the packer, out as a frame).
OUT_OF_LINE: Final = 2048
BIN_LIMIT: Final = 1 << 32  # a msgpack bin holds fewer bytes than this (bin 32)
HEAD: Final = 16  # bytes enough for a request's array header, type and msgid


# what `feed` gives, and the shape of the shards' control requests; the RPC server takes `feed_raw`
# and builds none: even unfrozen, making one cost more than decoding the ping it holds
@dataclass(slots=True)
class Request:
    msgid: int
    method: str
    params: list[Any]


@dataclass(slots=True)
class Notification:
    method: str
    params: list[Any]


@dataclass(slots=True, frozen=True)
class ProtocolError:
    """The client sent something that cannot be served: answer `msgid` if known, then close.
    `limit` tells a frame over the size limit from a malformed one."""

    reason: str
    msgid: int | None = None
    limit: bool = False


Message = Request | Notification | ProtocolError
#: A request as `Decoder.feed_raw` gives it: the decoded array `[0, msgid, method, params]`
#: itself, every type checked as `Request` has it (a str method, an array of params).
RawRequest = list[Any]
RawMessage = RawRequest | Notification | ProtocolError


def raw_bytes(value: str | bytes) -> bytes:
    """The exact bytes of a `bin`, or of a `str` as the client sent it (valid UTF-8 or not)."""
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogateescape")


class Decoder:
    """Feed bytes, get messages. A frame larger than `max_message` bytes is a `ProtocolError`.

    The size of the frame being parsed is counted here (bytes fed minus the end of the last
    complete object), not left to the Unpacker's buffer: the Unpacker consumes the elements of a
    long array as they arrive, so its buffer alone would never see an endless array as too big.
    """

    __slots__ = ("_dead", "_done", "_fed", "_head", "_unpacker", "max_message")

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._unpacker = msgpack.Unpacker(
            raw=False,
            unicode_errors="surrogateescape",
            # room for one whole frame plus one fed slice, so a frame just under the limit
            # followed by the next one never trips BufferFull; declared lengths stay capped at
            # the limit so a lying header fails at once instead of waiting for the bytes
            max_buffer_size=2 * max_message,
            max_str_len=max_message,
            max_bin_len=max_message,
            max_array_len=max_message,
            max_map_len=max_message // 2,
            max_ext_len=max_message,
            strict_map_key=False,
            use_list=True,
        )
        self._fed = 0  # bytes fed so far
        self._done = 0  # stream offset just after the last complete object
        self._head = b""  # the first bytes of the frame under way: its msgid, if it is too big
        self._dead = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        return [
            Request(m[1], m[2], m[3]) if type(m) is list else m  # type: ignore[misc]
            for m in self.feed_raw(data)
        ]

    def feed_raw(self, data: bytes | bytearray | memoryview) -> list[RawMessage]:
        """As `feed`, each request left as its array `[0, msgid, method, params]`: building a
        `Request` for it cost more than decoding it (~120 ns against ~100 per ping)."""
        if self._dead:
            return []
        out: list[RawMessage] = []
        step = self.max_message
        unpacker = self._unpacker
        # a read holds at most one frame's worth almost always: fed whole, not sliced
        if len(data) <= step:
            chunks: Iterable[bytes | bytearray | memoryview] = (data,)
        else:
            view = memoryview(data)
            chunks = (view[start : start + step] for start in range(0, len(view), step))
        for chunk in chunks:
            try:
                unpacker.feed(chunk)
            except msgpack.BufferFull:  # not reachable given the check below; kept as a guard
                return self._fail(out, self._too_big())
            under_way = self._done < self._fed
            self._fed += len(chunk)
            # a frame under way before this chunk may end in it past the limit, never held
            # unfinished at more than it; a frame begun in this chunk cannot (a chunk is at
            # most the limit). So only that one frame is measured, once per chunk, not once
            # per message
            if under_way and self._first(out):
                return out
            try:
                # the Unpacker's own iteration: its end (no whole object left) costs no
                # exception here, once per read rather than per message
                for obj in unpacker:
                    # after a whole object only: within a long array, tell() moves as the
                    # Unpacker consumes its elements, and that frame is not done
                    self._done = unpacker.tell()
                    # a well-formed request (nearly every message) is taken here in one test;
                    # anything else goes to `parse_message`, which says what is wrong. The call
                    # saved was 1 in 11 of the calls a ping costs (cProfile)
                    if type(obj) is list and len(obj) == 4:
                        kind, msgid, method, params = obj
                        if (
                            type(kind) is int
                            and kind == REQUEST
                            and type(msgid) is int
                            and 0 <= msgid < MSGID_LIMIT
                            and type(method) is str
                            and type(params) is list
                        ):
                            out.append(obj)
                            continue
                    if self._take(obj, out):
                        return out
            except Exception as exc:  # any decode failure is the client's bad frame
                return self._fail(out, ProtocolError(f"not msgpack: {_describe(exc)}"))
            if self._done < self._fed:
                self._keep_head(chunk)
                if self._fed - self._done > self.max_message:
                    return self._fail(out, self._too_big())
        return out

    def _first(self, out: list[RawMessage]) -> bool:
        """Take the frame under way if the bytes fed complete it: into `out` if it is within
        the limit, else a LIMIT error. True if that was a bad frame (the decoder is dead)."""
        unpacker = self._unpacker
        try:
            obj = next(unpacker)
        except StopIteration:
            return False  # still unfinished: measured as such at the end of the chunk
        except Exception as exc:  # any decode failure is the client's bad frame
            self._fail(out, ProtocolError(f"not msgpack: {_describe(exc)}"))
            return True
        end = unpacker.tell()
        if end - self._done > self.max_message:
            self._fail(out, self._too_big())
            return True
        self._done = end
        return self._take(obj, out)

    def _take(self, obj: Any, out: list[RawMessage]) -> bool:
        """A whole object, other than the plain request the main loop takes itself, into
        `out`. True if it was a bad frame (the decoder is dead)."""
        msg = parse_message(obj)
        if isinstance(msg, Request):  # e.g. its method sent as bin, now a str: kept as the array
            out.append([REQUEST, msg.msgid, msg.method, msg.params])
            return False
        if type(msg) is ProtocolError:
            self._fail(out, msg)
            return True
        out.append(msg)
        return False

    def _keep_head(self, chunk: bytes | bytearray | memoryview) -> None:
        """Keep the first `HEAD` bytes of the frame under way (it may have begun earlier)."""
        begun = self._done - (self._fed - len(chunk))  # its offset in this chunk
        if begun >= 0:
            self._head = bytes(chunk[begun : begun + HEAD])
        elif len(self._head) < HEAD:
            self._head += bytes(chunk[: HEAD - len(self._head)])

    @property
    def partial(self) -> int:
        """Bytes of the frame being received, held until it completes (0 between frames, and
        once the decoder is dead)."""
        return 0 if self._dead else self._fed - self._done

    def _too_big(self) -> ProtocolError:
        # the msgid, when the frame began like a request, so the client learns why (LIMIT)
        return ProtocolError(
            f"a message is larger than {self.max_message} bytes", _peek_msgid(self._head), True
        )

    def _fail(self, out: list[RawMessage], error: ProtocolError) -> list[RawMessage]:
        self._dead = True
        out.append(error)
        return out


def _peek_msgid(head: bytes) -> int | None:
    """The msgid of a frame that begins `[0, msgid, ...` (a request), else None."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(head)
    try:
        if unpacker.read_array_header() != 4:
            return None
        kind, msgid = unpacker.unpack(), unpacker.unpack()
    except Exception:  # too short or not msgpack: no msgid to answer
        return None
    if type(kind) is not int or kind != REQUEST:
        return None
    return msgid if type(msgid) is int and 0 <= msgid < MSGID_LIMIT else None


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:120]}" if text else type(exc).__name__


def parse_message(obj: Any) -> Message:
    """One decoded msgpack object → a request, a notification or why it is neither."""
    if not isinstance(obj, list) or not obj:
        return ProtocolError("a message must be a non-empty msgpack array")
    kind = obj[0]
    # `type(...) is int`: false and 0.0 compare equal to 0 but are not the message type 0
    if type(kind) is int and kind == REQUEST and len(obj) == 4:
        _, msgid, method, params = obj
        if type(msgid) is not int or not 0 <= msgid < MSGID_LIMIT:
            return ProtocolError("msgid must be an unsigned 32-bit integer")
        if isinstance(method, bytes):
            method = method.decode("utf-8", "surrogateescape")
        if not isinstance(method, str):
            return ProtocolError("method must be str or bin", msgid)
        if not isinstance(params, list):
            return ProtocolError("params must be an array", msgid)
        # an over-long method name is only an unknown method (NO_METHOD), not a reason to close
        return Request(msgid, method, params)
    if type(kind) is int and kind == NOTIFICATION and len(obj) == 3:
        _, method, params = obj
        if isinstance(method, bytes):
            method = method.decode("utf-8", "surrogateescape")
        if not isinstance(method, str):
            return ProtocolError("method must be str or bin")
        if not isinstance(params, list):
            return ProtocolError("params must be an array")
        return Notification(method, params)
    return ProtocolError(
        "not a request [0, msgid, method, params] or a notification [2, method, params]"
    )


class Encoder:
    """Responses and notifications; the server always sends method names as str."""

    __slots__ = ("_packer", "pack")

    def __init__(self) -> None:
        # surrogateescape: a str the client sent as invalid UTF-8 goes back as the same bytes
        self._packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")
        #: one message array as bytes: `response` without its call, for the server's hot path
        self.pack = self._packer.pack

    def response(self, msgid: int, error: list[Any] | None, result: Any) -> bytes:
        return self._packer.pack([RESPONSE, msgid, error, result])  # type: ignore[no-any-return]

    def notification(self, method: str, params: list[Any]) -> bytes:
        return self._packer.pack([NOTIFICATION, method, params])  # type: ignore[no-any-return]


def bytes_response_head(msgid: int, length: int) -> bytes:
    """The bytes of a successful response `[1, msgid, nil, <bin of length bytes>]` that come
    before the payload: the payload follows as it is, and the two together are exactly what
    packing the whole response gives (bin 8, 16 or 32, the smallest that fits)."""
    # fixarray of 4, positive fixint 1 (RESPONSE); msgid in the smallest unsigned form
    if msgid < 0x80:
        head = bytes((0x94, RESPONSE, msgid))
    elif msgid < 0x100:
        head = bytes((0x94, RESPONSE, 0xCC, msgid))
    elif msgid < 0x10000:
        head = bytes((0x94, RESPONSE, 0xCD)) + msgid.to_bytes(2, "big")
    else:
        head = bytes((0x94, RESPONSE, 0xCE)) + msgid.to_bytes(4, "big")
    # nil error, then the bin header
    if length < 0x100:
        return head + bytes((0xC0, 0xC4, length))
    if length < 0x10000:
        return head + b"\xc0\xc5" + length.to_bytes(2, "big")
    return head + b"\xc0\xc6" + length.to_bytes(4, "big")
