"""A connection's real loopback socket: an asyncio Protocol on a uvloop transport.

Implements `drivers.wire.WirePort`. Received bytes are posted, with their stream offset, to the
inbox of whichever layer owns the connection now (design: "exactly one owner at a time"). Sends
complete on acknowledgement, which the kernel tells: bytes written minus what is still in the
transport's buffer minus the socket's unacknowledged send queue (`SIOCOUTQ`).
"""

from __future__ import annotations

import asyncio
import fcntl
import random
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any

from chimneyd.drivers.wire import TcpInfo

_OUTQ = getattr(termios, "TIOCOUTQ", 0x5411)  # == SIOCOUTQ on Linux
_INT = struct.Struct("i")
_TCP_INFO = struct.Struct("8B24I")
_LINGER_RST = struct.pack("ii", 1, 0)
_TCP_CLOSE = 7  # tcpi_state of a connection the kernel has closed
# tcpi_state values before our FIN has gone out: SYN_SENT, SYN_RECV, ESTABLISHED, CLOSE_WAIT.
# `write_eof` only asks for the FIN: uvloop (libuv) calls shutdown(2) on a later loop turn.
_FIN_NOT_SENT = frozenset((1, 2, 3, 8))

Post = Callable[[Any, Callable[..., Any], tuple[Any, ...]], None]


