"""The contract v1 method table: for each method, its parameter checks, its ownership and limit
checks, and the engine call behind it.

A method takes the `Caller` and the params array. A plain `def` returns the answer, or a future
the answer comes in (`FUTURE_METHODS`); an `async def` is run as a task. Futures and tasks count
against the client's in-flight limit. Failures are
`EngineError`s carrying contract codes (see `errors`). Checks and limit reservations come before
the first `await`, so pipelined requests are checked in the order they arrived, each seeing the
ones before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from typing import Any, Final

from chimneyd.api import EngineError, ErrorCode
from chimneyd.faults import kind_of
from chimneyd.observe.logging import write_errors
from chimneyd.observe.metrics import prometheus_text

from . import params as P
from .caller import Caller

Method = Callable[[Caller, list[Any]], Any]

# the bounds `tcp_send` and `tcp_recv` test on every call, read once: mypyc reads a Final
# constant as a C value, `P.MAX_ID` through two dict lookups (this module's, then params')
_MAX_ID: Final = P.MAX_ID
_MAX_RECV: Final = P.MAX_RECV
_MAX_TIMEOUT_MS: Final = P.MAX_TIMEOUT_MS


# -- stack -------------------------------------------------------------------------------------


def ping(c: Caller, p: list[Any]) -> str:
    if p:  # the check's call only when there is something wrong to say
        P.arity(p, 0, 0, "ping")
    return "pong"


def auth(c: Caller, p: list[Any]) -> bool:
    P.arity(p, 1, 1, "auth")
    c.authenticate(P.token(p[0]))
    return True


def stack_info(c: Caller, p: list[Any]) -> dict[str, Any]:
    P.arity(p, 0, 0, "stack.info")
    info = c.engine.info()
    info["rpc"] = c.describe_rpc()
    return info


def stack_stats(c: Caller, p: list[Any]) -> dict[str, Any]:
    P.arity(p, 0, 0, "stack.stats")
    stats = c.engine.stats()
    stats["rpc"] = c.rpc_stats()
    stats["log"] = {"write_errors": write_errors()}  # log lines lost to a failed write
    return stats


def stack_metrics(c: Caller, p: list[Any]) -> str:
    """Extension: `stack.stats` gauges and counters as Prometheus text."""
    P.arity(p, 0, 0, "stack.metrics")
    return prometheus_text(stack_stats(c, []))


# -- connections and listeners -------------------------------------------------------------------


async def tcp_connect(c: Caller, p: list[Any]) -> int:
    P.arity(p, 2, 3, "tcp.connect")
    host = P.text(p[0], "host")
    port = P.port(p[1], allow_zero=False)
    o = P.opts(P.optional(p, 2), {"offload": bool, "target": str}, "tcp.connect")
    h = c.holdings
    # connections already accepted on this client's listeners are as good as its own
    c.ownership.reserve_conn(h, c.config.max_connections_per_client, _waiting(c))
    adopt = functools.partial(c.ownership.conn_made, h)

    def on_conn(conn: int) -> None:
        adopt(conn)  # owned before the offload starts, so its owner hears `offloaded`

    made = c.engine.connect(host, port, o.get("offload", True), o.get("target"), on_conn)
    return await _made_for(c, made, adopt, c.ownership.unreserve_conn, c.engine.close)


async def tcp_listen(c: Caller, p: list[Any]) -> int:
    P.arity(p, 2, 3, "tcp.listen")
    host = P.text(p[0], "host")
    port = P.port(p[1], allow_zero=True)
    o = P.opts(P.optional(p, 2), {"offload": bool}, "tcp.listen")
    h = c.holdings
    c.ownership.reserve_listener(h, c.config.max_listeners_per_client)
    made = c.engine.listen(host, port, o.get("offload", True))
    adopt = functools.partial(c.ownership.listener_made, h)
    return await _made_for(c, made, adopt, c.ownership.unreserve_listener, c.engine.close_listener)


def tcp_listener_info(c: Caller, p: list[Any]) -> dict[str, Any]:
    P.arity(p, 1, 1, "tcp.listener_info")
    lid = c.ownership.listener(c.holdings, P.pos_int(p[0], "listener_id"))
    return c.engine.listener_info(lid)


async def tcp_accept(c: Caller, p: list[Any]) -> int:
    P.arity(p, 1, 2, "tcp.accept")
    h = c.holdings
    lid = c.ownership.listener(h, P.pos_int(p[0], "listener_id"))
    timeout = P.timeout_s(P.optional(p, 1))
    # an accept turns a waiting connection into an owned one: it adds nothing to count
    c.ownership.reserve_conn(h, c.config.max_connections_per_client)
    adopt = functools.partial(c.ownership.conn_made, h)
    made = c.engine.accept(lid, timeout)
    # not run to its end once cancelled: an accept that went on waiting for a client that
    # left would take the listener's next connection from the next accept, only to close it.
    # Cancelled, the engine's accept takes none (one handed to it goes to the next accept)
    return await _made_for(
        c, made, adopt, c.ownership.unreserve_conn, c.engine.close, to_the_end=False
    )


def _waiting(c: Caller) -> int:
    """Connections accepted on this client's listeners that no `tcp.accept` took yet."""
    waiting = 0
    for lid in c.holdings.listeners:
        with contextlib.suppress(EngineError):
            pending = c.engine.listener_info(lid).get("pending", 0)
            waiting += pending if type(pending) is int else 0
    return waiting


