"""The soak's echo peer: `chimney-peer echo` plus a control port through which the soak asks it to
reset one connection, so that a `peer_reset` RST really comes in from the wire.

Control protocol (one line each way, on loopback): `reset PORT` → `ok PORT received=R
delivered=D` or `missing PORT`. PORT is the remote port of the connection as the peer sees it,
which is the daemon side's local port (`tcp.info` `local`). Before the RST the peer stops reading
that connection and waits (at most `RESET_QUIESCE_S`) for the daemon to acknowledge its echo, so
the reset cuts the stream at a point both sides can account for: R bytes were read and echoed,
and the first D of them had reached the daemon's socket (acknowledged) when the RST went out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import os
import signal
import socket
import struct
import sys
import termios
import time
from collections.abc import Sequence
from typing import Any, cast

from ..peer import is_loopback
from .limits import RESET_QUIESCE_S

#: Accept queue: past ≈ 4096 unaccepted connects Linux drops SYNs (1 s retry each; perf-notes).
BACKLOG = 8192
#: Above HIGH buffered echo bytes the peer stops reading, so TCP pushes back on the daemon.
WRITE_HIGH = 1024 * 1024
WRITE_LOW = 256 * 1024
#: How often a peer started with --parent-pid checks that its parent still lives.
PARENT_CHECK_S = 0.5
_LINGER_RST = struct.pack("ii", 1, 0)
_INT = struct.Struct("i")


class _Echo(asyncio.Protocol):
    __slots__ = ("_peer", "_resetting", "_write_paused", "port", "received", "transport")

    def __init__(self, peer: EchoPeer) -> None:
        self._peer = peer
        self.transport: asyncio.Transport | None = None
        self.port = 0
        self.received = 0
        self._write_paused = False
        self._resetting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        self.port = int(transport.get_extra_info("peername")[1])
        self._peer.by_port[self.port] = self

    def connection_lost(self, exc: Exception | None) -> None:
        if self._peer.by_port.get(self.port) is self:
            del self._peer.by_port[self.port]
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.transport is not None:
            self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close once every echoed byte is written: our FIN follows theirs

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.transport is not None and self.transport.is_reading():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        t = self.transport
        if t is not None and not self._resetting and not t.is_closing() and not t.is_reading():
            t.resume_reading()

    def unsent(self) -> int:
        """Echoed bytes the daemon has not acknowledged: ours in user space plus the kernel's
        send queue (SIOCOUTQ)."""
        t = self.transport
        if t is None:
            return 0
        sock = t.get_extra_info("socket")
        try:
            outq = _INT.unpack(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        except OSError:
            outq = 0
        return int(t.get_write_buffer_size()) + int(outq)

    async def reset(self) -> tuple[int, int]:
        """Stop reading, let the echo drain (bounded), then RST. Returns (received, delivered)."""
        t = self.transport
        assert t is not None
        self._resetting = True
        if t.is_reading():
            t.pause_reading()
        deadline = time.monotonic() + RESET_QUIESCE_S
        while self.unsent() and time.monotonic() < deadline and self.transport is not None:
            await asyncio.sleep(0.005)
        received = self.received
        delivered = received - self.unsent()
        if self.transport is not None:
            with contextlib.suppress(OSError):
                t.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST
                )
            t.abort()
        return received, delivered


class EchoPeer:
    """An echo listener and its control listener."""

    def __init__(self) -> None:
        self.by_port: dict[int, _Echo] = {}
        self.servers: list[asyncio.AbstractServer] = []
        self.address: tuple[str, int] = ("", 0)
        self.control: tuple[str, int] = ("", 0)
        self.resets = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        echo = await loop.create_server(
            lambda: _Echo(self), host, port, backlog=BACKLOG, reuse_address=True
        )
        ctl = await asyncio.start_server(self._control, host, 0)
        self.servers = [echo, ctl]
        self.address = echo.sockets[0].getsockname()[:2]
        self.control = ctl.sockets[0].getsockname()[:2]

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                words = line.decode(errors="replace").split()
                if len(words) != 2 or words[0] != "reset" or not words[1].isdigit():
                    writer.write(b"error expected: reset PORT\n")
                    continue
                port = int(words[1])
                conn = self.by_port.get(port)
                if conn is None or conn.transport is None:
                    writer.write(f"missing {port}\n".encode())
                    continue
                received, delivered = await conn.reset()
                self.resets += 1
                writer.write(f"ok {port} received={received} delivered={delivered}\n".encode())
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for conn in list(self.by_port.values()):
            if conn.transport is not None:
                conn.transport.abort()
        for server in self.servers:
            await server.wait_closed()


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop when the process that started us is gone, however it ended (SIGKILL included):
    its children are then re-parented, so our parent pid changes. Woken by a pidfd of the
    parent, readable when it exits; without pidfds (Linux before 5.3), it looks every
    PARENT_CHECK_S."""
    try:
        pidfd = os.pidfd_open(parent_pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        loop = asyncio.get_running_loop()
        gone = asyncio.Event()
        loop.add_reader(pidfd, gone.set)
        try:
            if os.getppid() == parent_pid:  # a parent gone before the fd opened wakes nobody
                await gone.wait()
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    while os.getppid() == parent_pid:
        await asyncio.sleep(PARENT_CHECK_S)
    print("chimney-soak echo peer: its parent is gone, stopping", file=sys.stderr, flush=True)
    stop.set()


def _parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    if not is_loopback(host.strip("[]")):
        # its control port, on the same host, takes reset orders: never off loopback (and
        # chimneyd connects to loopback peers only)
        raise argparse.ArgumentTypeError(f"{host} is not a loopback address")
    return host.strip("[]"), int(port)


async def _serve(args: argparse.Namespace) -> int:
    peer = EchoPeer()
    await peer.start(*args.listen)
    (h, p), (ch, cp) = peer.address, peer.control
    print(f"chimney-soak echo peer listening on {h}:{p} control {ch}:{cp}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.parent_pid:
        watch = asyncio.ensure_future(_watch_parent(args.parent_pid, stop))
    await stop.wait()
    if args.parent_pid:
        watch.cancel()
    await peer.close()
    print(f"chimney-soak echo peer stopped: resets={peer.resets}", file=sys.stderr, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chimney_client.soak.echo_peer", description=__doc__)
    p.add_argument(
        "--listen",
        type=_parse_listen,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="echo address; port 0 picks a free one (the control port is always picked)",
    )
    p.add_argument(
        "--parent-pid",
        type=int,
        default=0,
        metavar="PID",
        help="stop when process PID is no longer our parent (the soak that started us died)",
    )
    args = p.parse_args(argv)
    runner: Any
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    return int(runner(_serve(args)))


if __name__ == "__main__":
    sys.exit(main())