class WireSocket(asyncio.Protocol):
    """One TCP connection's socket, shared by the host and the NIC that carry it."""

    __slots__ = (
        "_aborted_by_us",
        "_early",
        "_fd",
        "_owner",
        "_owner_ctx",
        "_post",
        "_watcher",
        "bytes_read",
        "bytes_written",
        "closed",
        "eof_seen",
        "eof_written",
        "home",
        "home_ctx",
        "irs",
        "isn",
        "local",
        "notified_acked",
        "notified_fin",
        "on_made",
        "remote",
        "transport",
    )

    def __init__(
        self, post: Post, watcher: AckWatcher, on_made: Callable[[WireSocket], None] | None = None
    ) -> None:
        self._post = post
        self._watcher = watcher
        self.on_made = on_made
        self.transport: asyncio.Transport | None = None
        self._fd = -1
        self.local: tuple[str, int] = ("", 0)
        self.remote: tuple[str, int] = ("", 0)
        # initial sequence numbers, only to give delegated state real-looking 32-bit values
        self.isn = random.getrandbits(32)
        self.irs = random.getrandbits(32)
        self.bytes_written = 0
        self.bytes_read = 0
        self.notified_acked = 0
        self.notified_fin = False
        self.eof_written = False
        self.eof_seen = False
        self.closed = False
        self._aborted_by_us = False
        self.home: Any = None
        self.home_ctx: Any = None
        self._owner: Any = None
        self._owner_ctx: Any = None
        self._early: list[tuple[str, tuple[Any, ...]]] = []  # events before anyone owned us

    # -- ownership -----------------------------------------------------------------------------
    def set_home(self, layer: Any, ctx: Any) -> None:
        self.home, self.home_ctx = layer, ctx
        self.set_owner(None, None)

    def set_owner(self, layer: Any, ctx: Any) -> None:
        if layer is None:
            layer, ctx = self.home, self.home_ctx
        self._owner, self._owner_ctx = layer, ctx
        if layer is not None and self._early:
            early, self._early = self._early, []
            for name, args in early:
                self._post(layer, getattr(layer, name), (ctx, *args))

    def _emit(self, name: str, *args: Any) -> None:
        owner = self._owner
        if owner is None:
            self._early.append((name, args))
        else:
            self._post(owner, getattr(owner, name), (self._owner_ctx, *args))

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        sock = transport.get_extra_info("socket")
        self._fd = sock.fileno()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.local = transport.get_extra_info("sockname")[:2]
        self.remote = transport.get_extra_info("peername")[:2]
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        offset = self.bytes_read
        self.bytes_read = offset + len(data)
        self._emit("WireData", offset, data)

    def eof_received(self) -> bool:
        self.eof_seen = True
        self._emit("WireEof", self.bytes_read)
        return True  # keep the send half open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._watcher.discard(self)
        # uvloop's transport is not seen by the cycle collector: holding it here would keep
        # this socket, its TCB and the NIC context alive for ever after the close
        self.transport = None
        if self._aborted_by_us:
            return
        if exc is not None or not self.eof_seen:
            self._emit("WireReset", repr(exc) if exc else "closed")

    # -- WirePort ----------------------------------------------------------------------------------
    def write(self, views: list[memoryview]) -> None:
        transport = self.transport
        if transport is None or self.closed or self.eof_written:
            return
        n = 0
        for v in views:
            n += len(v)
        self.bytes_written += n
        if len(views) == 1:
            transport.write(views[0])
        else:
            transport.writelines(views)

    def write_eof(self) -> None:
        if self.transport is not None and not self.closed and not self.eof_written:
            self.eof_written = True
            self.transport.write_eof()

    def abort(self) -> None:
        """Close with RST: SO_LINGER {on, 0}, then close (design table)."""
        if self.transport is None or self.closed:
            return
        self._aborted_by_us = True
        try:
            self.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST
            )
        except OSError:
            pass
        self.closed = True
        self.transport.abort()

    def inject_reset(self) -> None:
        """Fault: as if the peer had sent an acceptable RST (our socket resets the peer too)."""
        if self.transport is None or self.closed:
            return
        try:
            self.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST
            )
        except OSError:
            pass
        self._aborted_by_us = True
        self.closed = True
        self.transport.abort()
        self._emit("WireReset", "injected peer reset")

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self._aborted_by_us = True
            self.closed = True
            self.transport.close()
        self._watcher.discard(self)

    def _outq(self) -> int:
        try:
            return int(_INT.unpack(fcntl.ioctl(self._fd, _OUTQ, b"\0\0\0\0"))[0])
        except OSError:
            return 0

    def _getsockopt(self, level: int, name: int, size: int) -> bytes | None:
        """getsockopt on our fd (None if it fails) through a socket object that only views
        the fd: detached, never closed, so uvloop's transport keeps the socket."""
        sock = socket.socket(fileno=self._fd)
        try:
            return sock.getsockopt(level, name, size)
        except OSError:
            return None
        finally:
            sock.detach()

    def _tcp_state(self) -> int | None:
        """`tcpi_state` alone: the first byte of TCP_INFO."""
        raw = self._getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
        return raw[0] if raw else None

    def _fin_sent(self) -> bool:
        """Has shutdown(2) really sent our FIN? Until then the kernel's send queue says nothing
        about it, and an empty queue must not read as "FIN acknowledged"."""
        state = self._tcp_state()
        # no state: the socket is gone, nothing more will be sent or acknowledged
        return state is None or state not in _FIN_NOT_SENT

    def acked(self) -> int:
        if self.closed or self.transport is None:
            return self.bytes_written
        buffered = self.transport.get_write_buffer_size()
        outq = self._outq()
        unacked = buffered + outq
        if outq and not buffered and self.eof_written and self._fin_sent():
            unacked -= 1  # the FIN's sequence number, counted in the send queue
        return max(0, self.bytes_written - unacked)

    def fin_acked(self) -> bool:
        if not self.eof_written:
            return False
        if self.closed or self.transport is None:
            return True
        return (
            self.transport.get_write_buffer_size() == 0 and self._outq() == 0 and self._fin_sent()
        )

    def watch_acks(self) -> None:
        self._watcher.add(self)

    def notify_acked(self) -> None:
        acked = self.acked()
        self.notified_acked = acked
        self.notified_fin = self.fin_acked()
        self._emit("WireAcked", acked)

    def kernel_alive(self) -> bool:
        """False when the kernel has dropped the connection for an RST we have not read: state
        CLOSE with a pending socket error. CLOSE without an error is a graceful close (both FINs
        exchanged and acknowledged), which is not a reset."""
        if self.closed or self._fd < 0:
            return False
        if self._tcp_state() != _TCP_CLOSE:
            return True
        err = self._getsockopt(socket.SOL_SOCKET, socket.SO_ERROR, _INT.size)
        return err is not None and _INT.unpack(err)[0] == 0

    def lost_by_kernel(self) -> None:
        """The peer reset the connection while we were not reading: report it as an RST."""
        if self.closed or self.transport is None:
            return
        self._aborted_by_us = True  # connection_lost must not report it a second time
        self.closed = True
        self.transport.abort()
        self._emit("WireReset", "reset while not reading (kernel state CLOSE)")

    def tcp_info(self) -> TcpInfo:
        if self.closed or self._fd < 0:
            return TcpInfo(state=7)
        buf = self._getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
        if buf is None:
            return TcpInfo()
        f = _TCP_INFO.unpack(buf[: _TCP_INFO.size])
        u = f[8:]
        # u: rto ato snd_mss rcv_mss unacked sacked lost retrans fackets last_data_sent
        #    last_ack_sent last_data_recv last_ack_recv pmtu rcv_ssthresh rtt rttvar
        #    snd_ssthresh snd_cwnd advmss reordering rcv_rtt rcv_space total_retrans
        return TcpInfo(
            state=f[0],
            retransmits=f[2],
            snd_mss=u[2],
            unacked=u[4],
            rtt_us=u[15],
            rttvar_us=u[16],
            snd_ssthresh=u[17],
            snd_cwnd=u[18],
            rcv_space=u[22],
            total_retrans=u[23],
        )

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()