async def _made_for(
    c: Caller,
    made: Coroutine[Any, Any, int],
    adopt: Callable[[int], bool],
    unreserve: Callable[[Any], None],
    undo: Callable[[int], Coroutine[Any, Any, None]],
    to_the_end: bool = True,
) -> int:
    """Run an engine call that makes something for this client (a connection, a listener) to
    its end even if the request is cancelled (client gone, daemon stopping): what it makes is
    always adopted, or undone when nobody is left to own it. The reservation taken for it is
    returned either way. `to_the_end=False`: a cancelled request cancels the call too, for a
    call that, cancelled, makes nothing (`tcp.accept`)."""
    h = c.holdings
    inner = asyncio.ensure_future(made)

    def done(task: asyncio.Future[int]) -> None:
        unreserve(h)
        if task.cancelled() or task.exception() is not None:
            return
        made_id = task.result()
        if not adopt(made_id):
            c.background(undo(made_id))

    inner.add_done_callback(done)
    return await (asyncio.shield(inner) if to_the_end else inner)


async def tcp_offload(c: Caller, p: list[Any]) -> dict[str, Any]:
    P.arity(p, 1, 1, "tcp.offload")
    return await c.engine.offload(_conn(c, p[0]))


async def tcp_upload(c: Caller, p: list[Any]) -> dict[str, Any]:
    P.arity(p, 1, 1, "tcp.upload")
    return await c.engine.upload(_conn(c, p[0]))


# The two methods on the data path return the engine's future itself: the server answers from
# its done callback, with no task (and no coroutine) per request.
#
# Each has a fast path for the shape every verified echo sends (`[conn, data]`, `[conn,
# max_bytes, timeout_ms]` with an int timeout): the same checks as the general path written out
# in place, without its five or six helper calls. Anything else (another length, another type,
# a value out of range) goes the general path, which gives the answer or the error; the fast
# path gives an answer only where the general one gives the same (tests/rpc/test_fast_params.py
# compares them on arbitrary params).
def tcp_send(c: Caller, p: list[Any]) -> asyncio.Future[Any]:
    if type(p) is list and len(p) == 2:
        conn, data = p
        # `P.pos_int`'s test, and `P.payload` of bytes is the bytes themselves
        if type(conn) is int and 0 < conn <= _MAX_ID and type(data) is bytes:
            # `Ownership.conn`'s test for a connection the client holds; it raises the rest
            h = c.holdings
            if not (h.admin or conn in h.conns):
                conn = c.ownership.conn(h, conn, False)
            return c.engine.start_send(conn, data)
    return tcp_send_checked(c, p)


def tcp_send_checked(c: Caller, p: list[Any]) -> asyncio.Future[Any]:
    """`tcp.send`, every shape of params: the general path."""
    P.arity(p, 2, 2, "tcp.send")
    conn = _conn(c, p[0])
    return c.engine.start_send(conn, P.payload(p[1]))


