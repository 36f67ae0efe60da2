"""The floor under the echo figure: a do-nothing msgpack-RPC proxy (bench.peers rpc-proxy).

It answers the five calls the echo section makes (`tcp.connect`, `tcp.info`, `tcp.send`,
`tcp.recv`, `tcp.close`, plus `stack.stats`) as the contract says, with the daemon's semantics
where they cost something: `tcp.send` is answered once the peer has acknowledged every byte (the
kernel's send queue, SIOCOUTQ, polled as the daemon's ack watcher polls it), `tcp.recv` waits up
to its timeout and answers TIMEOUT after it, losing nothing. What it does not have is everything
chimneyd is for: no host stack, no NDIS broker, no layers, NBLs, handles or hop trace. The same
client driving it and the daemon so tells how much of the verified echo's cost is the RPC-driven
workload itself (msgpack both ways, the payload copied twice, one socket per connection) and how
much is the emulation.

One process, uvloop Protocols, every answer of one loop turn in one write per client.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any

import msgpack

SIOCOUTQ = termios.TIOCOUTQ  # Linux: bytes in the send queue not yet acknowledged by the peer
ACK_POLL_S = 0.0005  # asked for; uvloop rounds it to the next loop turn (a poll per turn)
READ_PAUSE = 1 << 20  # stop reading a peer while this much waits for tcp.recv

# contract error codes (rpc-contract.md)
NO_METHOD, INVALID_PARAMS, NOT_FOUND, INVALID_STATE, TIMEOUT, CONNECT_FAILED = 1, 2, 3, 4, 7, 9

_ids = itertools.count(1)
_conns: dict[int, _Conn] = {}
_acks: _AckPoll | None = None


class _Session(asyncio.Protocol):
    """One RPC client. Answers gather in `out` and go in one write at the end of the turn."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=64 * 1024 * 1024)
        self.pack = msgpack.Packer(use_bin_type=True).pack
        self.out: list[bytes] = []
        self.flushing = False
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.unpacker.feed(data)
        for msg in self.unpacker:
            if not (isinstance(msg, list) and len(msg) == 4 and msg[0] == 0):
                continue
            _, msgid, method, params = msg
            try:
                _METHODS.get(method, _no_method)(self, msgid, params)
            except (TypeError, ValueError, IndexError) as exc:
                self.error(msgid, INVALID_PARAMS, f"INVALID_PARAMS: {exc}")
        self.flush()

    def answer(self, msgid: int, result: Any) -> None:
        self.out.append(self.pack([1, msgid, None, result]))
        self._later()

    def error(self, msgid: int, code: int, message: str) -> None:
        self.out.append(self.pack([1, msgid, [code, message], None]))
        self._later()

    def _later(self) -> None:
        if not self.flushing:
            self.flushing = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flushing = False
        if self.out:
            out, self.out = self.out, []
            if not self.transport.is_closing():
                self.transport.write(b"".join(out))


class _Conn(asyncio.Protocol):
    """One proxied connection: bytes read and not yet asked for, one waiting `tcp.recv`, the
    sends written and not yet acknowledged."""

    def __init__(self) -> None:
        self.id = next(_ids)
        self.buf = bytearray()
        self.eof = False
        self.recv: tuple[_Session, int, int, asyncio.TimerHandle | None] | None = None
        self.written = 0  # bytes handed to the transport
        self.sends: list[tuple[int, _Session, int, int]] = []  # (end offset, session, msgid, n)
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.fd = transport.get_extra_info("socket").fileno()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.recv is not None:
            self._serve()
        if len(self.buf) >= READ_PAUSE and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.eof = True
        if self.recv is not None:
            self._serve()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.end("connection lost")

    def end(self, why: str) -> None:
        """Answer what still waits: a read with the end of stream, sends with an error."""
        self.eof = True
        if self.recv is not None:
            self._serve()
        for _, session, msgid, _n in self.sends:
            session.error(msgid, INVALID_STATE, f"INVALID_STATE: {why}")
        self.sends = []

    def take(self, session: _Session, msgid: int, size: int, timeout_ms: int | None) -> None:
        if self.recv is not None:
            session.error(msgid, INVALID_STATE, "INVALID_STATE: a tcp.recv is already waiting")
            return
        timer = None
        if not self.buf and not self.eof and timeout_ms is not None:
            timer = session.loop.call_later(timeout_ms / 1000, self._expire)
        self.recv = (session, msgid, size, timer)
        if self.buf or self.eof:
            self._serve()

    def _serve(self) -> None:
        assert self.recv is not None
        session, msgid, size, timer = self.recv
        self.recv = None
        if timer is not None:
            timer.cancel()
        data = bytes(self.buf[:size])
        del self.buf[:size]
        session.answer(msgid, data)  # empty at end of stream
        if self.paused and len(self.buf) < READ_PAUSE:
            self.paused = False
            self.transport.resume_reading()

    def _expire(self) -> None:
        if self.recv is not None:
            session, msgid, _, _ = self.recv
            self.recv = None
            session.error(msgid, TIMEOUT, "TIMEOUT: nothing arrived in time")

    def send(self, session: _Session, msgid: int, data: bytes) -> None:
        self.transport.write(data)
        self.written += len(data)
        self.sends.append((self.written, session, msgid, len(data)))
        assert _acks is not None
        _acks.add(self)

    def acked(self) -> int:
        unacked = fcntl.ioctl(self.fd, SIOCOUTQ, b"\0\0\0\0")
        queued: int = _INT.unpack(unacked)[0]
        buffered: int = self.transport.get_write_buffer_size()
        return self.written - buffered - queued