class AckWatcher:
    """Polls the sockets that wait for acknowledgements, all in one callback.

    First check on the next loop turn (loopback ACKs are usually back by then), then every
    `interval` while anything still waits. A socket gets a `WireAcked` event when its
    acknowledged offset (or FIN state) differs from what it last reported, so an owner that
    asks to watch after its bytes were already acknowledged still hears of it.

    A socket that waits longer than `stall` is asked whether the kernel still has a connection:
    after the peer's FIN the transport no longer reads, so an RST that answers our later data
    would otherwise go unnoticed and the data would wait for an ACK for ever.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, interval: float = 0.0005, stall: float = 0.05
    ) -> None:
        self.loop = loop
        self.interval = interval
        self.stall = stall
        self.waiting: dict[WireSocket, float] = {}
        self._scheduled = False
        self.held: dict[WireSocket, float] = {}  # stall_peer fault: no ack news until then

    def add(self, wire: WireSocket) -> None:
        if wire not in self.waiting:
            self.waiting[wire] = self.loop.time()
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._poll)

    def discard(self, wire: WireSocket) -> None:
        self.waiting.pop(wire, None)
        self.held.pop(wire, None)

    def _poll(self) -> None:
        self._scheduled = False
        now = self.loop.time()
        moved = []
        dead = []
        for wire, since in self.waiting.items():
            if wire.closed:
                moved.append(wire)
                continue
            until = self.held.get(wire)
            if until is not None:
                if now < until:
                    continue
                del self.held[wire]
            if wire.acked() != wire.notified_acked or wire.fin_acked() != wire.notified_fin:
                moved.append(wire)
            elif now - since > self.stall:
                self.waiting[wire] = now
                if not wire.kernel_alive():
                    dead.append(wire)
        for wire in moved:
            del self.waiting[wire]
            if not wire.closed:
                wire.notify_acked()
        for wire in dead:
            self.waiting.pop(wire, None)
            wire.lost_by_kernel()
        if self.waiting:
            self._scheduled = True
            self.loop.call_later(self.interval, self._poll)
