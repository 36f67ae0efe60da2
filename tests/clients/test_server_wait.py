"""Calls that wait in the daemon (`tcp.recv`, `tcp.accept`), raw or typed, in both clients: the
call's timeout goes to the daemon as `timeout_ms` (so a timeout loses nothing, contract
tcp.recv), and which TIMEOUT answer is the call timing out does not depend on the clock."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from chimney_client import AsyncClient, Client, RpcTimeout
from chimney_client.errors import CallTimeout
from tests.clients.scripted import (
    HANG,
    ThreadServer,
    address,
    answer,
    reply,
    response,
    scripted_server,
)

#: what chimneyd answers when the wait it was sent runs out, and when it is stopping
WAIT_RAN_OUT = [7, "TIMEOUT: nothing arrived on connection 7"]
STOPPING = [7, "TIMEOUT: cancelled: the daemon is stopping"]


def _wait_of(method: str, params: list[Any]) -> Any:
    index = {"tcp.recv": 2, "tcp.accept": 1}.get(method)
    return params[index] if index is not None and len(params) > index else None


class _Daemon:
    """Answers `tcp.recv`/`tcp.accept` with TIMEOUT `error` after `share` of the wait it was
    sent (or 0.3 s without one). `share` < 1: a daemon whose loop clock was stale when it set
    its timer (uvloop's `call_later` counts from the time cached at the start of the loop
    turn), so its timer fired before the wait had run out by the client's clock."""

    def __init__(self, error: list[Any], share: float = 1.0) -> None:
        self.error = error
        self.share = share
        self.requests: list[tuple[str, list[Any]]] = []

    def delay(self, method: str, params: list[Any]) -> float:
        self.requests.append((method, params))
        wait = _wait_of(method, params)
        return (wait / 1000 if isinstance(wait, int | float) else 0.3) * self.share

    def __call__(self, t: Any, msgid: int, method: str, params: list[Any]) -> None:
        asyncio.get_running_loop().call_later(
            self.delay(method, params), lambda: answer(t, msgid, error=self.error)
        )


class _ThreadDaemon(_Daemon):
    def blocking(self, conn: socket.socket, msgid: int, method: str, params: list[Any]) -> None:
        timer = threading.Timer(
            self.delay(method, params), lambda: reply(conn, msgid, error=self.error)
        )
        timer.daemon = True
        timer.start()


# -- raw calls pass their timeout to the daemon ------------------------------------------------
#: what either client sends for the raw calls of the two tests below (call_timeout 0.25 s)
RAW_CALLS_SENT = [
    ("tcp.recv", [7, 100, 250]),
    ("tcp.accept", [3, 100]),
    ("tcp.recv", [7, 10, 250, {"waitall": True}]),
    ("tcp.recv", [7, 100, 50]),
]


async def test_a_raw_recv_or_accept_call_sends_its_timeout_as_timeout_ms() -> None:
    daemon = _Daemon(WAIT_RAN_OUT)
    srv = await scripted_server(daemon)
    try:
        c = await AsyncClient.connect(address(srv), call_timeout=0.25)
        with pytest.raises(CallTimeout) as caught:
            await asyncio.wait_for(c.call("tcp.recv", 7, 100), HANG)
        assert isinstance(caught.value.__cause__, RpcTimeout)
        with pytest.raises(CallTimeout):
            await asyncio.wait_for(c.call("tcp.accept", 3, timeout=0.1), HANG)
        with pytest.raises(CallTimeout):  # a nil timeout_ms before opts is filled in
            await asyncio.wait_for(c.call("tcp.recv", 7, 10, None, {"waitall": True}), HANG)
        with pytest.raises(RpcTimeout) as own:  # the caller's own timeout_ms: kept as sent
            await asyncio.wait_for(c.call("tcp.recv", 7, 100, 50), HANG)
        assert not isinstance(own.value, CallTimeout)
        await c.close()
    finally:
        srv.close()
    assert daemon.requests == RAW_CALLS_SENT


