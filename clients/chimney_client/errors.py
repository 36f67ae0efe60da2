"""Errors a client can raise: RPC errors by contract code, and transport failures.

Every server error is an `RpcError` subclass chosen by its contract code (rpc-contract.md, error
table), so callers catch what they mean (`except NotFound:`) instead of comparing ints.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar


class ChimneyError(Exception):
    """Base of everything this package raises."""


class ConnectionLost(ChimneyError, ConnectionError):
    """The RPC connection is gone; every call pending on it failed with this.

    A `ConnectionError` too (as `CallTimeout` is a `TimeoutError`), so `except ConnectionError`
    catches it; built with the message alone, its `errno` is None."""


class CallTimeout(ChimneyError, TimeoutError):
    """A call's client-side timeout expired; its late response, if any, is dropped."""


class ProtocolError(ChimneyError):
    """The server sent something that is not msgpack-RPC (the connection is then closed)."""


class AddressError(ValueError):
    """An address that does not parse (`parse_address`); the message names it and the forms
    accepted. A ValueError, not a ChimneyError: it is a caller's mistake, found before any
    connection is tried, and command lines report it as a usage error."""


class RpcError(ChimneyError):
    """An error answer `[code, message]` from the server.

    `message` starts with the code's symbol (`"NOT_FOUND: no connection 17"`), so `str(err)` is
    exactly what the daemon said.
    """

    code: ClassVar[int] = 0
    symbol: ClassVar[str] = "UNKNOWN"

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.wire_code = code  # the code as sent (differs from `code` only for unknown codes)
        self.message = message

    @property
    def detail(self) -> str:
        """The message without its leading symbol."""
        prefix = f"{self.symbol}:"
        if self.message.startswith(prefix):
            return self.message[len(prefix) :].strip()
        return self.message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.wire_code}, {self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # `args` holds the message only, and `__init__` wants the code too: without this,
        # unpickling (multiprocessing, concurrent.futures) fails with a TypeError.
        return (type(self), (self.wire_code, self.message), self.__dict__)


class NoMethod(RpcError):
    code = 1
    symbol = "NO_METHOD"


class InvalidParams(RpcError):
    code = 2
    symbol = "INVALID_PARAMS"


class NotFound(RpcError):
    code = 3
    symbol = "NOT_FOUND"


class InvalidState(RpcError):
    code = 4
    symbol = "INVALID_STATE"


# "NDIS_STATUS: NDIS_STATUS_REQUEST_ABORTED (0xC023000C) acknowledged 0 bytes"
_STATUS_RE = re.compile(r"\b(NDIS_STATUS_[A-Z0-9_]+)(?:\s*\((0x[0-9A-Fa-f]+)\))?")
_ACKED_RE = re.compile(r"acknowledged\D{0,3}(\d+)")


class NdisStatusError(RpcError):
    """An operation completed with a non-success NDIS status, named in the message."""

    code = 5
    symbol = "NDIS_STATUS"

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        m = _STATUS_RE.search(message)
        self.status: str | None = m.group(1) if m else None
        self.status_value: int | None = int(m.group(2), 16) if m and m.group(2) else None
        # A partial `tcp.send` names the acknowledged byte count (contract: tcp.send).
        a = _ACKED_RE.search(message)
        self.acknowledged: int | None = int(a.group(1)) if a else None


class LimitError(RpcError):
    code = 6
    symbol = "LIMIT"


class RpcTimeout(RpcError):
    """The server-side timeout of the operation expired (`tcp.recv`, `tcp.accept`)."""

    code = 7
    symbol = "TIMEOUT"


class Denied(RpcError):
    code = 8
    symbol = "DENIED"


class ConnectFailed(RpcError):
    code = 9
    symbol = "CONNECT_FAILED"


class InternalError(RpcError):
    code = 10
    symbol = "INTERNAL"


ERRORS_BY_CODE: dict[int, type[RpcError]] = {
    cls.code: cls
    for cls in (
        NoMethod,
        InvalidParams,
        NotFound,
        InvalidState,
        NdisStatusError,
        LimitError,
        RpcTimeout,
        Denied,
        ConnectFailed,
        InternalError,
    )
}


def error_from_wire(error: Any) -> RpcError:
    """Build the right `RpcError` subclass from a response's `error` field.

    Tolerates shapes outside the contract (a bare string, a map) so a misbehaving server still
    yields a readable error rather than a crash in the client.
    """
    if isinstance(error, list | tuple) and len(error) >= 2 and isinstance(error[0], int):
        code, message = error[0], error[1]
        text = message if isinstance(message, str) else repr(message)
        return ERRORS_BY_CODE.get(code, RpcError)(code, text)
    return RpcError(0, f"UNKNOWN: {error!r}")
