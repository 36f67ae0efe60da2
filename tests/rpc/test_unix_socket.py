"""The RPC port on a unix socket: its mode never comes from the umask, a live daemon's socket is
never taken over, and only our own socket is removed at exit."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from chimneyd.config import RpcConfig
from chimneyd.rpc.server import RpcServer
from chimneyd.rpc.unix import SocketInUse
from tests.rpc.fake_engine import FakeEngine


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever mode the socket gets, the umask did not give it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


async def unix_server(path: Path, **rpc: Any) -> RpcServer:
    server = RpcServer(FakeEngine(), RpcConfig(listen=(f"unix:{path}",), **rpc))
    await server.start()
    return server


async def stop(server: RpcServer) -> None:
    await server.stop_accepting()
    await server.drain(1.0)


async def ping(path: Path) -> Any:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(msgpack.packb([0, 1, "ping", []]))
        unpacker = msgpack.Unpacker(raw=False)
        async with asyncio.timeout(10):
            while True:
                data = await reader.read(100)
                if not data:
                    raise EOFError("closed")
                unpacker.feed(data)
                for msg in unpacker:
                    return msg
    finally:
        writer.close()


def mode_of(path: Path) -> int:
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    return stat.S_IMODE(st.st_mode)


async def test_serves_and_removes_its_socket(tmp_path: Path) -> None:
    path = tmp_path / "rpc.sock"
    server = await unix_server(path)
    try:
        assert server.addresses == [f"unix:{path}"]
        assert await ping(path) == [1, 1, None, "pong"]
    finally:
        await stop(server)
    assert not path.exists()


@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize(("configured", "expected"), [(None, 0o600), ("0660", 0o660)])
async def test_mode_is_the_configured_one_whatever_the_umask(
    tmp_path: Path, configured: str | None, expected: int
) -> None:
    path = tmp_path / "rpc.sock"
    extra = {} if configured is None else {"unix_socket_mode": configured}
    server = await unix_server(path, **extra)
    try:
        assert mode_of(path) == expected
        assert await ping(path) == [1, 1, None, "pong"]
    finally:
        await stop(server)


async def test_a_live_daemons_socket_is_never_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "rpc.sock"
    first = await unix_server(path)
    try:
        inode = os.lstat(path).st_ino
        second = RpcServer(FakeEngine(), RpcConfig(listen=(f"unix:{path}",)))
        with pytest.raises(SocketInUse, match="another server is listening"):
            await second.start()
        await stop(second)  # what a daemon that failed to start does on its way out
        assert os.lstat(path).st_ino == inode  # neither replaced nor removed
        assert await ping(path) == [1, 1, None, "pong"]  # the first still serves
    finally:
        await stop(first)
    assert not path.exists()


async def test_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "rpc.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))  # bound, never listening: what a crashed daemon leaves
    dead.close()
    server = await unix_server(path)
    try:
        assert await ping(path) == [1, 1, None, "pong"]
    finally:
        await stop(server)
    assert not path.exists()


async def test_a_file_that_is_not_a_socket_is_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "rpc.sock"
    path.write_text("not a socket")
    server = RpcServer(FakeEngine(), RpcConfig(listen=(f"unix:{path}",)))
    with pytest.raises(OSError):
        await server.start()
    assert path.read_text() == "not a socket"


async def test_a_socket_that_replaced_ours_is_left_alone_at_exit(tmp_path: Path) -> None:
    path = tmp_path / "rpc.sock"
    server = await unix_server(path)
    other = socket.socket(socket.AF_UNIX)
    try:
        path.unlink()  # someone removed ours and put their own in its place
        other.bind(str(path))
        other.listen(1)
        await stop(server)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # theirs is still there
    finally:
        other.close()