def test_a_raw_recv_or_accept_call_of_the_blocking_client_sends_its_timeout() -> None:
    daemon = _ThreadDaemon(WAIT_RAN_OUT)
    srv = ThreadServer(daemon.blocking)
    try:
        with Client.connect(srv.address, call_timeout=0.25) as c:
            with pytest.raises(CallTimeout) as caught:
                c.call("tcp.recv", 7, 100)
            assert isinstance(caught.value.__cause__, RpcTimeout)
            with pytest.raises(CallTimeout):
                c.call("tcp.accept", 3, timeout=0.1)
            with pytest.raises(CallTimeout):
                c.call("tcp.recv", 7, 10, None, {"waitall": True})
            with pytest.raises(RpcTimeout) as own:
                c.call("tcp.recv", 7, 100, 50)
            assert not isinstance(own.value, CallTimeout)
    finally:
        srv.close()
    assert daemon.requests == RAW_CALLS_SENT


# -- which TIMEOUT is the call's: by what the daemon said, not by the clock --------------------
async def test_the_wait_running_out_early_by_the_clients_clock_is_still_a_call_timeout() -> None:
    srv = await scripted_server(_Daemon(WAIT_RAN_OUT, share=0.5))
    try:
        c = await AsyncClient.connect(address(srv), call_timeout=0.4)
        with pytest.raises(CallTimeout):
            await asyncio.wait_for(c.tcp_recv(7, 100), HANG)
        with pytest.raises(CallTimeout):
            await asyncio.wait_for(c.tcp_accept(3), HANG)
        await c.close()
    finally:
        srv.close()


async def test_a_stopping_daemon_answered_late_is_the_daemons_timeout() -> None:
    """The daemon cancelled the wait (it is stopping); its answer is read after the wait would
    have run out (a busy client): still the daemon's TIMEOUT, not the call's."""
    srv = await scripted_server(_Daemon(STOPPING, share=1.5))
    try:
        c = await AsyncClient.connect(address(srv), call_timeout=0.2)
        with pytest.raises(RpcTimeout) as caught:
            await asyncio.wait_for(c.tcp_recv(7, 100), HANG)
        assert not isinstance(caught.value, CallTimeout) and "stopping" in str(caught.value)
        await c.close()
    finally:
        srv.close()


def test_the_blocking_client_tells_the_call_timeout_by_the_answer_too() -> None:
    early = _ThreadDaemon(WAIT_RAN_OUT, share=0.5)
    srv = ThreadServer(early.blocking)
    try:
        with Client.connect(srv.address, call_timeout=0.4) as c, pytest.raises(CallTimeout):
            c.tcp_recv(7, 100)
    finally:
        srv.close()
    late = _ThreadDaemon(STOPPING, share=1.5)
    srv = ThreadServer(late.blocking)
    try:
        with Client.connect(srv.address, call_timeout=0.2) as c:
            with pytest.raises(RpcTimeout) as caught:
                c.tcp_recv(7, 100)
            assert not isinstance(caught.value, CallTimeout)
    finally:
        srv.close()


@pytest.mark.parametrize("timeout_ms", [None, 250])
async def test_tcp_recv_waitall_is_sent_as_the_contracts_opts(timeout_ms: int | None) -> None:
    """`tcp_recv(..., waitall=True)` sends `{"waitall": true}` as the fourth param (docs/rpc.md
    tcp.recv), with the call's timeout as `timeout_ms` when none is given; the blocking
    client sends the same."""
    seen: list[list[Any]] = []

    def on_request(transport: Any, msgid: int, method: str, params: list[Any]) -> None:
        seen.append(params)
        transport.write(response(msgid, b"0123456789"))

    srv = await scripted_server(on_request)
    try:
        c = await AsyncClient.connect(address(srv), call_timeout=2.0)
        try:
            assert await c.tcp_recv(1, 10, timeout_ms, waitall=True) == b"0123456789"
            assert await c.tcp_recv(1, 10, timeout_ms) == b"0123456789"
        finally:
            await c.close()

        def blocking() -> bytes:
            with Client.connect(address(srv), call_timeout=2.0) as b:
                return b.tcp_recv(1, 10, timeout_ms, waitall=True)

        assert await asyncio.to_thread(blocking) == b"0123456789"
    finally:
        srv.close()
    wait = 2000 if timeout_ms is None else timeout_ms
    assert seen == [
        [1, 10, wait, {"waitall": True}],
        [1, 10, wait],
        [1, 10, wait, {"waitall": True}],
    ]
