"""AsyncClient against the in-test mini server over real loopback and Unix sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from chimney_client import AsyncClient
from chimney_client.errors import (
    CallTimeout,
    ConnectionLost,
    Denied,
    NdisStatusError,
    NoMethod,
    NotFound,
)
from tests.clients.mini_server import MiniServer


@pytest.fixture
async def server() -> AsyncIterator[MiniServer]:
    srv = await MiniServer().start()
    yield srv
    await srv.close()


async def test_wrappers_round_trip(server: MiniServer) -> None:
    async with await AsyncClient.connect(server.address, timeout=5) as c:
        assert await c.ping() == "pong"
        cid = await c.tcp_connect("127.0.0.1", 9000, offload=False, target="nic0")
        assert server.requests[-1] == (
            "tcp.connect",
            ["127.0.0.1", 9000, {"offload": False, "target": "nic0"}],
        )
        await c.tcp_connect("127.0.0.1", 9000)
        assert server.requests[-1] == ("tcp.connect", ["127.0.0.1", 9000])
        assert await c.tcp_send(cid, b"hello") == 5
        assert await c.tcp_recv(cid, 3, timeout_ms=100) == b"hel"
        assert (await c.tcp_info(cid))["state"] == "offloaded"
        assert await c.tcp_list() == [1, 2]
        assert len(await c.trace_get(cid, 2)) == 2
        assert await c.fault_inject("stall_peer", conn=cid, ms=100) == 1
        assert await c.fault_list() == [{"id": 1, "kind": "stall_peer", "conn": cid, "ms": 100}]
        assert await c.fault_clear() is True
        assert await c.tcp_close(cid) is True


async def test_errors_are_typed(server: MiniServer) -> None:
    async with await AsyncClient.connect(server.address) as c:
        with pytest.raises(NotFound, match="NOT_FOUND: no connection 17"):
            await c.tcp_info(17)
        with pytest.raises(NoMethod):
            await c.call("no.such.method")
        cid = await c.tcp_connect("127.0.0.1", 1)
        with pytest.raises(NdisStatusError) as info:
            await c.tcp_send(cid, b"fail")
        assert info.value.acknowledged == 2
        assert await c.ping() == "pong"  # the connection is still fine


async def test_auth_token(server: MiniServer) -> None:
    c = await AsyncClient.connect(server.address, token="secret")
    assert server.requests[0] == ("auth", ["secret"])
    await c.close()
    with pytest.raises(Denied):
        await AsyncClient.connect(server.address, token="wrong")


async def test_pipelined_calls_answered_out_of_order(server: MiniServer) -> None:
    async with await AsyncClient.connect(server.address) as c:
        # Later calls answer first; each result still reaches its own caller.
        calls = [c.call("test.delay", (20 - i) * 0.002, i) for i in range(20)]
        calls += [c.call("test.echo", i, b"x") for i in range(200)]
        results = await asyncio.gather(*calls)
        assert results[:20] == list(range(20))
        assert results[20:] == [[i, b"x"] for i in range(200)]
        assert c.pending == 0


async def test_timed_out_call_drops_its_late_response(server: MiniServer) -> None:
    async with await AsyncClient.connect(server.address) as c:
        with pytest.raises(CallTimeout):
            await c.call("test.delay", 0.3, "late", timeout=0.01)
        assert c.pending == 0
        # The late answer arrives during this call and is dropped, not mistaken for it.
        assert await c.call("test.delay", 0.5, "mine") == "mine"
        assert c._codec.dropped_responses == 1


async def test_default_call_timeout(server: MiniServer) -> None:
    async with await AsyncClient.connect(server.address, call_timeout=0.01) as c:
        with pytest.raises(CallTimeout):
            await c.call("test.delay", 10, None)
        assert await c.call("test.delay", 0.05, 1, timeout=5) == 1


async def test_cancelled_call_is_forgotten(server: MiniServer) -> None:
    async with await AsyncClient.connect(server.address) as c:
        task = asyncio.ensure_future(c.call("test.delay", 0.2, "x"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert c.pending == 0
        assert await c.call("test.delay", 0.3, "y") == "y"


async def test_notifications_reach_handlers(server: MiniServer) -> None:
    async with await AsyncClient.connect(server.address) as c:
        got: list[Any] = []
        done = asyncio.Event()

        async def async_handler(params: list[Any]) -> None:
            got.append(("async", params))
            done.set()

        c.on_notification("custom", lambda p: got.append(("sync", p)))
        c.on_notification("custom", async_handler)
        events: list[tuple[int, str, dict[str, Any]]] = []
        c.on_tcp_event(lambda cid, ev, info: events.append((cid, ev, info)))
        c.on_notification("boom", lambda p: 1 / 0)  # a failing handler is logged, not fatal

        await c.call("test.notify", "boom", [])
        await c.call("test.notify", "unknown.method", [1])  # ignored
        await c.call("test.notify", "custom", [1, 2])
        assert await c.events_subscribe("*") is True
        await asyncio.wait_for(done.wait(), 5)
        await c.ping()  # the event sent after subscribe's answer has been read by now
        assert ("sync", [1, 2]) in got and ("async", [1, 2]) in got
        assert events == [(1, "offloaded", {"path": ["tcpip", "nic0"]})]


async def test_drop_fails_every_pending_call(server: MiniServer) -> None:
    c = await AsyncClient.connect(server.address)
    slow = [asyncio.ensure_future(c.call("test.delay", 30, i)) for i in range(50)]
    await asyncio.sleep(0.01)
    with pytest.raises(ConnectionLost):
        await c.call("test.drop")
    results = await asyncio.gather(*slow, return_exceptions=True)
    assert all(isinstance(r, ConnectionLost) for r in results)
    assert c.closed and c.pending == 0
    with pytest.raises(ConnectionLost):
        await c.ping()
    await c.close()  # idempotent after a loss


async def test_server_going_away_fails_pending(server: MiniServer) -> None:
    c = await AsyncClient.connect(server.address)
    pending = asyncio.ensure_future(c.call("test.delay", 30, 1))
    await asyncio.sleep(0.01)
    await server.close()
    with pytest.raises(ConnectionLost):
        await pending
    await c.close()


async def test_garbage_from_server_closes_with_connection_lost(server: MiniServer) -> None:
    c = await AsyncClient.connect(server.address)
    with pytest.raises(ConnectionLost, match="protocol error"):
        await c.call("test.garbage")
    await c.close()


async def test_close_fails_pending_calls(server: MiniServer) -> None:
    c = await AsyncClient.connect(server.address)
    pending = asyncio.ensure_future(c.call("test.delay", 30, 1))
    await asyncio.sleep(0.01)
    await c.close()
    with pytest.raises(ConnectionLost):
        await pending


async def test_connect_refused() -> None:
    srv = await MiniServer().start()
    address = srv.address
    await srv.close()
    with pytest.raises(ConnectionLost, match="cannot connect"):
        await AsyncClient.connect(address, timeout=5)


async def test_unix_socket(tmp_path: Path) -> None:
    srv = await MiniServer().start(unix_path=str(tmp_path / "rpc.sock"))
    try:
        async with await AsyncClient.connect(srv.address) as c:
            assert await c.ping() == "pong"
    finally:
        await srv.close()