def tcp_recv(c: Caller, p: list[Any]) -> asyncio.Future[Any]:
    if type(p) is list and len(p) == 3:
        conn, max_bytes, timeout = p
        # `P.pos_int`'s and `P.timeout_s`'s tests for an int timeout; no opts: no waitall. The
        # connection is looked up once they pass: a client's unknown connection with a bad
        # max_bytes goes the general path, whose NOT_FOUND comes first, as it always did
        if (
            type(conn) is int
            and 0 < conn <= _MAX_ID
            and type(max_bytes) is int
            and 0 < max_bytes <= _MAX_RECV
            and type(timeout) is int
            and 0 <= timeout <= _MAX_TIMEOUT_MS
        ):
            h = c.holdings  # `Ownership.conn`'s test written out, as in `tcp_send`
            if not (h.admin or conn in h.conns):
                conn = c.ownership.conn(h, conn, False)
            return c.engine.start_recv(conn, max_bytes, float(timeout) / 1000.0, False)
    return tcp_recv_checked(c, p)


def tcp_recv_checked(c: Caller, p: list[Any]) -> asyncio.Future[Any]:
    """`tcp.recv`, every shape of params: the general path."""
    P.arity(p, 2, 4, "tcp.recv")
    conn = _conn(c, p[0])
    max_bytes = P.pos_int(p[1], "max_bytes", P.MAX_RECV)
    timeout = P.timeout_s(P.optional(p, 2))
    # extension: opts {"waitall": true} reads exactly max_bytes (short only at end of stream);
    # the host waits for them itself, over push-mode receive requests when offloaded (spec §4.2)
    o = P.opts(P.optional(p, 3), {"waitall": bool}, "tcp.recv")
    return c.engine.start_recv(conn, max_bytes, timeout, o.get("waitall", False))


async def tcp_disconnect(c: Caller, p: list[Any]) -> str:
    P.arity(p, 1, 2, "tcp.disconnect")
    conn = _conn(c, p[0])
    return await c.engine.disconnect(conn, P.flag(P.optional(p, 1), "abortive"))


async def tcp_close(c: Caller, p: list[Any]) -> bool:
    P.arity(p, 1, 1, "tcp.close")
    conn = _conn(c, p[0])
    await c.engine.close(conn)
    c.ownership.conn_closed(conn)
    return True


def tcp_info(c: Caller, p: list[Any]) -> dict[str, Any]:
    P.arity(p, 1, 1, "tcp.info")
    return c.engine.conn_info(_conn(c, p[0]))


def tcp_list(c: Caller, p: list[Any]) -> list[int]:
    P.arity(p, 0, 0, "tcp.list")
    if c.holdings.admin:
        return c.engine.conn_ids()
    live = set(c.engine.conn_ids())
    return sorted(conn for conn in c.holdings.conns if conn in live)


async def tcp_query(c: Caller, p: list[Any]) -> dict[str, Any]:
    """Extension: `NdisQueryOffloadState` of the connection; the delegated state now."""
    P.arity(p, 1, 1, "tcp.query")
    return await c.engine.query(_conn(c, p[0]))


async def tcp_update(c: Caller, p: list[Any]) -> dict[str, Any]:
    """Extension: `NdisUpdateOffload` with new cached TCP variables, e.g.
    `{"RcvIndicationSize": 512, "KaTimeout": 7200000}` (spec §3.4); with `"object":
    "neighbor"` or `"path"`, of the connection's neighbor or path (`{"object": "path",
    "PathMtu": 1400}`), which every connection sharing it sees; a path's `NextHop` moves it,
    and every connection on it, under the neighbor of that next hop (spec §3.4 (b))."""
    P.arity(p, 2, 2, "tcp.update")
    conn = _conn(c, p[0])
    if not isinstance(p[1], dict) or not p[1]:
        raise P.invalid("tcp.update takes a non-empty map of cached variables")
    return await c.engine.update(conn, p[1])


def _conn(c: Caller, value: Any, closed_ok: bool = False) -> int:
    return c.ownership.conn(c.holdings, P.pos_int(value, "conn_id"), closed_ok)


# -- traces and events ---------------------------------------------------------------------------


def trace_get(c: Caller, p: list[Any]) -> list[dict[str, Any]]:
    P.arity(p, 1, 2, "trace.get")
    conn = _conn(c, p[0], closed_ok=True)  # the trace of a closed connection stays readable
    limit = P.optional(p, 1)
    return c.engine.trace(conn, None if limit is None else P.pos_int(limit, "limit", 1 << 20))


