"""The contract v1 method table: parameter checks, ownership, and the engine call behind each.

Each method takes the calling client's session and the params array and returns a result or
an awaitable; failures are `EngineError`s carrying contract codes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from chimneyd.api import EngineError, ErrorCode

from .codec import raw_bytes

if TYPE_CHECKING:
    from .server import Session

# a plain `def` returns the answer; an `async def` is run as a task (Session.dispatch)
Method = Callable[["Session", list[Any]], Any]
MAX_RECV = 8 * 1024 * 1024
MAX_TIMEOUT_MS = 3_600_000


def invalid(detail: str) -> EngineError:
    return EngineError(ErrorCode.INVALID_PARAMS, detail)


def arity(params: list[Any], low: int, high: int, method: str) -> None:
    if not low <= len(params) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise invalid(f"{method} takes {want} params, got {len(params)}")


def pos_int(value: Any, name: str, upper: int = 1 << 62) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= upper:
        raise invalid(f"{name} must be a positive integer")
    return value


def opt_timeout(value: Any, name: str = "timeout_ms") -> float | None:
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 <= value <= MAX_TIMEOUT_MS
    ):
        raise invalid(f"{name} must be a number of milliseconds between 0 and {MAX_TIMEOUT_MS}")
    return float(value) / 1000.0


def text(value: Any, name: str, limit: int = 255) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str) or not value or len(value) > limit:
        raise invalid(f"{name} must be a non-empty string")
    return value


def port(value: Any, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 65535:
        raise invalid(f"port must be an integer {low}..65535")
    return value


def opts(value: Any, known: dict[str, type], method: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{method}: opts must be a map")
    out = {}
    for key, v in value.items():
        if key not in known:
            raise invalid(f"{method}: unknown option {key!r}")
        if v is not None and not isinstance(v, known[key]):
            raise invalid(f"{method}: option {key} must be {known[key].__name__}")
        out[key] = v
    return out


# -- methods -----------------------------------------------------------------------------------


def ping(s: Session, p: list[Any]) -> str:
    arity(p, 0, 0, "ping")
    return "pong"


def auth(s: Session, p: list[Any]) -> bool:
    arity(p, 1, 1, "auth")
    token = p[0]
    if isinstance(token, bytes):
        token = token.decode("utf-8", "surrogateescape")
    if not isinstance(token, str):
        raise invalid("token must be a string")
    s.authenticate(token)
    return True


def stack_info(s: Session, p: list[Any]) -> dict[str, Any]:
    arity(p, 0, 0, "stack.info")
    info = s.engine.info()
    info["rpc"] = s.server.describe()
    return info


def stack_stats(s: Session, p: list[Any]) -> dict[str, Any]:
    arity(p, 0, 0, "stack.stats")
    stats = s.engine.stats()
    stats["rpc"] = s.server.rpc_stats()
    return stats


async def tcp_connect(s: Session, p: list[Any]) -> int:
    arity(p, 2, 3, "tcp.connect")
    host = text(p[0], "host")
    prt = port(p[1], allow_zero=False)
    o = opts(p[2] if len(p) > 2 else None, {"offload": bool, "target": str}, "tcp.connect")
    offload = o.get("offload", True) is not False
    return await s.new_conn(s.engine.connect(host, prt, offload, o.get("target"), s.adopt))


async def tcp_listen(s: Session, p: list[Any]) -> int:
    arity(p, 2, 3, "tcp.listen")
    host = text(p[0], "host")
    prt = port(p[1], allow_zero=True)
    o = opts(p[2] if len(p) > 2 else None, {"offload": bool}, "tcp.listen")
    s.check_listener_room()
    lid = await s.engine.listen(host, prt, o.get("offload", True) is not False)
    s.add_listener(lid)
    return lid


def tcp_listener_info(s: Session, p: list[Any]) -> dict[str, Any]:
    arity(p, 1, 1, "tcp.listener_info")
    lid = s.listener(p[0])
    return s.engine.listener_info(lid)


async def tcp_accept(s: Session, p: list[Any]) -> int:
    arity(p, 1, 2, "tcp.accept")
    lid = s.listener(p[0])
    timeout = opt_timeout(p[1] if len(p) > 1 else None)
    return await s.new_conn(s.engine.accept(lid, timeout))


async def tcp_offload(s: Session, p: list[Any]) -> dict[str, Any]:
    arity(p, 1, 1, "tcp.offload")
    return await s.engine.offload(s.conn(p[0]))


async def tcp_upload(s: Session, p: list[Any]) -> dict[str, Any]:
    arity(p, 1, 1, "tcp.upload")
    return await s.engine.upload(s.conn(p[0]))


async def tcp_send(s: Session, p: list[Any]) -> int:
    arity(p, 2, 2, "tcp.send")
    conn = s.conn(p[0])
    if not isinstance(p[1], bytes | str):
        raise invalid("data must be bin (or str from raw-mode clients)")
    return await s.engine.send(conn, raw_bytes(p[1]))


async def tcp_recv(s: Session, p: list[Any]) -> bytes:
    arity(p, 2, 4, "tcp.recv")
    conn = s.conn(p[0])
    max_bytes = pos_int(p[1], "max_bytes", MAX_RECV)
    timeout = opt_timeout(p[2] if len(p) > 2 else None)
    # extension: opts {"waitall": true} reads exactly max_bytes (short only at end of stream);
    # offloaded, that is a non-push receive request (spec §4.2)
    o = opts(p[3] if len(p) > 3 else None, {"waitall": bool}, "tcp.recv")
    return await s.engine.recv(conn, max_bytes, timeout, bool(o.get("waitall", False)))


async def tcp_disconnect(s: Session, p: list[Any]) -> str:
    arity(p, 1, 2, "tcp.disconnect")
    conn = s.conn(p[0])
    abortive = p[1] if len(p) > 1 and p[1] is not None else False
    if not isinstance(abortive, bool):
        raise invalid("abortive must be a boolean")
    return await s.engine.disconnect(conn, abortive)


async def tcp_close(s: Session, p: list[Any]) -> bool:
    arity(p, 1, 1, "tcp.close")
    conn = s.conn(p[0])
    await s.engine.close(conn)
    s.release(conn)
    return True


def tcp_info(s: Session, p: list[Any]) -> dict[str, Any]:
    arity(p, 1, 1, "tcp.info")
    return s.engine.conn_info(s.conn(p[0]))


def tcp_list(s: Session, p: list[Any]) -> list[int]:
    arity(p, 0, 0, "tcp.list")
    if s.admin:
        return s.engine.conn_ids()
    live = set(s.engine.conn_ids())
    return sorted(c for c in s.conns if c in live)


async def tcp_query(s: Session, p: list[Any]) -> dict[str, Any]:
    """Extension: `NdisQueryOffloadState` of the connection; the delegated state now."""
    arity(p, 1, 1, "tcp.query")
    return await s.engine.query(s.conn(p[0]))


async def tcp_update(s: Session, p: list[Any]) -> dict[str, Any]:
    """Extension: `NdisUpdateOffload` with new cached TCP variables, e.g.
    `{"RcvIndicationSize": 512, "KaTimeout": 7200000}` (spec §3.4)."""
    arity(p, 2, 2, "tcp.update")
    conn = s.conn(p[0])
    if not isinstance(p[1], dict) or not p[1]:
        raise invalid("tcp.update takes a non-empty map of cached variables")
    return await s.engine.update(conn, p[1])


def trace_get(s: Session, p: list[Any]) -> list[dict[str, Any]]:
    arity(p, 1, 2, "trace.get")
    conn = s.conn(p[0], closed_ok=True)  # the trace of a closed connection stays readable
    limit = None
    if len(p) > 1 and p[1] is not None:
        limit = pos_int(p[1], "limit", 1 << 20)
    return s.engine.trace(conn, limit)


def events_subscribe(s: Session, p: list[Any]) -> bool:
    arity(p, 1, 1, "events.subscribe")
    target = p[0]
    if isinstance(target, bytes):
        target = target.decode("utf-8", "replace")
    if target == "*":
        s.subscribe(None)
    else:
        s.subscribe(s.conn(target))
    return True


def fault_inject(s: Session, p: list[Any]) -> int:
    arity(p, 1, 1, "fault.inject")
    spec = p[0]
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise invalid("spec must be a map with a string 'kind'")
    conn = s.conn(spec["conn"]) if "conn" in spec else None  # a fault on a connection: yours
    fid = s.engine.fault_inject(spec)
    s.add_fault(fid, conn)
    return fid


def fault_clear(s: Session, p: list[Any]) -> bool:
    """A client clears its own faults (and those nobody owns any more); `"*"` means all of
    those, or every fault for an admin. Someone else's fault is NOT_FOUND."""
    arity(p, 1, 1, "fault.clear")
    target = p[0]
    if isinstance(target, bytes):
        target = target.decode("utf-8", "replace")
    if target == "*":
        if s.admin:
            s.engine.fault_clear(None)
            for known in list(s.server.fault_owner):
                s.server.forget_fault(known)
            return True
        for fault in s.engine.fault_list():
            listed = fault.get("id")
            if isinstance(listed, int) and s.may_touch_fault(listed):
                _clear_one(s, listed)
        for mine in list(s.faults):  # inactive ones too (fault_list shows only active faults)
            _clear_one(s, mine)
        return True
    fid = pos_int(target, "fault_id")
    if not s.may_touch_fault(fid):
        raise EngineError(ErrorCode.NOT_FOUND, f"no fault {fid}")
    s.engine.fault_clear(fid)
    s.forget_fault(fid)
    return True


