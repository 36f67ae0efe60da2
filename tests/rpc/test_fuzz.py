"""Fuzz: random bytes and random msgpack values thrown at a live server (FakeEngine behind it);
after each example another client must still get ping → "pong", and every message the server
sent must be a well-formed response or notification with no INTERNAL error."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chimneyd.rpc.methods import METHODS
from tests.rpc.support import HOST, Served, start, stop

CLOSED_FIRST = frozenset({errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN})
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
}


class ThreadedServer:
    """The server on its own uvloop in a thread, so hypothesis can drive it with plain sockets."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.ready = threading.Event()
        self.served: Served | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def begin() -> None:
            # small limits, so the fuzz also reaches the limit paths
            self.served = await start(
                max_message_bytes=64 * 1024, max_in_flight=8, max_connections_per_client=4
            )
            self.ready.set()

        self.loop.run_until_complete(begin())
        self.loop.run_forever()

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        assert self.ready.wait(10), "the server did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.served is not None
        asyncio.run_coroutine_threadsafe(stop(self.served), self.loop).result(20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def address(self) -> tuple[str, int]:
        assert self.served is not None
        return self.served.address


@pytest.fixture(scope="module")
def live() -> Iterator[ThreadedServer]:
    with ThreadedServer() as server:
        yield server


def check_wellformed(msg: Any) -> None:
    assert isinstance(msg, list), msg
    if msg[0] == 2:
        assert len(msg) == 3 and msg[1] == "tcp.event" and isinstance(msg[2], list), msg
        return
    assert msg[0] == 1 and len(msg) == 4, msg
    _, msgid, error, result = msg
    assert isinstance(msgid, int) and 0 <= msgid < 1 << 32, msg
    if error is not None:
        code, message = error
        assert code in SYMBOLS, f"unexpected error (INTERNAL is a bug): {msg}"
        assert message.startswith(SYMBOLS[code] + ": "), msg
        assert result is None, msg


def throw(address: tuple[str, int], data: bytes) -> None:
    """Send `data` then end the stream; read and check all the server says until it closes."""
    with socket.create_connection(address, timeout=10) as sock:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # the server takes the end of stream as goodbye
        except OSError as exc:  # the server closed first; a timeout (a hang) is a failure
            if isinstance(exc, TimeoutError) or exc.errno not in CLOSED_FIRST:
                raise
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 16):
                unpacker.feed(chunk)
                for msg in unpacker:
                    check_wellformed(msg)
    another_client_pings(address)


def another_client_pings(address: tuple[str, int]) -> None:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(msgpack.packb([0, 7, "ping", []]))
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            chunk = sock.recv(1024)
            assert chunk, "the server closed an innocent client"
            unpacker.feed(chunk)
            for msg in unpacker:
                assert msg == [1, 7, None, "pong"]
                return


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
# shaped like requests, so the method table's checks are fuzzed too (small timeouts keep waits
# short; the server cancels what is left when the stream ends anyway)
requests = st.tuples(
    st.sampled_from([0, 0, 0, 2, 1, 3, -1, False, 0.0]),
    st.integers(min_value=-1, max_value=1 << 32) | values,
    st.sampled_from(sorted(METHODS)) | st.text(max_size=12) | st.binary(max_size=12) | values,
    st.lists(values | st.integers(1, 3), max_size=4) | values,
).map(list)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(min_size=1, max_size=400))
def test_fuzz_random_bytes(live: ThreadedServer, data: bytes) -> None:
    throw(live.address, data)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(objs=st.lists(values | requests, min_size=1, max_size=5), bin_type=st.booleans())
def test_fuzz_random_msgpack_values(live: ThreadedServer, objs: list[Any], bin_type: bool) -> None:
    data = b"".join(msgpack.packb(o, use_bin_type=bin_type) for o in objs)
    throw(live.address, data)


def test_after_the_fuzz_a_client_still_works(live: ThreadedServer) -> None:
    """A full round on a fresh client once the fuzz is done (the module fixture is shared)."""
    another_client_pings(live.address)
    with socket.create_connection(live.address, timeout=10) as sock:
        sock.sendall(msgpack.packb([0, 1, "tcp.connect", [HOST, 9000]]))
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            unpacker.feed(sock.recv(1024))
            msgs = list(unpacker)
            if msgs:
                break
        assert msgs[0][2] is None and isinstance(msgs[0][3], int)
