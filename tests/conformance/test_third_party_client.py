"""The RPC server driven by an independent msgpack-RPC client from PyPI: `aio-msgpack-rpc`.

Its own framing, msgid counter and packer, not ours. Of the candidates, `msgpack-rpc-python`
pins `msgpack-python` 0.5 (which replaces the `msgpack` 1.x module the daemon needs), `mprpc`
does not build on Python 3.11, and `aiorpc` passes `loop=` to `asyncio.open_connection` (a
TypeError since Python 3.10); `aio-msgpack-rpc` works as published. The server runs in-process
with the FakeEngine, so this checks the wire contract alone (tests/e2e does it against the real
daemon).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_msgpack_rpc
import msgpack
import pytest
from aio_msgpack_rpc.error import RPCResponseError

from tests.rpc.support import HOST, Served, serving


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with serving() as s:
        yield s


async def connect(s: Served, **kw: Any) -> aio_msgpack_rpc.Client:
    reader, writer = await asyncio.open_connection(*s.address)
    return aio_msgpack_rpc.Client(reader, writer, response_timeout=10, **kw)


def error_of(exc: pytest.ExceptionInfo[RPCResponseError]) -> tuple[int, str]:
    code, message = exc.value.args[0]
    return code, message


async def test_ping(served: Served) -> None:
    client = await connect(served)
    try:
        assert await client.call("ping") == "pong"
    finally:
        client.close()


async def test_stack_info(served: Served) -> None:
    client = await connect(served)
    try:
        info = await client.call("stack.info")
        assert info["contract"] == 1
        assert [layer["name"] for layer in info["layers"]] == ["tcpip", "nic0"]
        assert info["rpc"]["listen"] == [f"{served.address[0]}:{served.address[1]}"]
        stats = await client.call("stack.stats")
        assert stats["rpc"]["clients"] == 1
    finally:
        client.close()


async def test_error_cases(served: Served) -> None:
    client = await connect(served)
    try:
        with pytest.raises(RPCResponseError) as exc:
            await client.call("no.such.method")
        code, message = error_of(exc)
        assert code == 1 and message.startswith("NO_METHOD: ")
        with pytest.raises(RPCResponseError) as exc:
            await client.call("tcp.info", 4242)
        assert error_of(exc) == (3, "NOT_FOUND: no connection 4242")
        with pytest.raises(RPCResponseError) as exc:
            await client.call("tcp.connect", HOST)
        code, message = error_of(exc)
        assert code == 2 and message.startswith("INVALID_PARAMS: ")
        assert await client.call("ping") == "pong"  # the connection goes on after errors
    finally:
        client.close()


async def test_concurrent_calls_answered_out_of_order(served: Served) -> None:
    client = await connect(served)
    try:
        conn = await client.call("tcp.connect", HOST, 9000)
        recv = asyncio.ensure_future(client.call("tcp.recv", conn, 100))
        assert await client.call("ping") == "pong"  # answered while the recv waits
        assert not recv.done()
        assert await client.call("tcp.send", conn, b"\x00\x01payload") == 9
        assert await recv == b"\x00\x01payload"
        results = await asyncio.gather(*(client.call("ping") for _ in range(50)))
        assert results == ["pong"] * 50
    finally:
        client.close()


async def test_raw_mode_client_sends_payload_as_str(served: Served) -> None:
    """An old raw-mode packer sends bytes as msgpack str; the server takes them as bytes."""
    client = await connect(
        served,
        packer=msgpack.Packer(use_bin_type=False),
        unpacker=msgpack.Unpacker(raw=True),
    )
    try:
        conn = await client.call("tcp.connect", HOST, 9000)
        payload = b"\xff\xfe not utf-8 \x80"
        assert await client.call("tcp.send", conn, payload) == len(payload)
        assert await client.call("tcp.recv", conn, 100) == payload
        assert await client.call("ping") == b"pong"  # raw mode reads str as bytes
    finally:
        client.close()