def events_subscribe(c: Caller, p: list[Any]) -> bool:
    P.arity(p, 1, 1, "events.subscribe")
    c.subscribe(None if P.is_all(p[0]) else _conn(c, p[0]))
    return True


# -- faults ------------------------------------------------------------------------------------


def fault_inject(c: Caller, p: list[Any]) -> int:
    P.arity(p, 1, 1, "fault.inject")
    spec = p[0]
    if not isinstance(spec, dict) or not isinstance(spec.get("kind"), str):
        raise P.invalid("spec must be a map with a string 'kind'")
    conn = None
    if "conn" in spec:
        # a `conn` key on a kind that takes none is a wrong key (INVALID_PARAMS), not a
        # question of whose connection it names; the rest of the spec the engine checks
        kind = kind_of(spec)
        if "conn" not in kind.keys:
            known = ", ".join(kind.keys) or "none"
            raise P.invalid(f"fault kind {kind.name!r} has no key 'conn' (keys: {known})")
        conn = _conn(c, spec["conn"])  # a fault on a connection: yours
    fid = c.engine.fault_inject(spec)
    c.ownership.add_fault(c.holdings, fid, conn)
    return fid


def fault_clear(c: Caller, p: list[Any]) -> bool:
    """A client clears its own faults (and those nobody owns any more); `"*"` means all of
    those, or every fault for an admin. Someone else's fault is NOT_FOUND."""
    P.arity(p, 1, 1, "fault.clear")
    own, h = c.ownership, c.holdings
    if P.is_all(p[0]):
        if h.admin:
            c.engine.fault_clear(None)
            own.forget_all_faults()
            return True
        for fault in c.engine.fault_list():
            listed = fault.get("id")
            if type(listed) is int and own.may_touch_fault(h, listed):
                _clear_one(c, listed)
        for mine in list(h.faults):  # inactive ones too (fault_list shows only active faults)
            _clear_one(c, mine)
        return True
    fid = P.pos_int(p[0], "fault_id")
    if not own.may_touch_fault(h, fid):
        raise EngineError(ErrorCode.NOT_FOUND, f"no fault {fid}")
    c.engine.fault_clear(fid)
    own.forget_fault(fid)
    return True


def _clear_one(c: Caller, fid: int) -> None:
    try:
        c.engine.fault_clear(fid)
    except EngineError as err:
        if err.code != ErrorCode.NOT_FOUND:
            raise
    c.ownership.forget_fault(fid)


def fault_list(c: Caller, p: list[Any]) -> list[dict[str, Any]]:
    """Extension: opts `{"used": true}` lists the faults that ran their course too, each with
    `active`, a raise_next with `raised` (what each bug it planted hit) and a fail_next with
    `failed` (the connections of each call it failed)."""
    P.arity(p, 0, 1, "fault.list")
    used = P.opts(P.optional(p, 0), {"used": bool}, "fault.list").get("used", False)
    faults = c.engine.fault_entries() if used else c.engine.fault_list()
    if c.holdings.admin:
        return faults
    own, h = c.ownership, c.holdings
    return [f for f in faults if type(f.get("id")) is int and own.may_touch_fault(h, f["id"])]


#: Methods that return a future: the in-flight limit is checked before they run, since they
#: start their work before they return.
FUTURE_METHODS: Final = frozenset({"tcp.send", "tcp.recv"})

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
OPEN_METHODS: Final = frozenset({"ping", "auth"})

#: Methods whose first param is a connection id (named in the log line of an INTERNAL error).
ON_CONN = frozenset(
    {
        "tcp.offload",
        "tcp.upload",
        "tcp.send",
        "tcp.recv",
        "tcp.disconnect",
        "tcp.close",
        "tcp.info",
        "tcp.query",
        "tcp.update",
        "trace.get",
        "events.subscribe",
    }
)


def conn_param(method: str, params: list[Any]) -> int | None:
    """The connection a request is about, for its log line (None if it names none)."""
    if method in ON_CONN and params and type(params[0]) is int:
        return params[0]
    if method == "fault.inject" and params and isinstance(params[0], dict):
        conn = params[0].get("conn")
        return conn if type(conn) is int else None
    return None


__all__ = ["FUTURE_METHODS", "METHODS", "ON_CONN", "OPEN_METHODS", "Method", "conn_param"]
