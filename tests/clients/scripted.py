"""Scripted servers for client fault tests: one that answers as a test says, one that never
reads, and a thread runner that keeps a hanging call from hanging the test."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import msgpack

from chimney_client.protocol import ClientCodec, Reply

#: seconds after which a call that should have ended is taken as hanging
HANG = 3.0

#: `on_request(transport, msgid, method, params)`: what the server does with a request
OnRequest = Callable[[Any, int, str, list[Any]], None]


class _Scripted(asyncio.Protocol):
    def __init__(self, on_request: OnRequest) -> None:
        self.on_request = on_request
        self.unpacker = msgpack.Unpacker(raw=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        for msg in self.unpacker:
            self.on_request(self.transport, msg[1], msg[2], msg[3])


async def scripted_server(on_request: OnRequest) -> asyncio.Server:
    """A loopback msgpack-RPC server on this loop; `address(srv)` is where it listens."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Scripted(on_request), "127.0.0.1", 0)


def address(srv: asyncio.Server) -> str:
    return f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"


def silent_listener() -> socket.socket:
    """A listening socket: the kernel accepts connections, nobody ever reads them."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    return s


def listener_address(s: socket.socket) -> str:
    return f"127.0.0.1:{s.getsockname()[1]}"


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `fn` on a daemon thread; its result or exception lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


#: chimneyd's answer to a `tcp.recv` of connection 1 whose wait ran out
RECV_TIMEOUT = [7, "TIMEOUT: nothing arrived on connection 1"]


def response(msgid: int, result: Any = None, error: Any = None) -> bytes:
    """The response frame the daemon writes for `msgid`."""
    data: bytes = msgpack.packb([1, msgid, error, result], use_bin_type=True)
    return data


def request_params(data: bytes) -> list[Any]:
    """The params of the request frame `data` a client wrote."""
    params: list[Any] = msgpack.unpackb(data, raw=False)[3]
    return params


def replies_in(codec: ClientCodec[str], data: bytes) -> list[Reply[str]]:
    """The replies `codec` decodes from `data` (notifications passed over)."""
    return [e for e in codec.receive(data) if isinstance(e, Reply)]


def answer(transport: Any, msgid: int, result: Any = None, error: Any = None) -> None:
    transport.write(response(msgid, result, error))


class ThreadServer:
    """A scripted server on a thread for the blocking client: one connection at a time,
    `on_request(conn, msgid, method, params)` with `conn` a socket (see `reply`)."""

    def __init__(self, on_request: Callable[[socket.socket, int, str, list[Any]], None]) -> None:
        self.on_request = on_request
        self.listener = silent_listener()
        self.address = listener_address(self.listener)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        unpacker = msgpack.Unpacker(raw=False)
        with conn:
            while data := _recv(conn):
                unpacker.feed(data)
                for msg in unpacker:
                    self.on_request(conn, msg[1], msg[2], msg[3])

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() still waiting
        except OSError:
            pass
        self.listener.close()
        self._thread.join(HANG)


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(65536)
    except OSError:
        return b""


def reply(conn: socket.socket, msgid: int, result: Any = None, error: Any = None) -> None:
    conn.sendall(response(msgid, result, error))