def _clear_one(s: Session, fid: int) -> None:
    try:
        s.engine.fault_clear(fid)
    except EngineError as err:
        if err.code != ErrorCode.NOT_FOUND:
            raise
    s.forget_fault(fid)


def fault_list(s: Session, p: list[Any]) -> list[dict[str, Any]]:
    arity(p, 0, 0, "fault.list")
    faults = s.engine.fault_list()
    if s.admin:
        return faults
    return [f for f in faults if isinstance(f.get("id"), int) and s.may_touch_fault(f["id"])]


def stack_metrics(s: Session, p: list[Any]) -> str:
    """Extension: `stack.stats` gauges and counters as Prometheus text."""
    arity(p, 0, 0, "stack.metrics")
    from chimneyd.observe.metrics import prometheus_text

    return prometheus_text(stack_stats(s, []))


METHODS: dict[str, Method] = {
    "ping": ping,
    "auth": auth,
    "stack.info": stack_info,
    "stack.stats": stack_stats,
    "stack.metrics": stack_metrics,
    "tcp.connect": tcp_connect,
    "tcp.listen": tcp_listen,
    "tcp.listener_info": tcp_listener_info,
    "tcp.accept": tcp_accept,
    "tcp.offload": tcp_offload,
    "tcp.upload": tcp_upload,
    "tcp.send": tcp_send,
    "tcp.recv": tcp_recv,
    "tcp.disconnect": tcp_disconnect,
    "tcp.close": tcp_close,
    "tcp.info": tcp_info,
    "tcp.list": tcp_list,
    "tcp.query": tcp_query,
    "tcp.update": tcp_update,
    "trace.get": trace_get,
    "events.subscribe": events_subscribe,
    "fault.inject": fault_inject,
    "fault.clear": fault_clear,
    "fault.list": fault_list,
}

#: Methods a client may call before `auth` when the daemon has a token.
OPEN_METHODS = frozenset({"ping", "auth"})

__all__ = ["METHODS", "OPEN_METHODS", "Method", "pos_int"]
