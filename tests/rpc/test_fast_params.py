"""`tcp.send` and `tcp.recv` check their params on a fast path for the echo's shapes
(`[conn, data]`, `[conn, max_bytes, timeout_ms]`) and on the general path for the rest: for every
params value, the method as served (`METHODS`) must do exactly what the general path does — the
same engine call with the same arguments, or the same error, code and message."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chimneyd.api import EngineError
from chimneyd.rpc import methods
from chimneyd.rpc import params as P
from chimneyd.rpc.ownership import Ownership

OWNED = (1, 2, 7, P.MAX_ID)  # the client's connections: the edges of a connection id too
EDGES = (
    -1,
    0,
    1,
    2,
    7,
    P.MAX_ID - 1,
    P.MAX_ID,
    P.MAX_ID + 1,
    P.MAX_RECV - 1,
    P.MAX_RECV,
    P.MAX_RECV + 1,
    P.MAX_TIMEOUT_MS - 1,
    P.MAX_TIMEOUT_MS,
    P.MAX_TIMEOUT_MS + 1,
    1 << 64,
    -(1 << 64),
    1 << 200,
)


class Engine:
    """Records the data-path call a method made, and returns a marker for it."""

    def start_send(self, conn: int, data: bytes) -> Any:
        return ("send", conn, type(data), data)

    def start_recv(self, conn: int, max_bytes: int, timeout: float | None, waitall: bool) -> Any:
        # the timeout's type and repr too: 5.0 and 5 must not pass for one another
        return ("recv", conn, max_bytes, type(timeout), repr(timeout), waitall)


class Client:
    """The part of `Caller` the two methods touch: a real `Ownership` and `Holdings`."""

    def __init__(self, admin: bool) -> None:
        self.engine = Engine()
        self.ownership = Ownership()
        self.holdings = self.ownership.join()
        self.holdings.admin = admin
        self.holdings.conns.update(OWNED)
        self.holdings.closed[3] = None  # closed: a trace's, not a send's or a receive's
        # 5 is another client's: NOT_FOUND for this one unless it is an admin
        self.ownership.conn_made(self.ownership.join(), 5)


def outcome(fn: Any, c: Client, p: Any) -> tuple[Any, ...]:
    try:
        return ("answer", fn(c, p))
    except EngineError as exc:
        return ("engine_error", exc.code, exc.detail, str(exc))
    except Exception as exc:  # any other failure must match too (the server answers INTERNAL)
        return ("exception", type(exc), str(exc))


ints = st.one_of(st.sampled_from(EDGES), st.integers(), st.integers(-5, 10))
values = st.one_of(
    ints,
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 5000.0, float(P.MAX_TIMEOUT_MS), 1e300, -0.0]),
    st.binary(max_size=8),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=8), st.booleans() | st.none() | st.integers(), max_size=2),
    st.just({"waitall": True}),
)
param_lists = st.lists(values, max_size=5)
# the echo's shapes, each value valid or just off: at an edge, a bool, a float, None, huge
CONN_IDS = (*OWNED, 3, 5, 0, -1, P.MAX_ID + 1, True, False, 1.0, 7.0, None, 1 << 64, b"\x07", "7")
MAX_BYTES = (1, 16384, P.MAX_RECV, P.MAX_RECV + 1, 0, -1, True, False, 16384.0, None, 1 << 64, b"1")
TIMEOUTS = (
    *(0, 1, 5000, P.MAX_TIMEOUT_MS, P.MAX_TIMEOUT_MS + 1, -1, 1 << 64),
    *(True, False, 0.0, 0.5, 5000.0, -0.0, float("nan"), float("inf"), None, "5000"),
)
DATAS = (b"", b"ab", bytearray(b"ab"), memoryview(b"ab"), "ab", "\udcff", None, 7)
conn_ids = st.sampled_from(CONN_IDS)
max_bytes = st.sampled_from(MAX_BYTES)
timeouts = st.sampled_from(TIMEOUTS)
datas = st.sampled_from(DATAS)
recv_like = st.one_of(
    st.tuples(conn_ids, max_bytes, timeouts).map(list),
    st.tuples(conn_ids | values, max_bytes | values, timeouts | values).map(list),
    st.tuples(conn_ids, max_bytes, timeouts, values).map(list),  # opts, or anything, after
)
send_like = st.one_of(
    st.tuples(conn_ids, datas).map(list),
    st.tuples(conn_ids | values, st.binary() | values).map(list),
    st.tuples(conn_ids, datas, values).map(list),
)
other_shapes = st.one_of(
    st.tuples(values, values, values),
    st.tuples(values, values),
    st.dictionaries(st.integers(0, 3), values, max_size=3),
    st.text(max_size=3),
    st.binary(max_size=3),
)
any_params = st.one_of(param_lists, recv_like, send_like, other_shapes)


@pytest.mark.parametrize(
    ("method", "general"),
    [
        ("tcp.recv", methods.tcp_recv_checked),
        ("tcp.send", methods.tcp_send_checked),
    ],
)
@settings(max_examples=1500, deadline=None)
@given(p=any_params, admin=st.booleans())
def test_fast_path_answers_as_the_general_path(
    method: str, general: Any, p: Any, admin: bool
) -> None:
    served = methods.METHODS[method]
    assert outcome(served, Client(admin), p) == outcome(general, Client(admin), p)


def test_every_echo_shape_near_its_edges_answers_as_the_general_path() -> None:
    """Every combination of the values at and around each check's edges, exhaustively: the
    fast path's tests are the general path's exactly, for either kind of client."""
    for admin in (False, True):
        recvs = list(itertools.product(CONN_IDS, MAX_BYTES, TIMEOUTS))
        for p in itertools.chain(recvs, ([*q, {"waitall": True}] for q in recvs)):
            served = outcome(methods.tcp_recv, Client(admin), list(p))
            assert served == outcome(methods.tcp_recv_checked, Client(admin), list(p)), p
        for q in itertools.product(CONN_IDS, DATAS):
            served = outcome(methods.tcp_send, Client(admin), list(q))
            assert served == outcome(methods.tcp_send_checked, Client(admin), list(q)), q


def test_the_fast_paths_take_the_echo_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The echo's requests are answered by the fast path: with every parameter helper of the
    general path made to fail, they are still answered (params.py is plain Python in the
    compiled build too, so the patch reaches methods.py there as well)."""

    def general(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the echo's shape went the general path")

    for name in ("arity", "optional", "pos_int", "timeout_s", "opts", "payload"):
        monkeypatch.setattr(P, name, general)
    c = Client(admin=False)
    assert methods.tcp_recv(c, [7, 16384, 5000]) == ("recv", 7, 16384, float, "5.0", False)
    assert methods.tcp_send(c, [7, b"ab"]) == ("send", 7, bytes, b"ab")
    with pytest.raises(EngineError, match="NOT_FOUND: no connection 5"):
        methods.tcp_recv(c, [5, 16384, 5000])
    with pytest.raises(EngineError, match="NOT_FOUND: no connection 5"):
        methods.tcp_send(c, [5, b"ab"])
