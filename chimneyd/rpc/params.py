"""Parameter coercion and validation for the method table, in one place.

Each function takes one value the client sent and returns it as the engine wants it, or raises
`EngineError(INVALID_PARAMS)` whose message names the parameter. Nothing here touches a session,
the engine or the network.
"""

from __future__ import annotations

from typing import Any

from chimneyd.api import EngineError, ErrorCode

from .codec import raw_bytes

MAX_RECV = 8 * 1024 * 1024  # tcp.recv's max_bytes
MAX_TIMEOUT_MS = 3_600_000  # an hour: any longer wait is a client bug
MAX_ID = 1 << 62  # connection, listener and fault ids
MAX_TEXT = 255  # host names, target names
ALL = "*"  # "every connection" (events.subscribe) / "every fault" (fault.clear)


def invalid(detail: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_PARAMS, detail)


def arity(params: list[Any], low: int, high: int, method: str) -> None:
    if not low <= len(params) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise invalid(f"{method} takes {want} params, got {len(params)}")


def optional(params: list[Any], index: int) -> Any:
    """The optional parameter at `index`, or None when the client left it out."""
    return params[index] if len(params) > index else None


def pos_int(value: Any, name: str, upper: int = MAX_ID) -> int:
    # `type(...) is int`: msgpack gives plain ints, and bool is an int subclass
    if type(value) is not int or not 0 < value <= upper:
        raise invalid(f"{name} must be a positive integer")
    return value


def timeout_s(value: Any, name: str = "timeout_ms") -> float | None:
    """Milliseconds on the wire, seconds for the engine; None waits as long as it takes."""
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 <= value <= MAX_TIMEOUT_MS:
        raise invalid(f"{name} must be a number of milliseconds between 0 and {MAX_TIMEOUT_MS}")
    return float(value) / 1000.0


def text(value: Any, name: str, limit: int = MAX_TEXT) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or not value or len(value) > limit:
        raise invalid(f"{name} must be a non-empty string of at most {limit} characters")
    return value


def port(value: Any, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if type(value) is not int or not low <= value <= 65535:
        raise invalid(f"port must be an integer {low}..65535")
    return value


def flag(value: Any, name: str, default: bool = False) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(f"{name} must be a boolean")
    return value


def opts(value: Any, known: dict[str, type], method: str) -> dict[str, Any]:
    """An `opts` map with only `known` keys of the right types (None values are left out)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{method}: opts must be a map")
    out = {}
    for key, v in value.items():
        if key not in known:
            raise invalid(f"{method}: unknown option {_name(key)}")
        if v is not None and not isinstance(v, known[key]):
            raise invalid(f"{method}: option {key} must be {known[key].__name__}")
        if v is not None:
            out[key] = v
    return out


def payload(value: Any) -> bytes:
    """`tcp.send`'s data: bin, or str from raw-mode clients taken as its exact bytes."""
    if not isinstance(value, bytes | str):
        raise invalid("data must be bin (or str from raw-mode clients)")
    return raw_bytes(value)


def token(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    if not isinstance(value, str):
        raise invalid("token must be a string")
    return value


def is_all(value: Any) -> bool:
    """True for `"*"` (as str or bin)."""
    return bool(value == ALL or value == b"*")


def _name(key: Any) -> str:
    """A client-given key fit for an error message."""
    text = repr(key)
    return text if len(text) <= 64 else text[:64] + "..."


__all__ = [
    "ALL",
    "MAX_RECV",
    "MAX_TIMEOUT_MS",
    "arity",
    "flag",
    "invalid",
    "is_all",
    "optional",
    "opts",
    "payload",
    "port",
    "pos_int",
    "text",
    "timeout_s",
    "token",
]
