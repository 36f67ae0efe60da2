"""A connection's real loopback socket: an asyncio Protocol on a uvloop transport.

Implements `drivers.wire.WirePort`. Received bytes are posted, with their stream offset, to the
inbox of whichever layer owns the connection now (design: "exactly one owner at a time"). Sends
complete on acknowledgement, which the kernel tells: bytes written minus what is still in the
transport's buffer minus the socket's unacknowledged send queue (`SIOCOUTQ`); where that sum
no longer holds (uvloop dropped its buffer on a failed send) and as the socket goes, the
kernel's own count (`tcpi_bytes_acked`).

Longer than most modules because a socket's whole life is here: connect, reading with
back-pressure, acknowledgement detection, reset and close.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import random
import socket
import struct
import sys
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import structlog

from chimneyd.drivers.queues import NO_ITEMS, grown
from chimneyd.drivers.wire import SocketOption, TcpInfo

log = structlog.get_logger("chimneyd.runtime")

_OUTQ: Final = getattr(termios, "TIOCOUTQ", 0x5411)  # == SIOCOUTQ on Linux
_INQ: Final = getattr(termios, "FIONREAD", 0x541B)  # == SIOCINQ on Linux: the unread bytes queued
_INT: Final = struct.Struct("i")
# struct tcp_info (include/uapi/linux/tcp.h): 8 bytes, 24 u32 up to tcpi_total_retrans (every
# Linux since 2.6.x), then later additions at fixed offsets, read only when the kernel returns
# that many bytes. Asked for up to tcpi_rcv_wnd (6.2); older kernels return less.
_TCP_INFO: Final = struct.Struct("8B24I")
# the prefix up to tcpi_snd_cwnd, all `send_room` reads: tcpi_snd_mss is field 10, tcpi_snd_cwnd 26
_TCPI_TO_CWND: Final = struct.Struct("8B19I")
_TCPI_U32: Final = struct.Struct("I")
_TCPI_U64: Final = struct.Struct("Q")
# tcpi_bytes_acked (Linux 4.1): every sequence number the peer acknowledged, what `acked()`
# falls back on when uvloop's byte counts no longer add up (a failed send(2) drops its buffer)
# and reads last before the socket goes. It counts our SYN on a connecting socket but not on an
# accepted one (Linux 6.18), so the count at connection_made is taken off; and it counts our
# FIN once acknowledged.
_TCPI_BYTES_ACKED: Final = 120
_TCPI_ACKED_ASK: Final = _TCPI_BYTES_ACKED + _TCPI_U64.size
_TCPI_NOTSENT: Final = 144  # tcpi_notsent_bytes (Linux 4.6)
_TCPI_SND_WND: Final = 228  # tcpi_snd_wnd (5.4)
_TCPI_RCV_WND: Final = 232  # tcpi_rcv_wnd (6.2)
_TCPI_ASK: Final = _TCPI_RCV_WND + 4
_TCP_TIMESTAMP: Final = getattr(socket, "TCP_TIMESTAMP", 24)
_LINGER_RST: Final = struct.pack("ii", 1, 0)
_TCP_CLOSE: Final = 7  # tcpi_state of a connection the kernel has closed

#: (level, optname) of each option a layer may set (`WirePort.set_option`).
_OPTIONS: Final[dict[SocketOption, tuple[int, int]]] = {
    SocketOption.SO_KEEPALIVE: (socket.SOL_SOCKET, socket.SO_KEEPALIVE),
    SocketOption.TCP_KEEPIDLE: (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
    SocketOption.TCP_KEEPINTVL: (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    SocketOption.TCP_KEEPCNT: (socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    SocketOption.TCP_NODELAY: (socket.IPPROTO_TCP, socket.TCP_NODELAY),
    SocketOption.TCP_USER_TIMEOUT: (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 18)),
    SocketOption.SO_RCVBUF: (socket.SOL_SOCKET, socket.SO_RCVBUF),
    SocketOption.IP_TTL: (socket.IPPROTO_IP, socket.IP_TTL),
    SocketOption.IPV6_UNICAST_HOPS: (socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS),
    SocketOption.IP_TOS: (socket.IPPROTO_IP, socket.IP_TOS),
    SocketOption.IPV6_TCLASS: (socket.IPPROTO_IPV6, getattr(socket, "IPV6_TCLASS", 67)),
}

Post = Callable[[Any, Callable[..., Any], tuple[Any, ...]], None]


def _timed_out(exc: BaseException | None) -> bool:
    """The kernel gave up on the connection (retransmit, zero-window probe or keepalive limit)."""
    return isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT


if TYPE_CHECKING:
    from .acks import AckWatcher


class WireSocket(asyncio.Protocol):
    """One TCP connection's socket, shared by the host and the NIC that carry it."""

    __slots__ = (
        "_aborted_by_us",
        "_acked_base",
        "_acked_seen",
        "_early",
        "_fd",
        "_fin_seen",
        "_flow_paused",
        "_kernel_error",
        "_owner",
        "_owner_ctx",
        "_post",
        "_stall_timer",
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
        self._acked_seen = 0  # the last acknowledged offset the kernel told
        # tcpi_bytes_acked before our first data byte (our SYN, if counted); None: this kernel
        # does not count (older than 4.1), or the socket was never connected
        self._acked_base: int | None = None
        self._fin_seen = False  # the kernel has told that the peer acknowledged our FIN
        self.notified_fin = False
        self.eof_written = False
        self.eof_seen = False
        self.closed = False
        self._aborted_by_us = False
        self._kernel_error = 0  # SO_ERROR read by `kernel_alive` (reading it clears it)
        self.home: Any = None
        self.home_ctx: Any = None
        self._owner: Any = None
        self._owner_ctx: Any = None
        self._early: list[tuple[str, tuple[Any, ...]]] = NO_ITEMS  # events before anyone owned us
        # reading stops while the owner's buffers are full (flow control) or while a stall
        # fault holds the peer; it resumes when neither does
        self._flow_paused = False
        self._stall_timer: asyncio.TimerHandle | None = None

    # -- ownership -----------------------------------------------------------------------------
    def set_home(self, layer: Any, ctx: Any) -> None:
        self.home, self.home_ctx = layer, ctx
        self.set_owner(None, None)

    def set_owner(self, layer: Any, ctx: Any) -> None:
        if layer is None:
            layer, ctx = self.home, self.home_ctx
        if self._owner is not None and layer is not self._owner:
            # the news of acknowledgements starts afresh with each owner: news posted to the
            # last one and not read before the hand-over is lost with it, and the new owner,
            # watching, must hear where they stand (or what it took unacknowledged waits)
            self.notified_acked = -1
        self._owner, self._owner_ctx = layer, ctx
        if layer is not None and self._early:
            early, self._early = self._early, NO_ITEMS
            for name, args in early:
                self._post(layer, getattr(layer, name), (ctx, *args))

    def disown(self) -> None:
        self.home = self.home_ctx = self._owner = self._owner_ctx = None
        self._early = NO_ITEMS

    @property
    def fd(self) -> int:
        """The socket's file descriptor (-1 before it is connected)."""
        return self._fd

    @property
    def owner(self) -> tuple[Any, Any]:
        """The layer that owns the received bytes now, and its context for the connection."""
        return self._owner, self._owner_ctx

    def _emit(self, name: str, *args: Any) -> None:
        owner = self._owner
        if owner is None:
            self._early = grown(self._early, (name, args))
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
        # host strings shared among connections: ten thousand copies of "127.0.0.1" add up
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = (sys.intern(host), port)
        peer = transport.get_extra_info("peername")
        if peer is None:
            # the peer reset it before we accepted it: Linux's accept(2) returns it all the
            # same (state CLOSE), and reading it gives the bytes that came before the RST,
            # then the reset; only getpeername fails (ENOTCONN), so the peer's address is not
            # known: the unspecified address and port 0 say so (docs/rpc.md tcp.accept)
            self.remote = ("::" if ":" in host else "0.0.0.0", 0)
        else:
            host, port = peer[:2]
            self.remote = (sys.intern(host), port)
        # one getsockopt per connection: what the kernel counts before any byte of ours
        self._acked_base = self._kernel_acked_count()
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        offset = self.bytes_read
        self.bytes_read = offset + len(data)
        self._emit("WireData", offset, data)

    def eof_received(self) -> bool:
        if self.eof_seen:
            # libuv forgets the EOF it read once reading starts again: the end of stream is
            # told once (`_apply_reading` no longer resumes after it; this stays the guard)
            return True
        self.eof_seen = True
        self._emit("WireEof", self.bytes_read)
        # uvloop reads no more: an RST now would go unheard but for the watcher (spec §5.1)
        self._watcher.not_reading(self)
        return True  # keep the send half open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            # closed by the kernel (an RST read, a failed send): uvloop closes the fd only
            # after this returns, so what the peer acknowledged can still be read, exactly
            self._settle()
        self.closed = True
        self._watcher.discard(self)
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        # uvloop's transport is not seen by the cycle collector: holding it here would keep
        # this socket, its TCB and the NIC context alive for ever after the close
        self.transport = None
        if self._aborted_by_us:
            return
        if _timed_out(exc):
            self._lost("timeout", repr(exc))
            self._emit("WireTimeout", repr(exc))
        elif exc is not None or not self.eof_seen:
            self._lost("reset", repr(exc) if exc else "closed")
            self._emit("WireReset", repr(exc) if exc else "closed")
        else:
            # closed with no error after the peer's FIN: nobody is told. Said here, so that a
            # wait on this socket that never ends can be traced to it
            self._lost("closed", "no error, after the peer's FIN")

    def _lost(self, how: str, why: str) -> None:
        """A log line when the socket goes without us closing it, naming who is told."""
        owner = getattr(self._owner, "name", None)
        log.info(
            "wire_lost",
            how=how,
            why=why,
            local=f"{self.local[0]}:{self.local[1]}",
            remote=f"{self.remote[0]}:{self.remote[1]}",
            owner=owner,
            written=self.bytes_written,
            acked=self._acked_seen,
        )

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
        """Close with RST: SO_LINGER {on, 0}, then close (design table). What the kernel holds
        of the peer's bytes is lost with the connection, unread: the owner ends it, and nothing
        is processed after that (an abortive disconnect, spec §4.5; state lost with the
        hardware, §3.7). `abort_after_reading` reads them first."""
        if self.transport is None or self.closed:
            return
        self._reset_socket()

    def abort_after_reading(self) -> None:
        """`abort`, for the RST a FIN_WAIT_2 timeout owes the peer (spec §8): with reading on,
        what the kernel holds of the peer's bytes is read first and told (`WireData`, posted
        to the owner's inbox like every read), as the event loop's next turn would have: the
        application reads every byte, then the timeout. With reading stopped (back-pressure,
        a stall) they are lost with the connection, as `pause_reading` says."""
        if self.transport is None or self.closed:
            return
        self._read_what_the_kernel_holds()
        self._reset_socket()

    def _read_what_the_kernel_holds(self) -> None:
        """`abort_after_reading`'s last read, with reading on: the bytes the kernel has queued
        now (SIOCINQ), no more, so a peer that keeps sending cannot keep it reading."""
        if self._flow_paused or self._stall_timer is not None or self.eof_seen or self._fd < 0:
            return
        try:
            left = int(_INT.unpack(fcntl.ioctl(self._fd, _INQ, b"\0\0\0\0"))[0])
        except OSError:
            return
        if left <= 0:
            return
        sock = self._view()
        try:
            # not stopped by a `pause_reading` on the way (back-pressure): every WireData is
            # posted, so no owner runs inside this loop, and one that did would pause a
            # connection that ends here: a byte left queued would go with the RST below. Each
            # piece is told in order, at its offset (tests/integration/
            # test_wire_abort_reads_paused_midway.py)
            while left > 0:
                try:
                    data = sock.recv(min(left, 1 << 18), socket.MSG_DONTWAIT)
                except OSError:  # nothing more after all (EAGAIN), or the peer reset it
                    return
                if not data:
                    return  # the peer's FIN: the RST ends the connection anyway
                left -= len(data)
                self.data_received(data)
        finally:
            sock.detach()

    def inject_reset(self) -> None:
        """Fault: as if the peer had sent an acceptable RST (our socket resets the peer too)."""
        if self.transport is None or self.closed:
            return
        self._reset_socket()
        self._emit("WireReset", "injected peer reset")

    def _reset_socket(self) -> None:
        """Close with RST: SO_LINGER {on, 0}, then abort; connection_lost then reports nothing."""
        assert self.transport is not None
        self._settle()  # what the peer acknowledged, read while the kernel can still tell
        self._aborted_by_us = True
        try:
            self.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST
            )
        except OSError:
            pass
        self.closed = True
        self.transport.abort()

    def close(self) -> None:
        """Close, gracefully if every byte written reached the kernel, else with RST.

        uvloop's graceful close waits, with no limit, for its buffer to drain: a peer that
        reads nothing kept the socket (fd) open for ever, and the bytes went out after the
        close was answered and their sends failed (the host answers sends still unacknowledged
        at tcp.close REQUEST_ABORTED). Those bytes are dropped instead, and the stream is cut:
        the peer must see an RST, not a FIN after a stream that lost its tail. With nothing
        buffered the fd goes at once and the kernel delivers its queue, then the FIN."""
        transport = self.transport
        if transport is not None and not self.closed:
            if transport.get_write_buffer_size():
                self._reset_socket()
            else:
                self._settle()  # what the peer acknowledged, for the sends the close fails
                self._aborted_by_us = True
                self.closed = True
                transport.close()
        self._watcher.discard(self)

    def _outq(self) -> int:
        try:
            return int(_INT.unpack(fcntl.ioctl(self._fd, _OUTQ, b"\0\0\0\0"))[0])
        except OSError:
            return 0

    def _view(self) -> socket.socket:
        """A socket object that only views our fd, for getsockopt and setsockopt: detach it
        after use, never close it (uvloop's transport keeps the socket). Given the family, type
        and protocol, Python makes it with one syscall (getsockname) instead of three."""
        family = socket.AF_INET6 if ":" in self.local[0] else socket.AF_INET
        return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, self._fd)

    def _getsockopt(self, level: int, name: int, size: int) -> bytes | None:
        """getsockopt on our fd (None if it fails), through `_view`."""
        sock = self._view()
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

    def _kernel_acked_count(self) -> int | None:
        """tcpi_bytes_acked as the kernel has it now (None if it cannot tell)."""
        raw = self._getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_ACKED_ASK)
        if raw is None or len(raw) < _TCPI_ACKED_ASK:
            return None
        return int(_TCPI_U64.unpack_from(raw, _TCPI_BYTES_ACKED)[0])

    def _settle(self) -> int:
        """The acknowledged offset from the kernel's own count, not from uvloop's buffer: right
        when that buffer was dropped, and the last reading before the socket goes (after it
        the last offset read stands). One getsockopt."""
        count = self._kernel_acked_count()
        if count is not None and self._acked_base is not None:
            count -= self._acked_base
            # the FIN's sequence number, counted once acknowledged, is not a data byte; one
            # counted past every byte written is our FIN, sent and acknowledged (spec §4.5)
            if count > self.bytes_written and self.eof_written:
                self._fin_seen = True
            acked = min(count, self.bytes_written)
            if acked > self._acked_seen:
                self._acked_seen = acked
        return self._acked_seen

    def ack_state(self) -> tuple[int, bool]:
        """`acked()` and `fin_acked()` from one reading of the kernel (the watcher's poll)."""
        transport = self.transport
        if self.closed or transport is None:
            return self._acked_seen, self._fin_seen
        if self.eof_written or transport.is_closing():
            # After our FIN was asked for, the send queue cannot tell whether it went out: a
            # shutdown(2) that failed (the peer had reset: ENOTCONN) leaves state CLOSE and an
            # empty queue, as does a FIN acknowledged after the peer's. Nor does uvloop's
            # buffer add up once it met a fatal error (`acked`). The kernel's count tells
            # both, in one getsockopt where the send queue and the state took up to three.
            return self._settle(), self._fin_seen
        return self.acked(), False

    def acked(self) -> int:
        """How far the peer has acknowledged our bytes. Once the socket is closed the kernel
        cannot tell any more: the last offset read (`_settle`, as it went) stands."""
        transport = self.transport
        if self.closed or transport is None:
            return self._acked_seen
        if self.eof_written or transport.is_closing():
            # not closed by us, yet closing: uvloop met a fatal error (send(2) failed with
            # EPIPE or ECONNRESET, or a read did), dropped what it held and only queued
            # connection_lost. Bytes counted written never reached the kernel: written minus
            # buffered minus queued would call them acknowledged (spec §4.1). The kernel's
            # own count, one getsockopt, only on this rare path. After our FIN, too: the
            # send queue counts the FIN's sequence number once it is sent (`ack_state`).
            return self._settle()
        acked = max(0, self.bytes_written - transport.get_write_buffer_size() - self._outq())
        if acked > self._acked_seen:
            self._acked_seen = acked
        return acked

    def fin_acked(self) -> bool:
        """Our FIN was sent and the peer acknowledged it, as the kernel counted: never on a
        socket closed before that (a reset, our own close), whatever closed it."""
        if not self.eof_written:
            return False
        return self.ack_state()[1]

    def watch_acks(self) -> None:
        self._watcher.add(self)

    def notify_acked(self, acked: int, fin_acked: bool) -> None:
        """Tell the owner how far the peer has acknowledged (`acked()` and `fin_acked()` as
        just read by the caller)."""
        self.notified_acked = acked
        self.notified_fin = fin_acked
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
        if err is None:
            return False
        self._kernel_error = _INT.unpack(err)[0]
        return self._kernel_error == 0

    def lost_by_kernel(self) -> None:
        """The kernel dropped the connection while we were not reading: an RST from the peer, or
        its own timeout (ETIMEDOUT), reported as such."""
        if self.closed or self.transport is None:
            return
        self._settle()  # in state CLOSE the kernel still counts what the peer acknowledged
        self._aborted_by_us = True  # connection_lost must not report it a second time
        self.closed = True
        self.transport.abort()
        if self._kernel_error == errno.ETIMEDOUT:
            self._lost("timeout", "while not reading (kernel state CLOSE)")
            self._emit("WireTimeout", "timed out while not reading (kernel state CLOSE)")
        else:
            self._lost("reset", "while not reading (kernel state CLOSE)")
            self._emit("WireReset", "reset while not reading (kernel state CLOSE)")

    def tcp_info(self) -> TcpInfo:
        if self.closed or self._fd < 0:
            return TcpInfo(state=7)
        sock = self._view()
        try:
            return _read_tcp_info(sock)
        except (OSError, struct.error):  # gone, or a kernel older than the 104-byte layout
            return TcpInfo()
        finally:
            sock.detach()

    def send_room(self) -> tuple[int, int]:
        # two getsockopt calls where `tcp_info` makes four or more: a NIC asks once a second
        # for each busy connection, and at ten thousand connections `tcp_info` there was ~5%
        # of the daemon's time
        if self.closed or self._fd < 0:
            return 0, 0
        sock = self._view()
        try:
            raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_TO_CWND.size)
            f = _TCPI_TO_CWND.unpack_from(raw)
            return f[26] * max(f[10], 1), sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        except (OSError, struct.error):
            return 0, 0
        finally:
            sock.detach()

    def set_option(self, option: SocketOption, value: int) -> bool:
        if self.closed or self._fd < 0:
            return False
        level, name = _OPTIONS[option]
        sock = self._view()
        try:
            sock.setsockopt(level, name, value)
        except (OSError, OverflowError):
            return False
        finally:
            sock.detach()
        return True

    def pause_reading(self) -> None:
        self._flow_paused = True
        self._apply_reading()

    def resume_reading(self) -> None:
        self._flow_paused = False
        self._apply_reading()

    def _apply_reading(self) -> None:
        if self.transport is None or self.closed or self.eof_seen:
            # after the peer's FIN there is nothing more to read, and resuming would make
            # libuv read the end of stream again (a second WireEof)
            return
        if self._flow_paused or self._stall_timer is not None:
            self.transport.pause_reading()
            # back-pressure holds the peer's data, not the news of its RST (design)
            self._watcher.not_reading(self)
        else:
            self.transport.resume_reading()
            self._watcher.reading(self)

    def stall(self, seconds: float) -> None:
        """`stall_peer` [EMU]: for `seconds` the peer seems to neither send nor acknowledge:
        we stop reading its bytes and hear no ACK news, so back-pressure builds both ways."""
        loop = self._watcher.loop
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self._stall_timer = loop.call_later(seconds, self.unstall)
        self._watcher.held[self] = loop.time() + seconds
        self._apply_reading()

    def unstall(self) -> None:
        """The stall is over (or cleared): read again and report acknowledgements."""
        if self._stall_timer is None:
            return
        self._stall_timer.cancel()
        self._stall_timer = None
        self._watcher.held.pop(self, None)
        self._apply_reading()
        if not self.closed:
            self.watch_acks()


