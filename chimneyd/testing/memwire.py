"""An in-memory `WirePort`: one connection's socket with a peer the test plays.

`MemoryWire` implements `chimneyd.drivers.wire.WirePort` the way `runtime/wire.py`'s `WireSocket`
does over a real loopback socket, with no socket and no event loop:

* our side is what a layer calls: `write`, `write_eof`, `abort`, `abort_after_reading`,
  `close`, `acked`, `fin_acked`, `watch_acks`, `tcp_info`, `set_option`, `pause_reading`,
  `resume_reading`, `set_home`, `set_owner`; socket options set are kept in `options` (the latest value of each) and
  `option_log` (every call, in order);
* the peer's side is what the test calls: `peer_send`, `peer_fin`, `peer_reset`, and `ack` to
  say how far the peer has acknowledged our bytes (nothing is acknowledged until the test says
  so, unless `auto_ack` is on); `kernel_timeout` plays the kernel giving up (ETIMEDOUT);
* events (`WireData`, `WireEof`, `WireReset`, `WireTimeout`, `WireAcked`) go to the owning layer
  through the broker's deliver function, so they run in the scheduler like real inbox messages.

Offsets count bytes from the start of each direction, as in `WirePort`; `isn`/`irs` default to
values a few hundred bytes below 2**32 so sequence arithmetic wraps in every test.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from chimneyd.drivers.wire import SocketOption, TcpInfo

#: `deliver(layer, handler, args)`: the broker's `Ndis.post` (or the scheduler itself).
Post = Callable[[Any, Callable[..., Any], tuple[Any, ...]], None]

TCP_CLOSE = 7  # tcpi_state of a socket the kernel has closed
DEFAULT_ISN = 0xFFFF_FF00
DEFAULT_IRS = 0xFFFF_FE00

#: The key an offload target looks a connection up by: packed local IP, local port, packed
#: remote IP, remote port (the path block's addresses and the TCP block's ports).
WireKey = tuple[bytes, int, bytes, int]


class MemoryWire:
    """One connection's socket in memory (implements `WirePort`)."""

    def __init__(
        self,
        post: Post,
        local: tuple[str, int] = ("127.0.0.1", 40000),
        remote: tuple[str, int] = ("127.0.0.1", 80),
        isn: int = DEFAULT_ISN,
        irs: int = DEFAULT_IRS,
        auto_ack: bool = False,
        lazy_reads: bool = False,
    ) -> None:
        self._post = post
        # reading resumed, the bytes the kernel held come one read at a time, each in a later
        # round of the owner's inbox, as `WireSocket`'s do in later turns of the event loop;
        # off: all at once, inside `resume_reading`
        self.lazy_reads = lazy_reads
        self.local = local
        self.remote = remote
        self.isn = isn
        self.irs = irs
        self.bytes_written = 0
        self.bytes_read = 0
        self.eof_written = False
        self.eof_seen = False
        self.closed = False
        self.home: Any = None
        self.home_ctx: Any = None
        self._owner: Any = None
        self._owner_ctx: Any = None
        self._early: list[tuple[str, tuple[Any, ...]]] = []  # events before anyone owned us
        # the peer's view
        self.peer_received = bytearray()  # every byte we wrote, in order
        self.reset_sent = False  # we closed with RST (`abort`)
        self.reset_received = False  # the peer reset the connection
        self.auto_ack = auto_ack
        self._acked = 0
        self._fin_acked = False
        self._watching = False
        self.notified_acked = 0
        self.notified_fin = False
        self.reading = True
        self._unread: deque[tuple[str, tuple[Any, ...]]] = deque()  # held while paused
        self.info = TcpInfo()
        self.dropped_writes = 0  # writes after EOF or close, dropped as the real socket does
        self.pauses = 0
        self.options: dict[SocketOption, int] = {}  # the latest value set of each option
        self.option_log: list[tuple[SocketOption, int]] = []  # every set_option, in order
        self.refuse_options: set[SocketOption] = set()  # options the "kernel" refuses

    def __repr__(self) -> str:
        return f"<MemoryWire {self.local[1]}->{self.remote[1]} w={self.bytes_written} r={self.bytes_read}>"

    @property
    def key(self) -> WireKey:
        return (
            ipaddress.ip_address(self.local[0]).packed,
            self.local[1],
            ipaddress.ip_address(self.remote[0]).packed,
            self.remote[1],
        )

    # -- ownership (WirePort) --------------------------------------------------------------------
    @property
    def owner(self) -> Any:
        """The layer that gets this wire's events now."""
        return self._owner

    @property
    def owner_ctx(self) -> Any:
        return self._owner_ctx

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
            early, self._early = self._early, []
            for name, args in early:
                self._post(layer, getattr(layer, name), (ctx, *args))

    def disown(self) -> None:
        self.home = self.home_ctx = self._owner = self._owner_ctx = None
        self._early = []

    def _emit(self, name: str, *args: Any) -> None:
        owner = self._owner
        if owner is None:
            self._early.append((name, args))
        else:
            self._post(owner, getattr(owner, name), (self._owner_ctx, *args))

    # -- our side (WirePort) -----------------------------------------------------------------------
    def write(self, views: list[memoryview]) -> None:
        if self.closed or self.eof_written:
            self.dropped_writes += 1
            return
        for v in views:
            self.peer_received += v
            self.bytes_written += len(v)
        if self.auto_ack:
            self.ack()

    def write_eof(self) -> None:
        if self.closed or self.eof_written:
            return
        self.eof_written = True
        if self.auto_ack:
            self.ack()

    def abort(self) -> None:
        """Close with RST (SO_LINGER {1, 0}): the peer sees a reset; we get no event. What the
        kernel still holds (`lazy_reads`: reads not made yet) is lost, unread."""
        if self.closed:
            return
        self.reset_sent = True
        self.closed = True
        self._watching = False

    def abort_after_reading(self) -> None:
        """As `WireSocket.abort_after_reading`: with reading on, what the kernel still holds
        (`lazy_reads`: reads not made yet) is read and told first, up to the peer's FIN; with
        reading stopped it is lost. Then `abort`."""
        if self.closed:
            return
        while self.reading and self._unread and self._unread[0][0] == "WireData":
            name, args = self._unread.popleft()
            self._deliver_read(name, *args)
        self.abort()

    def close(self) -> None:
        self.closed = True
        self._watching = False

    def acked(self) -> int:
        # as WireSocket: once closed, the last acknowledged offset stands
        return self._acked

    def fin_acked(self) -> bool:
        # as WireSocket: only a FIN the peer acknowledged, whatever closed the socket after
        # (a reset or a close before that is no acknowledgement: spec §4.5)
        return self.eof_written and self._fin_acked

    def watch_acks(self) -> None:
        """One `WireAcked` when the acknowledged offset (or FIN state) differs from what was last
        reported: at once if it already does, else at the next `ack` that moves it."""
        if self.closed:
            return
        if self._moved():
            self._notify()
        else:
            self._watching = True

    def tcp_info(self) -> TcpInfo:
        if self.closed:
            return TcpInfo(state=TCP_CLOSE)
        return replace(self.info, unacked=self.bytes_written - self._acked)

    def send_room(self) -> tuple[int, int]:
        if self.closed:
            return 0, 0
        info = self.info
        return info.snd_cwnd * max(info.snd_mss, 1), info.snd_buf or 0

    def set_option(self, option: SocketOption, value: int) -> bool:
        if self.closed or option in self.refuse_options:
            return False
        self.options[option] = value
        self.option_log.append((option, value))
        return True

    def pause_reading(self) -> None:
        if not self.closed and self.reading:
            self.reading = False
            self.pauses += 1

    def resume_reading(self) -> None:
        if self.closed or self.reading:
            return
        self.reading = True
        if self.lazy_reads:
            self._read_later()
            return
        while self._unread and self.reading:
            name, args = self._unread.popleft()
            self._deliver_read(name, *args)

    def _read_later(self) -> None:
        owner = self._owner if self._owner is not None else self.home
        if self._unread and owner is not None:
            self._post(owner, lambda *_: self._read_one(), ())

    def _read_one(self) -> None:
        """`lazy_reads`: one held read, if the socket is still open and read."""
        if self.closed or not self.reading or not self._unread:
            return
        name, args = self._unread.popleft()
        self._deliver_read(name, *args)
        self._read_later()

    # -- acknowledgements (the test decides) -----------------------------------------------------
    def ack(self, upto: int | None = None) -> None:
        """The peer acknowledges our bytes up to offset `upto`; with no offset, everything written
        and the FIN if one was sent."""
        if self.closed:
            return
        target = self.bytes_written if upto is None else upto
        if not self._acked <= target <= self.bytes_written:
            raise ValueError(
                f"cannot acknowledge offset {target}: acked {self._acked}, written {self.bytes_written}"
            )
        self._acked = target
        if upto is None and self.eof_written:
            self._fin_acked = True
        if self._watching and self._moved():
            self._notify()

    @property
    def unacked(self) -> int:
        return self.bytes_written - self.acked()

    def _moved(self) -> bool:
        return self.acked() != self.notified_acked or self.fin_acked() != self.notified_fin

    def _notify(self) -> None:
        self._watching = False
        acked = self.acked()
        self.notified_acked = acked
        self.notified_fin = self.fin_acked()
        self._emit("WireAcked", acked)

    # -- the peer (the test plays it) ------------------------------------------------------------
    def peer_send(self, data: bytes) -> int:
        """The peer sends `data`; returns the stream offset of its first byte. While reading is
        paused the bytes wait, as in the kernel's receive queue."""
        if self.closed or self.eof_seen or self._peer_fin_queued():
            raise ValueError("the peer cannot send after its FIN or on a closed socket")
        offset = self.bytes_read + sum(len(a[0]) for n, a in self._unread if n == "WireData")
        if self.reading and not self._unread:
            self._deliver_read("WireData", bytes(data))
        else:
            self._unread.append(("WireData", (bytes(data),)))
        return offset

    def peer_fin(self) -> None:
        """The peer half-closes: `WireEof` after every byte it sent before."""
        if self.closed or self.eof_seen or self._peer_fin_queued():
            raise ValueError("the peer already sent its FIN, or the socket is closed")
        if self.reading and not self._unread:
            self._deliver_read("WireEof")
        else:
            self._unread.append(("WireEof", ()))

    def peer_reset(self, reason: str = "ECONNRESET") -> None:
        """The peer resets the connection: told at once, paused or not, and data not yet read
        is lost. So does `WireSocket`: the watcher polls the sockets nobody reads for their
        death (within `AckWatcher.death_interval`, not at once), and the bytes the kernel
        still held go with the socket it then closes."""
        if self.closed:
            raise ValueError("the socket is already closed")
        self._unread.clear()
        self.reset_received = True
        self.closed = True
        self._watching = False
        self._emit("WireReset", reason)

    def kernel_timeout(self, reason: str = "ETIMEDOUT") -> None:
        """The kernel gives up on the connection (retransmit or zero-window probe limit,
        keepalive probes unanswered): closed, with `WireTimeout` instead of a reset."""
        if self.closed:
            raise ValueError("the socket is already closed")
        self._unread.clear()
        self.closed = True
        self._watching = False
        self._emit("WireTimeout", reason)

    def _peer_fin_queued(self) -> bool:
        return any(name == "WireEof" for name, _ in self._unread)

    def _deliver_read(self, name: str, *args: Any) -> None:
        if name == "WireData":
            (data,) = args
            offset = self.bytes_read
            self.bytes_read += len(data)
            self._emit("WireData", offset, data)
        else:
            self.eof_seen = True
            self._emit("WireEof", self.bytes_read)


class WireDirectory:
    """The connections an offload target can find, keyed like `Engine`'s table of sockets."""

    def __init__(self, post: Post, first_port: int = 40000) -> None:
        self._post = post
        self._next_port = first_port
        self.wires: dict[WireKey, MemoryWire] = {}

    def open(self, **kwargs: Any) -> MemoryWire:
        """A new wire on the next free local port (keyword arguments go to `MemoryWire`)."""
        if "local" not in kwargs:
            kwargs["local"] = ("127.0.0.1", self._next_port)
            self._next_port += 1
        wire = MemoryWire(self._post, **kwargs)
        if wire.key in self.wires:
            raise ValueError(f"a wire with key {wire.key} exists")
        self.wires[wire.key] = wire
        return wire

    def find(self, src: bytes, lport: int, dst: bytes, rport: int) -> MemoryWire | None:
        """`FindWire` for an offload target."""
        return self.wires.get((src, lport, dst, rport))

    def __iter__(self) -> Iterator[MemoryWire]:
        return iter(list(self.wires.values()))
