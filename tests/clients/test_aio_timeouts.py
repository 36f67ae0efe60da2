"""AsyncClient: every timeout it promises holds, whatever the daemon does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chimney_client import AsyncClient, RpcTimeout
from chimney_client.errors import CallTimeout, ConnectionLost
from tests.clients.scripted import (
    HANG,
    address,
    answer,
    listener_address,
    scripted_server,
    silent_listener,
)


async def test_call_timeout_holds_while_writing_is_paused() -> None:
    """The daemon stops reading (docs/rpc.md: a client that stops reading is paused): a call
    made while the write buffer is full still ends with CallTimeout in its time."""
    lst = silent_listener()
    try:
        c = await AsyncClient.connect(listener_address(lst))
        with pytest.raises(CallTimeout):
            await c.call("tcp.send", 1, b"x" * (32 << 20), timeout=0.2)  # fills the buffers
        assert c._write_paused is not None
        with pytest.raises(CallTimeout, match="not sent"):
            await asyncio.wait_for(c.call("ping", timeout=0.2), HANG)
        assert c.pending == 0 and not c.closed  # nothing of the ping went out: still usable
        await c.close(timeout=0)
    finally:
        lst.close()


async def test_connect_timeout_covers_auth() -> None:
    """`connect(timeout=…, token=…)` to a server that accepts but never answers gives up within
    the connect timeout, as ConnectionLost (what a connect timeout raises)."""
    srv = await scripted_server(lambda t, msgid, method, params: None)
    try:
        with pytest.raises(ConnectionLost, match="auth"):
            await asyncio.wait_for(
                AsyncClient.connect(address(srv), timeout=0.3, token="secret"), HANG
            )
    finally:
        srv.close()


async def test_a_shorter_call_timeout_still_bounds_auth() -> None:
    srv = await scripted_server(lambda t, msgid, method, params: None)
    try:
        with pytest.raises(CallTimeout):
            await asyncio.wait_for(
                AsyncClient.connect(address(srv), timeout=60, token="secret", call_timeout=0.1),
                HANG,
            )
    finally:
        srv.close()


class _TimingOut:
    """Answers every request with the daemon's TIMEOUT, as the daemon does: once the wait it
    was sent (`timeout_ms`, the last param) has run out; at once with `early` (a daemon that
    is stopping). Keeps what it was sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[Any]]] = []
        self.early = False

    def __call__(self, t: Any, msgid: int, method: str, params: list[Any]) -> None:
        self.requests.append((method, params))
        wait = params[2] if method == "tcp.recv" and len(params) > 2 else None
        wait = params[1] if method == "tcp.accept" and len(params) > 1 else wait
        error = [7, f"TIMEOUT: {method} timed out"]
        if self.early or wait is None:
            answer(t, msgid, error=[7, "TIMEOUT: cancelled: the daemon is stopping"])
        else:
            asyncio.get_running_loop().call_later(
                wait / 1000, lambda: answer(t, msgid, error=error)
            )


async def test_recv_and_accept_pass_the_call_timeout_to_the_daemon() -> None:
    """With call_timeout and no timeout_ms, the daemon is asked to time out itself (so it keeps
    the bytes, contract tcp.recv); its TIMEOUT is then the call timing out: CallTimeout."""
    server = _TimingOut()
    srv = await scripted_server(server)
    try:
        c = await AsyncClient.connect(address(srv), call_timeout=0.25)
        with pytest.raises(CallTimeout) as caught:
            await c.tcp_recv(7, 100)
        assert isinstance(caught.value.__cause__, RpcTimeout)
        with pytest.raises(CallTimeout):
            await c.tcp_accept(3)
        with pytest.raises(RpcTimeout):  # the caller's own timeout_ms: the daemon's answer
            await c.tcp_recv(7, 100, 50)
        server.early = True  # the daemon ends the wait before it ran out: its answer, as it is
        with pytest.raises(RpcTimeout) as early:
            await c.tcp_recv(7, 100)
        assert not isinstance(early.value, CallTimeout) and "stopping" in str(early.value)
        server.early = False
        await c.close()
        c = await AsyncClient.connect(address(srv))  # no call_timeout: nothing added
        with pytest.raises(RpcTimeout):
            await c.tcp_recv(7, 100)
        await c.close()
        assert server.requests == [
            ("tcp.recv", [7, 100, 250]),
            ("tcp.accept", [3, 250]),
            ("tcp.recv", [7, 100, 50]),
            ("tcp.recv", [7, 100, 250]),
            ("tcp.recv", [7, 100]),
        ]
    finally:
        srv.close()
