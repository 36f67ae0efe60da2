"""Bad input never harms the daemon or another client.

One daemon serves the module (max_message_bytes = 1 MiB); after every case ANOTHER, fresh
client must still get ping → "pong", and at teardown the daemon must stop cleanly. Every read
has a timeout that fails the test: a daemon that neither answers nor closes is a failure, never
taken for a close.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import time
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.support import HOST, Daemon, RawConn, assert_daemon_serves, peer_process

MAX_MESSAGE = 1024 * 1024
SYMBOLS = {
    1: "NO_METHOD",
    2: "INVALID_PARAMS",
    3: "NOT_FOUND",
    4: "INVALID_STATE",
    5: "NDIS_STATUS",
    6: "LIMIT",
    7: "TIMEOUT",
    8: "DENIED",
    9: "CONNECT_FAILED",
    10: "INTERNAL",
}
METHODS = [
    "ping",
    "auth",
    "stack.info",
    "stack.stats",
    "tcp.connect",
    "tcp.listen",
    "tcp.listener_info",
    "tcp.accept",
    "tcp.offload",
    "tcp.upload",
    "tcp.send",
    "tcp.recv",
    "tcp.disconnect",
    "tcp.close",
    "tcp.info",
    "tcp.list",
    "trace.get",
    "events.subscribe",
    "fault.inject",
    "fault.clear",
    "fault.list",
]


def check_wellformed(msg: Any) -> None:
    """A message the daemon sent: a response with a contract error, or a notification."""
    assert isinstance(msg, list), msg
    if msg[0] == 2:
        assert len(msg) == 3 and isinstance(msg[1], str) and isinstance(msg[2], list), msg
        return
    assert msg[0] == 1 and len(msg) == 4, msg
    _, msgid, error, result = msg
    assert isinstance(msgid, int) and 0 <= msgid < 1 << 32, msg
    if error is not None:
        code, message = error
        assert code in SYMBOLS, msg
        assert code != 10, f"INTERNAL error: {msg}"
        assert message.startswith(SYMBOLS[code]), msg
        assert result is None, msg


def read_until_closed(raw: RawConn) -> list[Any]:
    """Every message the daemon sends before it closes this connection. A socket timeout (the
    daemon neither answered nor closed) is raised, not taken for a close."""
    out = []
    with contextlib.suppress(EOFError):
        while True:
            msg = raw.read_message()
            check_wellformed(msg)
            out.append(msg)
    return out


#: What `send` may raise when the daemon closed the connection first (a reset, a broken pipe, a
#: shutdown on a socket already reset). A timeout is none of these.
CLOSED_FIRST = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN})


@contextlib.contextmanager
def closed_first_is_fine() -> Any:
    try:
        yield
    except OSError as exc:
        if isinstance(exc, TimeoutError) or exc.errno not in CLOSED_FIRST:
            raise


@pytest.fixture
def d(module_daemon: Daemon) -> Any:
    yield module_daemon
    assert_daemon_serves(module_daemon)


def test_bytes_that_are_not_msgpack(d: Daemon) -> None:
    with RawConn((d.host, d.port)) as raw:
        raw.send(b"\xc1")  # never valid in msgpack
        assert read_until_closed(raw) == []
    with RawConn((d.host, d.port)) as raw:
        # a good request, then garbage: the good one is answered, then the close
        raw.send(msgpack.packb([0, 1, "ping", []]) + b"\xc1\xc1\xc1")
        assert read_until_closed(raw) == [[1, 1, None, "pong"]]


@pytest.mark.parametrize(
    "frame",
    [
        {"a": 1},
        [],
        [0, 1],
        [0, 1, "ping"],
        [0, 1, "ping", [], 5],
        [0, "x", "ping", []],
        [0, None, "ping", []],
        [0, -1, "ping", []],
        [0, 1 << 32, "ping", []],
        [0, 1.5, "ping", []],
        [1, 1, None, "pong"],
        [2, "tcp.event"],
        [3, 1, "ping", []],
        ["0", 1, "ping", []],
        [False, 1, "ping", []],  # false is not the integer 0
        [0.0, 1, "ping", []],  # nor is 0.0
        None,
        42,
        "ping",
        b"\x00\x01",
    ],
    ids=repr,
)
def test_wrong_shape_closes_that_client(d: Daemon, frame: Any) -> None:
    with RawConn((d.host, d.port)) as raw:
        raw.send(msgpack.packb(frame, use_bin_type=True))
        try:
            answer = raw.read_message()
        except EOFError:
            return  # closed with no answer: no msgid was known
        raise AssertionError(f"{frame!r} was served ({answer!r}) instead of closing")


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        ([0, 1, "ping", "notalist"], "params"),
        ([0, 1, "ping", {"a": 1}], "params"),
        ([0, 1, "ping", None], "params"),
        ([0, 1, 5, []], "method"),
        ([0, 1, None, []], "method"),
        ([0, 1, ["ping"], []], "method"),
    ],
)
def test_wrong_shape_with_a_msgid_gets_an_error_then_close(d: Daemon, frame: Any, why: str) -> None:
    with RawConn((d.host, d.port)) as raw:
        raw.send(msgpack.packb(frame))
        messages = read_until_closed(raw)
    # the msgid is known: an INVALID_PARAMS error to msgid 1, then the close
    [msg] = messages
    assert msg[:2] == [1, 1] and msg[3] is None
    assert msg[2][0] == 2 and msg[2][1] == f"INVALID_PARAMS: {why} must be " + (
        "an array" if why == "params" else "str or bin"
    ), msg


def test_nesting_too_deep_and_declared_lengths_over_the_limit(d: Daemon) -> None:
    for data in (
        b"\x91" * 100_000,  # arrays nested 100k deep
        b"\xdd\x7f\xff\xff\xff",  # an array declaring 2**31 elements
        b"\x94\x00\x01\xa4ping\xdd\x7f\xff\xff\xff",  # params declaring 2**31 elements
    ):
        with RawConn((d.host, d.port)) as raw:
            raw.send(data)
            assert read_until_closed(raw) == []


def test_request_split_into_single_bytes(d: Daemon) -> None:
    frame = msgpack.packb([0, 3, "stack.info", []]) + msgpack.packb([0, 4, "ping", []])
    with RawConn((d.host, d.port)) as raw:
        raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(frame)):
            raw.send(frame[i : i + 1])
        first, second = raw.read_message(), raw.read_message()
        assert first[:3] == [1, 3, None] and first[3]["contract"] == 1
        assert second == [1, 4, None, "pong"]


def test_notifications_and_bin_method_names(d: Daemon) -> None:
    with RawConn((d.host, d.port)) as raw:
        # unknown notifications are ignored, never answered; the connection stays usable
        raw.send(msgpack.packb([2, "no.such.thing", [1, 2]]) + msgpack.packb([2, "ping", []]))
        raw.send(msgpack.packb([2, b"\xff\xfe", []], use_bin_type=True))
        # method names as bin are accepted
        assert raw.call(5, b"ping", []) == [1, 5, None, "pong"]
        assert raw.call(6, "ping", []) == [1, 6, None, "pong"]


def test_frame_over_the_limit(d: Daemon) -> None:
    big = msgpack.packb([0, 1, "tcp.send", [1, b"\x00" * (2 * MAX_MESSAGE)]], use_bin_type=True)
    with RawConn((d.host, d.port)) as raw:
        with closed_first_is_fine():  # the daemon closes while we still write
            raw.send(big)
        messages = read_until_closed(raw)
    # the request's msgid was known from its first bytes: LIMIT for it, then the close
    assert messages == [[1, 1, [6, f"LIMIT: a message is larger than {MAX_MESSAGE} bytes"], None]]
    # just under the limit is an ordinary request
    fits = b"\x00" * (MAX_MESSAGE - 1024)
    with RawConn((d.host, d.port)) as raw:
        reply = raw.call(2, "tcp.send", [999_999, fits])
        assert reply[:2] == [1, 2]
        assert reply[2][0] == 3 and reply[2][1].startswith("NOT_FOUND"), reply
        assert raw.call(3, "ping", []) == [1, 3, None, "pong"]


def test_one_megabyte_method_name(d: Daemon) -> None:
    name = "m" * 1_000_000
    with RawConn((d.host, d.port)) as raw:
        reply = raw.call(9, name, [])
        assert reply[:2] == [1, 9] and reply[3] is None
        code, message = reply[2]
        assert code == 1 and message.startswith("NO_METHOD"), message[:100]
        assert len(message) < 1000  # the name is not echoed back whole
        # as bin too; and the connection is still good
        reply = raw.call(10, name.encode(), [])
        assert reply[2][0] == 1
        assert raw.call(11, "ping", []) == [1, 11, None, "pong"]


def invalid_cases(conn: int, listener: int) -> list[tuple[str, list[Any]]]:
    return [
        ("ping", [1]),
        ("auth", []),
        ("auth", [5]),
        ("auth", ["a", "b"]),
        ("stack.info", [1]),
        ("stack.stats", [None]),
        ("tcp.list", [1]),
        ("fault.list", [1]),
        ("tcp.connect", []),
        ("tcp.connect", [HOST]),
        ("tcp.connect", [5, 80]),
        ("tcp.connect", ["", 80]),
        ("tcp.connect", [HOST, "80"]),
        ("tcp.connect", [HOST, 0]),
        ("tcp.connect", [HOST, 70000]),
        ("tcp.connect", [HOST, True]),
        ("tcp.connect", [HOST, 80.0]),
        ("tcp.connect", [HOST, 80, "offload"]),
        ("tcp.connect", [HOST, 80, {"bogus": 1}]),
        ("tcp.connect", [HOST, 80, {"offload": "yes"}]),
        ("tcp.connect", [HOST, 80, {}, 1]),
        ("tcp.listen", [HOST, -1]),
        ("tcp.listen", [HOST]),
        ("tcp.listener_info", []),
        ("tcp.listener_info", ["1"]),
        ("tcp.accept", [1.5]),
        ("tcp.accept", [listener, -1]),
        ("tcp.accept", [listener, "soon"]),
        ("tcp.offload", []),
        ("tcp.offload", [conn, 1]),
        ("tcp.upload", ["1"]),
        ("tcp.send", [conn]),
        ("tcp.send", ["x", b"d"]),
        ("tcp.send", [conn, 5]),
        ("tcp.send", [conn, None]),
        ("tcp.send", [conn, [1, 2]]),
        ("tcp.send", [True, b"x"]),
        ("tcp.send", [0, b"x"]),
        ("tcp.send", [-1, b"x"]),
        ("tcp.send", [1 << 63, b"x"]),
        ("tcp.recv", [conn]),
        ("tcp.recv", [conn, 0]),
        ("tcp.recv", [conn, -5]),
        ("tcp.recv", [conn, "10"]),
        ("tcp.recv", [conn, 10, -1]),
        ("tcp.recv", [conn, 10, "soon"]),
        ("tcp.recv", [conn, 10, 10**12]),
        ("tcp.recv", [conn, 1 << 40]),
        ("tcp.disconnect", [conn, "yes"]),
        ("tcp.disconnect", [conn, 1]),
        ("tcp.disconnect", []),
        ("tcp.close", []),
        ("tcp.close", [conn, conn]),
        ("tcp.info", [{}]),
        ("trace.get", [conn, 0]),
        ("trace.get", [conn, "x"]),
        ("trace.get", [conn, 1, 2]),
        ("events.subscribe", []),
        ("events.subscribe", [None]),
        ("events.subscribe", ["all"]),
        ("fault.inject", []),
        ("fault.inject", ["peer_reset"]),
        ("fault.inject", [{"kind": 5}]),
        ("fault.inject", [{}]),
        ("fault.clear", []),
        ("fault.clear", [0]),
        ("fault.clear", ["x"]),
        ("fault.clear", [None]),
    ]


def test_wrong_arity_and_types(d: Daemon) -> None:
    with peer_process("sink") as (_, port), RawConn((d.host, d.port)) as raw:
        reply = raw.call(1, "tcp.connect", [HOST, port])
        assert reply[2] is None, reply
        conn = reply[3]
        reply = raw.call(2, "tcp.listen", [HOST, 0])
        assert reply[2] is None, reply
        listener = reply[3]
        msgid = 100
        for method, params in invalid_cases(conn, listener):
            msgid += 1
            reply = raw.call(msgid, method, params)
            check_wellformed(reply)
            assert reply[:2] == [1, msgid]
            assert reply[2] is not None, (method, params, reply)
            code, message = reply[2]
            assert code == 2, (method, params, reply)
            assert message.startswith("INVALID_PARAMS"), (method, params, message)
        # the connection and the daemon are fine
        assert raw.call(3, "tcp.info", [conn])[3]["state"] == "offloaded"
        assert raw.call(4, "tcp.close", [conn]) == [1, 4, None, True]


def write_without_reading(sock: socket.socket, payload: bytes) -> int:
    """Write as much of `payload` as the daemon takes, never reading; stop once it has taken
    nothing for a while (it paused us). Returns the bytes written."""
    sock.setblocking(False)
    sent = 0
    stuck_since: float | None = None
    while sent < len(payload):
        try:
            sent += sock.send(payload[sent : sent + 65536])
            stuck_since = None
        except BlockingIOError:
            now = time.monotonic()
            if stuck_since is None:
                stuck_since = now
            elif now - stuck_since > 1.0:
                break
            select.select([], [sock], [], 0.1)
    return sent


def read_responses(sock: socket.socket, payload: bytes, sent: int, expected: int) -> list[Any]:
    """Read responses (writing the rest of `payload` as the daemon makes room) until `expected`
    arrived or the daemon closed the connection."""
    unpacker = msgpack.Unpacker(raw=False)
    responses: list[Any] = []
    deadline = time.monotonic() + 60
    while len(responses) < expected and time.monotonic() < deadline:
        want_write = [sock] if sent < len(payload) else []
        readable, writable, _ = select.select([sock], want_write, [], 1.0)
        if writable:
            with contextlib.suppress(BlockingIOError):
                sent += sock.send(payload[sent : sent + 65536])
        if readable:
            try:
                data = sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            unpacker.feed(data)
            responses.extend(unpacker)
    return responses


def test_flood_of_pings_without_reading(d: Daemon) -> None:
    n = 50_000
    rss_before = d.rss_kb()
    payload = b"".join(msgpack.packb([0, i, "ping", []]) for i in range(n))
    with socket.create_connection((d.host, d.port)) as sock:
        sent = write_without_reading(sock, payload)
        assert_daemon_serves(d)  # another client is served while the flooder reads nothing
        responses = read_responses(sock, payload, sent, n)
    for r in responses:
        check_wellformed(r)
    # every ping answered once (a clean disconnect would end the list early: then none is bad)
    assert len(responses) == n
    assert sorted(r[1] for r in responses) == list(range(n))
    assert all(r[3] == "pong" for r in responses)
    assert d.rss_peak_kb() - rss_before < 200 * 1024, (rss_before, d.rss_peak_kb())


def test_flood_with_large_answers_is_paused(d: Daemon) -> None:
    """200k `trace.get` requests (17 bytes each, ~6 KB answers) written without reading: left
    unpaused the daemon would hold over 1 GB of answers; paused, it holds a few MB."""
    with peer_process("echo") as (_, port), RawConn((d.host, d.port)) as raw:
        conn = raw.call(1, "tcp.connect", [HOST, port])[3]
        for i in range(8):  # fill the connection's hop trace
            assert raw.call(2, "tcp.send", [conn, b"x" * (i + 1)])[3] == i + 1
            assert raw.call(3, "tcp.recv", [conn, 100, 10_000])[3]
        answer = raw.call(4, "trace.get", [conn])
        assert len(msgpack.packb(answer)) > 4000
        n = 200_000
        payload = b"".join(msgpack.packb([0, i, "trace.get", [conn]]) for i in range(n))
        rss_before = d.rss_kb()
        write_without_reading(raw.sock, payload)
        time.sleep(0.5)  # let the daemon do whatever it is going to do with what it read
        assert_daemon_serves(d)
        growth = d.rss_peak_kb() - rss_before
        assert growth < 300 * 1024, f"daemon grew by {growth} kB while the client did not read"
        # the flooder reads some answers, then goes away with the rest unread
        raw.sock.setblocking(True)
        raw.sock.settimeout(20)
        for _ in range(10):
            check_wellformed(raw.read_message())
    # its connection is closed and freed; the daemon serves others
    with RawConn((d.host, d.port)) as other:
        for msgid in range(200):
            stats = other.call(msgid, "stack.stats", [])[3]
            if stats["connections"] == 0:
                break
            time.sleep(0.05)
        assert stats["connections"] == 0, stats
    assert_daemon_serves(d)


# -- fuzz ----------------------------------------------------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.integers(-5, 5), children, max_size=4)
    ),
    max_leaves=12,
)
requests = st.tuples(
    st.sampled_from([0, 2, 1, 3, -1]),
    st.integers(min_value=-1, max_value=(1 << 32)) | values,
    st.sampled_from(METHODS) | st.text(max_size=12) | st.binary(max_size=12) | values,
    st.lists(values, max_size=4) | values,
).map(list)
payloads = st.lists(values | requests, min_size=1, max_size=4)


def throw(address: tuple[str, int], data: bytes, timeout: float = 20) -> list[Any]:
    """Send `data` and a ping, end our stream, and read every answer until the daemon closes.
    A daemon that hangs (neither answers nor closes within `timeout`) raises TimeoutError."""
    with RawConn(address, timeout=timeout) as raw:
        with closed_first_is_fine():
            raw.send(data)
            raw.send(msgpack.packb([0, 4242, "ping", []]))
            raw.sock.shutdown(socket.SHUT_WR)  # our end of stream: the daemon finishes up
        return read_until_closed(raw)


def test_throw_fails_on_a_server_that_hangs() -> None:
    """The fuzz helper cannot pass against a server that reads and never closes."""
    with socket.create_server((HOST, 0)) as hung, pytest.raises(TimeoutError):
        throw(hung.getsockname()[:2], b"\xc1", timeout=0.5)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(min_size=1, max_size=300))
def test_fuzz_random_bytes(module_daemon: Daemon, data: bytes) -> None:
    throw((module_daemon.host, module_daemon.port), data)
    assert_daemon_serves(module_daemon)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(objs=payloads, bin_type=st.booleans())
def test_fuzz_random_msgpack_values(module_daemon: Daemon, objs: list[Any], bin_type: bool) -> None:
    data = b"".join(msgpack.packb(o, use_bin_type=bin_type) for o in objs)
    throw((module_daemon.host, module_daemon.port), data)
    assert_daemon_serves(module_daemon)