def _read_tcp_info(sock: socket.socket) -> TcpInfo:
    """`TCP_INFO` as far as this kernel has it, plus the timestamp clock and keepalive settings."""
    buf = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCPI_ASK)
    f = _TCP_INFO.unpack_from(buf)
    u = f[8:]
    # u: rto ato snd_mss rcv_mss unacked sacked lost retrans fackets last_data_sent
    #    last_ack_sent last_data_recv last_ack_recv pmtu rcv_ssthresh rtt rttvar
    #    snd_ssthresh snd_cwnd advmss reordering rcv_rtt rcv_space total_retrans

    def tail(offset: int) -> int | None:
        if len(buf) < offset + _TCPI_U32.size:
            return None
        return int(_TCPI_U32.unpack_from(buf, offset)[0])

    info = TcpInfo(
        state=f[0],
        ca_state=f[1],
        retransmits=f[2],
        probes=f[3],
        backoff=f[4],
        options=f[5],
        snd_wscale=f[6] & 0x0F,
        rcv_wscale=f[6] >> 4,
        rto_us=u[0],
        snd_mss=u[2],
        unacked=u[4],
        sacked=u[5],
        last_data_sent_ms=u[9],
        last_data_recv_ms=u[11],
        last_ack_recv_ms=u[12],
        rtt_us=u[15],
        rttvar_us=u[16],
        snd_ssthresh=u[17],
        snd_cwnd=u[18],
        rcv_space=u[22],
        total_retrans=u[23],
        notsent_bytes=tail(_TCPI_NOTSENT),
        snd_wnd=tail(_TCPI_SND_WND),
        rcv_wnd=tail(_TCPI_RCV_WND),
    )
    try:
        info.ts_val = sock.getsockopt(socket.IPPROTO_TCP, _TCP_TIMESTAMP) & 0xFFFFFFFF
    except OSError:
        pass
    info.snd_buf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE):
        info.keepalive = True
        info.keepidle_s = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        info.keepintvl_s = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        info.keepcnt = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
    return info