_INT = struct.Struct("i")


class _AckPoll:
    """Every connection with sends in flight, polled on the next turn, then every ACK_POLL_S."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: set[_Conn] = set()
        self.scheduled = False

    def add(self, conn: _Conn) -> None:
        self.waiting.add(conn)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.poll)

    def poll(self) -> None:
        self.scheduled = False
        done = []
        for conn in self.waiting:
            if conn.transport.is_closing():
                done.append(conn)
                continue
            acked = conn.acked()
            sends = conn.sends
            k = 0
            while k < len(sends) and sends[k][0] <= acked:
                _, session, msgid, n = sends[k]
                session.answer(msgid, n)
                k += 1
            if k:
                del sends[:k]
            if not sends:
                done.append(conn)
        self.waiting.difference_update(done)
        if self.waiting:
            self.scheduled = True
            self.loop.call_later(ACK_POLL_S, self.poll)


def _conn(session: _Session, msgid: int, cid: Any) -> _Conn | None:
    conn = _conns.get(cid)
    if conn is None:
        session.error(msgid, NOT_FOUND, f"NOT_FOUND: no connection {cid}")
    return conn


def _no_method(session: _Session, msgid: int, params: Any) -> None:
    session.error(msgid, NO_METHOD, "NO_METHOD: the floor proxy answers the echo's calls only")


def _connect(session: _Session, msgid: int, params: list[Any]) -> None:
    host, port = str(params[0]), int(params[1])

    async def connect() -> None:
        try:
            transport, conn = await session.loop.create_connection(_Conn, host, port)
        except OSError as exc:
            session.error(msgid, CONNECT_FAILED, f"CONNECT_FAILED: {exc}")
            return
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _conns[conn.id] = conn
        session.answer(msgid, conn.id)

    session.loop.create_task(connect())


def _info(session: _Session, msgid: int, params: list[Any]) -> None:
    conn = _conn(session, msgid, params[0])
    if conn is not None:
        session.answer(msgid, {"conn_id": conn.id, "state": "proxied"})


def _send(session: _Session, msgid: int, params: list[Any]) -> None:
    conn = _conn(session, msgid, params[0])
    if conn is not None:
        data = params[1]
        conn.send(session, msgid, data.encode() if isinstance(data, str) else data)


def _recv(session: _Session, msgid: int, params: list[Any]) -> None:
    conn = _conn(session, msgid, params[0])
    if conn is not None:
        size = int(params[1])
        if size < 1:
            raise ValueError("max_bytes must be at least 1")
        timeout = params[2] if len(params) > 2 else None
        conn.take(session, msgid, size, None if timeout is None else int(timeout))


def _close(session: _Session, msgid: int, params: list[Any]) -> None:
    conn = _conns.pop(params[0], None)
    if conn is None:
        session.error(msgid, NOT_FOUND, f"NOT_FOUND: no connection {params[0]}")
        return
    unacked = bool(conn.sends)
    conn.end("closed before the peer acknowledged it")
    if unacked:
        conn.transport.abort()  # a graceful close would wait for the peer to read it all
    else:
        conn.transport.close()
    session.answer(msgid, True)


def _stats(session: _Session, msgid: int, params: list[Any]) -> None:
    session.answer(msgid, {"connections": len(_conns)})


_METHODS: dict[str, Callable[[_Session, int, Any], None]] = {
    "tcp.connect": _connect,
    "tcp.info": _info,
    "tcp.send": _send,
    "tcp.recv": _recv,
    "tcp.close": _close,
    "stack.stats": _stats,
}


def Proxy() -> _Session:
    """The protocol factory bench.peers serves (`rpc-proxy`)."""
    global _acks
    if _acks is None:
        _acks = _AckPoll(asyncio.get_running_loop())
    return _Session()
