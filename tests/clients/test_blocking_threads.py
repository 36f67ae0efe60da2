"""Client (blocking) shared between threads: calls take turns, none hangs or gets another's
answer; close() from another thread ends a blocked call."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from chimney_client import Client
from chimney_client.errors import CallTimeout, ConnectionLost
from tests.clients.mini_server import MiniServer
from tests.clients.scripted import HANG, listener_address, run_in_thread, silent_listener


def test_four_threads_on_one_client(server: MiniServer) -> None:
    c = Client.connect(server.address)
    errors: list[Any] = []

    def work(i: int) -> None:
        for j in range(50):
            r = c.call("test.delay", 0.001 * ((i + j) % 3), [i, j])
            if r != [i, j]:
                errors.append((i, j, r))

    threads = [run_in_thread(lambda i=i: work(i))[0] for i in range(4)]  # type: ignore[misc]
    for t in threads:
        t.join(HANG * 2)
    hung = sum(t.is_alive() for t in threads)
    c._sock.shutdown(socket.SHUT_RDWR)  # wakes a stuck recv
    for t in threads:
        t.join(5)
    c.close()
    assert hung == 0 and not errors, f"{hung} of 4 threads blocked forever; wrong answers {errors}"


def test_waiting_for_another_threads_call_counts_against_the_timeout() -> None:
    lst = silent_listener()
    c = Client.connect(listener_address(lst))
    first, _ = run_in_thread(lambda: c.call("ping"))  # no timeout: holds the client
    while not c._codec.pending and first.is_alive():  # sent, waiting, holding the client
        first.join(0.01)
    t, out = run_in_thread(lambda: c.call("ping", timeout=0.2))
    t.join(HANG)
    assert not t.is_alive()
    assert isinstance(out[0], CallTimeout), out
    c.close()
    first.join(HANG)
    assert not first.is_alive()
    lst.close()


def test_close_from_another_thread_ends_a_blocked_call() -> None:
    lst = silent_listener()
    c = Client.connect(listener_address(lst))
    t, out = run_in_thread(lambda: c.call("ping"))
    while not c._codec.pending and t.is_alive():
        t.join(0.01)
    c.close()
    t.join(HANG)
    hung = t.is_alive()
    lst.close()
    assert not hung, "close() did not wake the call blocked in another thread"
    assert isinstance(out[0], ConnectionLost), out
    with pytest.raises(ConnectionLost):
        c.ping()
