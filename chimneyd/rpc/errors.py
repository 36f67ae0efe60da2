"""The contract's error envelope, built in one place: `[code, "SYMBOL: detail"]`.

Every error a client sees is made here, from a code and a detail (`envelope`) or from whatever a
method raised (`for_exception`): an `EngineError` keeps its code, running out of file
descriptors is LIMIT, anything else is a bug, answered INTERNAL with a trace id that the log line
carries too.
"""

from __future__ import annotations

import errno
import uuid
from typing import Any

import structlog

from chimneyd.api import EngineError, ErrorCode

log = structlog.get_logger("chimneyd.rpc")

Envelope = list[Any]  # [code, message]

#: Out of file descriptors (per process / system-wide): a limit, not a bug (rpc-contract: LIMIT).
FD_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE})


def envelope(code: ErrorCode, detail: str) -> Envelope:
    return [int(code), f"{code.name}: {detail}"]


def short(name: str, limit: int = 64) -> str:
    """A client-given name fit for a log line or an error message (a method name may be 1 MB)."""
    return name if len(name) <= limit else name[:limit] + "..."


def for_exception(
    exc: BaseException, method: str, conn: int | None = None, client: str | None = None
) -> Envelope:
    """The answer to a request whose method raised `exc`."""
    if isinstance(exc, EngineError):
        return envelope(exc.code, exc.detail)
    if isinstance(exc, OSError) and exc.errno in FD_EXHAUSTED:
        return envelope(ErrorCode.LIMIT, f"open-file limit reached: {exc.strerror}")
    return internal(exc, method, conn, client)


def internal(
    exc: BaseException | None,
    method: str,
    conn: int | None = None,
    client: str | None = None,
    what: str = "rpc_internal_error",
) -> Envelope:
    """Log a bug with a fresh trace id and return the INTERNAL envelope that names it."""
    trace_id = uuid.uuid4().hex[:12]
    log.error(what, method=short(method), conn=conn, client=client, trace_id=trace_id, exc_info=exc)
    return envelope(ErrorCode.INTERNAL, f"a bug, logged as trace id {trace_id}")


__all__ = ["FD_EXHAUSTED", "Envelope", "envelope", "for_exception", "internal", "short"]
