"""Client (blocking): call_timeout and the connect timeout hold, whatever the daemon does."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from chimney_client import Client, RpcTimeout
from chimney_client.errors import CallTimeout, ConnectionLost
from tests.clients.scripted import (
    HANG,
    ThreadServer,
    listener_address,
    reply,
    run_in_thread,
    silent_listener,
)


def test_connect_timeout_covers_auth() -> None:
    lst = silent_listener()
    t, out = run_in_thread(
        lambda: Client.connect(listener_address(lst), timeout=0.3, token="secret")
    )
    t.join(HANG)
    hung = t.is_alive()
    conn, _ = lst.accept()
    conn.close()  # unblocks the client if it hangs
    lst.close()
    t.join(5)
    assert not hung, "Client.connect(timeout=0.3, token=…) still waiting after 3 s"
    assert isinstance(out[0], ConnectionLost) and "auth" in str(out[0]), out


def test_call_timeout_holds_on_send() -> None:
    """call_timeout bounds sending: a large send to a daemon that does not read ends with
    CallTimeout; half a request is then on the wire, so the connection is closed."""
    lst = silent_listener()
    c = Client.connect(listener_address(lst), call_timeout=0.3)
    conn, _ = lst.accept()
    t, out = run_in_thread(lambda: c.call("tcp.send", 1, b"x" * (64 << 20)))
    t.join(HANG)
    hung = t.is_alive()
    conn.close()
    lst.close()
    t.join(5)
    assert not hung, "call with call_timeout=0.3 still blocked in send after 3 s"
    assert isinstance(out[0], CallTimeout), out
    assert c.closed
    with pytest.raises(ConnectionLost, match="cut part-way"):
        c.ping()
    c.close()


def test_a_send_timeout_with_nothing_sent_keeps_the_connection() -> None:
    """A call that could not send a byte in its time leaves the stream whole: CallTimeout,
    and the connection stays open."""
    lst = silent_listener()
    c = Client.connect(listener_address(lst))
    conn, _ = lst.accept()
    c._sock.setblocking(False)
    try:  # fill the socket buffers with whole one-byte frames (msgpack nil)
        while True:
            c._sock.send(b"\xc0" * 65536)
    except BlockingIOError:
        pass
    t, out = run_in_thread(lambda: c.call("ping", timeout=0.1))
    t.join(HANG)
    hung, closed = t.is_alive(), c.closed
    conn.close()  # unblocks the client if it hangs
    t.join(5)
    lst.close()
    assert not hung, "call(timeout=0.1) still blocked in send after 3 s"
    assert isinstance(out[0], CallTimeout) and "not sent" in str(out[0]), out
    assert not closed and c._codec.pending == 0  # nothing went out: the stream is whole
    c.close()


def _flood(frame: bytes) -> tuple[socket.socket, threading.Event, threading.Thread]:
    """A server that, once connected, sends `frame` over and over as fast as it is read."""
    lst = silent_listener()
    stop = threading.Event()

    def serve() -> None:
        conn, _ = lst.accept()
        with conn:
            while not stop.is_set():
                try:
                    conn.sendall(frame * 2000)
                except OSError:
                    return

    feeder = threading.Thread(target=serve, daemon=True)
    feeder.start()
    return lst, stop, feeder


EVENT = msgpack.packb([2, "tcp.event", [1, "offloaded", {}]])


def _under_flood(
    frame: bytes, act: Callable[[Client], Any], settle: float = 0.0, **connect: Any
) -> tuple[bool, list[Any], Client]:
    """Run `act` on a client whose server sends `frame` over and over: whether it was still
    running after HANG s, what it ended with, and the client (closed)."""
    lst, stop, feeder = _flood(frame)
    c = Client.connect(listener_address(lst), **connect)
    time.sleep(settle)
    t, out = run_in_thread(lambda: act(c))
    t.join(HANG)
    hung = t.is_alive()
    c.close()
    stop.set()
    feeder.join(5)
    t.join(5)
    lst.close()
    return hung, out, c


def test_call_timeout_holds_under_a_stream_of_events() -> None:
    """Events keep coming but the answer does not: the call still ends with CallTimeout."""
    hung, out, _ = _under_flood(EVENT, lambda c: c.call("ping"), call_timeout=0.3)
    assert not hung, "call_timeout=0.3 but still waiting after 3 s"
    assert isinstance(out[0], CallTimeout), out


def test_wait_notification_timeout_holds_under_a_stream_of_late_answers() -> None:
    """Bytes that are no notification (answers nobody waits for) do not extend the wait."""
    late = msgpack.packb([1, 999, None, "late"])
    hung, out, _ = _under_flood(late, lambda c: c.wait_notification(0.3))
    assert not hung, "wait_notification(0.3) still waiting after 3 s"
    assert out == [None]


class _TimingOut:
    def __init__(self) -> None:
        self.requests: list[tuple[str, list[Any]]] = []
        self.early = False

    def __call__(self, conn: socket.socket, msgid: int, method: str, params: list[Any]) -> None:
        """TIMEOUT once the wait sent has run out, as the daemon; at once with `early`."""
        self.requests.append((method, params))
        wait = params[-1] if method in ("tcp.recv", "tcp.accept") else None
        if self.early or not isinstance(wait, int):
            reply(conn, msgid, error=[7, "TIMEOUT: cancelled: the daemon is stopping"])
            return
        time.sleep(wait / 1000)
        reply(conn, msgid, error=[7, f"TIMEOUT: {method} timed out"])


def test_recv_and_accept_pass_the_call_timeout_to_the_daemon() -> None:
    """As AsyncClient: no timeout_ms with call_timeout set sends it as timeout_ms, and the
    daemon's TIMEOUT answer is CallTimeout (the daemon kept the bytes)."""
    script = _TimingOut()
    srv = ThreadServer(script)
    try:
        with Client.connect(srv.address, call_timeout=0.25) as c:
            with pytest.raises(CallTimeout) as caught:
                c.tcp_recv(7, 100)
            assert isinstance(caught.value.__cause__, RpcTimeout)
            with pytest.raises(CallTimeout):
                c.tcp_accept(3)
            with pytest.raises(RpcTimeout):
                c.tcp_recv(7, 100, 50)
            script.early = True  # the daemon ends the wait early: its own answer, as it is
            with pytest.raises(RpcTimeout) as early:
                c.tcp_recv(7, 100)
            assert not isinstance(early.value, CallTimeout) and "stopping" in str(early.value)
    finally:
        srv.close()
    assert script.requests == [
        ("tcp.recv", [7, 100, 250]),
        ("tcp.accept", [3, 250]),
        ("tcp.recv", [7, 100, 50]),
        ("tcp.recv", [7, 100, 250]),
    ]


def test_poll_returns_under_a_stream_of_events() -> None:
    """poll() reads what had arrived when it was called, not everything that keeps coming."""
    hung, _, c = _under_flood(EVENT, Client.poll, settle=0.05)  # some are there before it
    assert not hung, "poll() still reading after 3 s"
    assert c.notifications, "poll() read none of the events that had arrived"
