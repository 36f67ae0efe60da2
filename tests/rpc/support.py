"""A raw msgpack-RPC test client and an in-process server on loopback with the FakeEngine.

The client speaks bytes directly (no project client), so tests can send anything, pipeline
freely and see every message the server writes, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import msgpack

from chimneyd.config import RpcConfig
from chimneyd.rpc.server import RpcServer, Session
from tests.rpc.fake_engine import FakeEngine

HOST = "127.0.0.1"
WAIT = 10.0  # bound on any single wait in these tests (a hang fails, nothing is timed)


class RawClient:
    """One loopback connection to the server; msgids count up from 1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        self.msgid = 0
        self.notifications: list[Any] = []
        self.early: dict[int, list[Any]] = {}  # responses read while waiting for another

    @classmethod
    async def connect(cls, address: tuple[str, int]) -> RawClient:
        reader, writer = await asyncio.open_connection(*address, limit=1 << 24)
        return cls(reader, writer)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def request(self, method: str | bytes, *params: Any) -> int:
        self.msgid += 1
        self.send_raw(msgpack.packb([0, self.msgid, method, list(params)], use_bin_type=True))
        return self.msgid

    async def read(self) -> Any:
        """The next message from the server; EOFError when it closed the connection."""
        async with asyncio.timeout(WAIT):
            while True:
                for obj in self.unpacker:
                    return obj
                try:
                    data = await self.reader.read(1 << 16)
                except ConnectionResetError:
                    data = b""
                if not data:
                    raise EOFError("the server closed the connection")
                self.unpacker.feed(data)

    async def response(self, msgid: int) -> list[Any]:
        """The response to `msgid` (notifications and other responses are kept aside)."""
        if msgid in self.early:
            return self.early.pop(msgid)
        while True:
            msg = await self.read()
            if msg[0] == 2:
                self.notifications.append(msg)
            elif msg[1] == msgid:
                return list(msg)
            else:
                self.early[msg[1]] = msg

    async def call(self, method: str | bytes, *params: Any) -> tuple[Any, Any]:
        """(error, result) of one call."""
        msg = await self.response(self.request(method, *params))
        return msg[2], msg[3]

    async def ok(self, method: str, *params: Any) -> Any:
        error, result = await self.call(method, *params)
        assert error is None, f"{method}{params}: {error}"
        return result

    async def fails(self, method: str, *params: Any) -> tuple[int, str]:
        error, result = await self.call(method, *params)
        assert error is not None, f"{method}{params} succeeded: {result!r}"
        assert result is None
        return error[0], error[1]

    async def read_until_closed(self) -> list[Any]:
        out = []
        with contextlib.suppress(EOFError):
            while True:
                out.append(await self.read())
        return out

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class Served:
    """A running RpcServer on 127.0.0.1:0 in this event loop, with its FakeEngine."""

    def __init__(self, server: RpcServer, engine: FakeEngine) -> None:
        self.server = server
        self.engine = engine
        host, port = server.addresses[0].rsplit(":", 1)
        self.address = (host, int(port))
        self.clients: list[RawClient] = []

    async def client(self, token: str | None = None) -> RawClient:
        c = await RawClient.connect(self.address)
        self.clients.append(c)
        if token is not None:
            assert await c.ok("auth", token) is True
        return c

    def sessions(self) -> list[Session]:
        return list(self.server.sessions)

    async def another_client_pings(self) -> None:
        """The server still serves: a fresh client gets ping → "pong"."""
        c = await RawClient.connect(self.address)
        try:
            msgid = c.request("ping")
            assert await c.read() == [1, msgid, None, "pong"]
        finally:
            await c.close()


async def start(engine: FakeEngine | None = None, **rpc: Any) -> Served:
    rpc.setdefault("listen", (f"{HOST}:0",))
    server = RpcServer(engine or FakeEngine(), RpcConfig(**rpc))
    await server.start()
    return Served(server, cast(FakeEngine, server.engine))


async def stop(served: Served) -> None:
    for c in served.clients:
        await c.close()
    await served.server.stop_accepting()
    await served.server.drain(5.0)


@contextlib.asynccontextmanager
async def serving(engine: FakeEngine | None = None, **rpc: Any) -> AsyncIterator[Served]:
    served = await start(engine, **rpc)
    try:
        yield served
    finally:
        await stop(served)


async def eventually(predicate: Callable[[], Any], what: str) -> None:
    """Wait (bounded) until `predicate()` is true; a hang fails the test, nothing is timed."""
    try:
        async with asyncio.timeout(WAIT):
            while not predicate():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])
